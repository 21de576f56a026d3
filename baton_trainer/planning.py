"""Memory planning from a model's configs alone: `python -m baton_trainer plan --config RECIPE`.

The planner builds the pipeline's components from their config files as fake tensors (shapes and
dtypes with no storage: no weight is read or downloaded), counts the parameters of each, and runs
one training forward of the backend's own code (caption encoding, latents of the clip length, the
denoiser) under a saved-tensors hook, which sees exactly the activations that backward keeps.
Memory per process is then the sum of

    weights      frozen modules in the training dtype; the denoiser in fp32 (full fine-tuning) or in
                 the training dtype with fp32 adapter weights (LoRA), as `DiffusionTrainer` casts them
    gradients    fp32, one per trained parameter
    optimiser    AdamW's two fp32 moments per trained parameter (8-bit AdamW: two bytes)
    copies       a frozen reference denoiser (dpo, kto, grpo with kl_beta; full fine-tuning only:
                 under LoRA the reference is the disabled adapter) in the training dtype, and the old
                 policy of awm and nft (a copy of the trained parameters, fp32); with
                 `offload_copies` full fine-tuning keeps both in CPU memory (`host_bytes`)
    activations  kept for backward at the micro-batch the objective forms (dpo: both clips of a
                 pair; grpo: each trained sampler step, both guidance halves; + the pretraining batch)
    rollout      online objectives: the stored trajectories or clean latents of a rollout

Written here: accelerate's `estimate-memory` counts one model's parameters, but knows nothing of a
pipeline's frozen components, their casts, LoRA adapters, objectives' copies or activations.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

# FakeTensorMode is torch's own shape-and-dtype-only tensor mode (torch.compile traces with it); it
# lives under torch._subclasses in every torch we support.
from torch._subclasses.fake_tensor import FakeTensorMode

from .backends import backend_class
from .backends.base import import_own_components, lora_target_error, quiet_diffusers
from .hub import resolve_folder
from .losses import noised_latents_and_target

# A Hub snapshot of what the planner reads: configs, tokenizers and the scheduler, never weights.
CONFIG_FILES = ["*.json", "*/*.json", "*/*.txt", "*/*.model", "*/*.tiktoken"]
DTYPE_BYTES = {"no": 4, "fp16": 2, "bf16": 2}
PROBE_CAPTION = "a dog barks, then a doorbell rings while rain falls"
GIB = 1024**3
OFFLINE_OBJECTIVES = ("baton", "reward_ranked", "dpo", "kto")
ONLINE_OBJECTIVES = ("grpo", "awm", "nft")


@dataclass
class ComponentSize:
    name: str
    class_name: str
    parameters: int
    buffer_bytes: int
    trained: bool


@dataclass
class MemoryEstimate:
    """One process's memory for one way of training, by part, in bytes."""

    mode: str  # "full" or "lora"
    objective: str
    micro_batch: int  # clips through the denoiser with gradient per micro-step
    trained_parameters: int
    parts: dict[str, int] = field(default_factory=dict)
    host_bytes: int = 0  # copies kept in CPU memory (`offload_copies`), not in `total`

    @property
    def total(self) -> int:
        return sum(self.parts.values())


def _from_config(component_class: type, folder: Path) -> torch.nn.Module:
    """A module of `component_class` built from the config in `folder`, with fresh (here: fake) weights."""
    if hasattr(component_class, "load_config") and hasattr(component_class, "from_config"):  # diffusers
        return component_class.from_config(component_class.load_config(folder))
    if hasattr(component_class, "config_class"):  # transformers
        return component_class._from_config(component_class.config_class.from_pretrained(folder))
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))  # this package's own modules
    return component_class(**{k: v for k, v in config.items() if not k.startswith("_") and k != "vocoder_class"})


class ShapeOnlyMode(FakeTensorMode):
    """Fake tensors whose data-dependent reads answer a constant: a pipeline's prompt encoding
    compares token ids (`torch.equal`) and models read scalars (`.item()`), and neither changes a
    shape that memory depends on. (ACE-Step's condition encoder counts reference clips with
    `bincount` and sizes its timbre token by the count: its conditioning comes out one token short.)"""

    def dispatch(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.equal.default:
            return True
        if func is torch.ops.aten.bincount.default:  # one count a bin: ACE-Step's one reference clip per caption
            minlength = (kwargs or {}).get("minlength", args[2] if len(args) > 2 else 0)
            return super().dispatch(torch.ops.aten.ones.default, types, ([max(int(minlength), 1)],), {"dtype": torch.long, "device": torch.device("cpu")})
        if func is torch.ops.aten._local_scalar_dense.default:
            dtype = args[0].dtype
            return False if dtype == torch.bool else 0.0 if dtype.is_floating_point else 0
        return super().dispatch(func, types, args, kwargs)


class WeightlessModel:
    """A backend over fake components built from a model folder's configs (or a Hub id's, which
    downloads the config and tokenizer files only): shapes, dtypes and the backend's own code,
    without weights."""

    def __init__(self, name_or_path: str, revision: str | None = None):
        self.folder = resolve_folder(name_or_path, "model", revision, allow_patterns=CONFIG_FILES)
        index_file = self.folder / "model_index.json"
        if not index_file.is_file():
            hint = " (TANGO's original layout: `python -m baton_trainer convert-tango` makes one)" if (self.folder / "main_config.json").is_file() else ""
            raise FileNotFoundError(f"{self.folder}: no model_index.json: the planner reads diffusers pipeline folders{hint}")
        self.index = json.loads(index_file.read_text(encoding="utf-8"))
        named = self.index.get("_class_name")
        self.backend_type = backend_class(named[1] if isinstance(named, list) else str(named))
        import_own_components(self.folder)
        self.fake_mode = ShapeOnlyMode(allow_non_fake_inputs=True)
        self._backend = None
        self._activations: dict[tuple, int] = {}

    @property
    def backend(self):
        """The backend on fake components, built once: planning only reads it (LoRA is counted on a
        meta copy of the denoiser, `lora_parameters`)."""
        if self._backend is None:
            self._backend = self.build()
        return self._backend

    def activations(self, clips: int, duration_s: float, gradient_checkpointing: bool) -> int:
        """`activation_bytes` of the backend, once per micro-batch, length and checkpointing (the
        full and LoRA plans of an objective share it)."""
        key = (clips, duration_s, gradient_checkpointing)
        if key not in self._activations:
            with self.fake_mode:
                self._activations[key] = activation_bytes(self.backend, clips, duration_s, gradient_checkpointing)
        return self._activations[key]

    def build(self):
        """A fresh backend on fake components."""
        modules = {}
        for name, entry in self.index.items():
            if name.startswith("_") or not isinstance(entry, list) or None in entry:
                continue
            component_class = self.backend_type.component_class(entry[0], entry[1])
            if isinstance(component_class, type) and issubclass(component_class, torch.nn.Module):
                # Built on the meta device, then made fake: some models' __init__ reads tensor values
                # (transformers' CLAP calls .item()), which a fake tensor cannot give.
                with torch.device("meta"):
                    modules[name] = self._fake(_from_config(component_class, self.folder / name))
        with self.fake_mode, quiet_diffusers(progress_bars=False):  # one table, not diffusers' loading bar and type warnings
            pipe = self.backend_type.pipeline_class.from_pretrained(self.folder, **modules)
            return self.backend_type(pipe)

    def _fake(self, module: torch.nn.Module) -> torch.nn.Module:
        """`module` with each parameter and buffer replaced by a fake CPU tensor of its shape and dtype
        (tied weights stay tied). Assigned, not converted with `module.to`: that cannot swap a fake
        tensor into a parameter."""
        made: dict[int, torch.Tensor] = {}

        def fake(tensor: torch.Tensor) -> torch.Tensor:
            if id(tensor) not in made:
                converter = self.fake_mode.fake_tensor_converter
                data = tensor.detach()
                if data.is_meta:
                    made_tensor = converter.from_meta_and_device(self.fake_mode, data, torch.device("cpu"))
                else:
                    made_tensor = converter.from_real_tensor(self.fake_mode, data)
                made[id(tensor)] = torch.nn.Parameter(made_tensor, tensor.requires_grad) if isinstance(tensor, torch.nn.Parameter) else made_tensor
            return made[id(tensor)]

        for sub in module.modules():
            for name, tensor in sub._parameters.items():
                if tensor is not None:
                    sub._parameters[name] = fake(tensor)
            for name, tensor in sub._buffers.items():
                if tensor is not None:
                    sub._buffers[name] = fake(tensor)
        return module


def save_configs(backend, folder: str | Path) -> Path:
    """A model built in memory (a published architecture with random or meta weights) as a folder
    of configs only (model_index.json, each component's config, the tokenizer): what `plan` reads."""
    folder = Path(folder)
    pipe = backend.pipe
    pipe.save_config(folder)
    for name, component in pipe.components.items():
        if component is None:
            continue
        if hasattr(component, "save_config"):  # diffusers models and schedulers
            component.save_config(folder / name)
        elif hasattr(getattr(component, "config", None), "save_pretrained"):  # transformers models
            component.config.save_pretrained(folder / name)
        else:  # tokenizers, feature extractors
            component.save_pretrained(folder / name)
    return folder


def component_sizes(backend) -> list[ComponentSize]:
    """Parameters and buffer bytes of each of the backend's modules (the mel front end has none)."""
    sizes = []
    for name, module in backend.modules().items():
        parameters = sum(p.numel() for p in module.parameters())
        buffers = sum(b.numel() * b.element_size() for b in module.buffers())
        sizes.append(ComponentSize(name, type(module).__name__, parameters, buffers, name == backend.denoiser_name))
    return sizes


def activation_bytes(backend, clips: int, duration_s: float, gradient_checkpointing: bool) -> int:
    """Bytes of the tensors one fp32 training forward of `clips` clips keeps for backward,
    parameters (counted as weights) left out. Runs under the backend's fake mode; leaves the
    denoiser's gradient checkpointing as it found it."""
    denoiser = backend.denoiser.train()
    parameters = {p.untyped_storage()._cdata for p in denoiser.parameters()}
    kept: dict[int, int] = {}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage._cdata not in parameters:
            kept[storage._cdata] = storage.nbytes()
        return tensor

    text = backend.encode_text([PROBE_CAPTION] * clips, duration_s)
    latents = torch.zeros(clips, *backend.latent_shape(duration_s))
    timesteps = backend.draw_timesteps(clips, torch.Generator().manual_seed(0))
    noisy, target = noised_latents_and_target(backend.objective, latents, torch.zeros_like(latents), timesteps, backend.noise_scheduler)
    if gradient_checkpointing:
        denoiser.enable_gradient_checkpointing()
    try:
        with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
            prediction = backend.predict(denoiser, noisy, timesteps, text)
            (prediction - target).pow(2).mean()  # the loss's own saved tensors count too
    finally:
        if gradient_checkpointing:
            denoiser.disable_gradient_checkpointing()
    return sum(kept.values())


def lora_parameters(model: "WeightlessModel", config) -> int:
    """Parameters of the LoRA adapter `config` asks for, injected by peft into the denoiser built on
    the meta device (peft names a target module the class does not have)."""
    from peft import LoraConfig, inject_adapter_in_model  # lazy: the planner's import stays light for `--help`

    name = model.backend_type.denoiser_name
    library, class_name = model.index[name]
    with torch.device("meta"):
        denoiser = _from_config(model.backend_type.component_class(library, class_name), model.folder / name)
    denoiser.requires_grad_(False)
    targets = list(config.lora_target_modules or model.backend_type.lora_target_modules)
    try:
        inject_adapter_in_model(LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha or config.lora_rank, target_modules=targets), denoiser)
    except ValueError as exc:
        raise lora_target_error(targets, class_name, model.backend_type.lora_target_modules, exc) from None
    return sum(p.numel() for n, p in denoiser.named_parameters() if "lora_" in n)


def micro_batch(config, objective: str, num_processes: int) -> tuple[int, int]:
    """(clips through the denoiser with gradient per micro-step, clips of the process's rollout)."""
    pretrain = config.pretrain_batch_size if config.pretrain_dataset and config.pretrain_weight > 0 else 0
    if objective in OFFLINE_OBJECTIVES:
        return (2 if objective == "dpo" else 1) * config.train_batch_size + pretrain, 0
    rollout = config.rollout_captions // num_processes * config.group_size
    if objective == "grpo":
        window = config.sde_window[1] - config.sde_window[0] if config.sde_window else config.rollout_steps
        steps = max(1, math.ceil(max(1, round(config.train_fraction * window)) / config.gradient_accumulation_steps))
        return rollout * steps * (2 if config.rollout_guidance_scale > 1 else 1) + pretrain, rollout
    return rollout + pretrain, rollout


def estimate(model: WeightlessModel, config, mode: str, objective: str, num_processes: int = 1) -> MemoryEstimate:
    """One process's memory for `objective` in `mode` ("full" or "lora") under `config`'s batch,
    precision, LoRA settings, clip length and checkpointing. Activations are measured in fp32 and
    scaled to the training dtype's width (mixed precision keeps them mostly in 16 bits)."""
    width = DTYPE_BYTES[config.mixed_precision or "no"]
    backend = model.backend
    clips, rollout_clips = micro_batch(config, objective, num_processes)
    duration = config.duration_s or backend.duration_s
    frozen = sum(s.parameters * width + s.buffer_bytes for s in component_sizes(backend) if not s.trained)
    denoiser_parameters = sum(p.numel() for p in backend.denoiser.parameters())
    activations = model.activations(clips, duration, config.gradient_checkpointing) * width // 4
    with model.fake_mode:
        latent_elements = math.prod(backend.latent_shape(duration))
    if mode == "lora":
        trained = lora_parameters(model, config)
        weights = frozen + denoiser_parameters * width + trained * 4
    else:
        trained = denoiser_parameters
        weights = frozen + denoiser_parameters * 4
    reference = objective in ("dpo", "kto") or (objective == "grpo" and config.kl_beta > 0)
    copies = {
        "reference copy": denoiser_parameters * width if reference and mode == "full" else 0,
        "old policy": trained * 4 if objective in ("awm", "nft") else 0,
    }
    offloaded = config.offload_copies and mode == "full"
    parts = {
        "weights": weights,
        "gradients": trained * 4,
        "optimiser": trained * (2 if config.optimizer == "adamw_8bit" else 8),
        **{name: 0 if offloaded else size for name, size in copies.items()},
        "activations": activations,
        "rollout": rollout_clips * latent_elements * 4 * (config.rollout_steps + 1 if objective == "grpo" else 2),
    }
    return MemoryEstimate(mode, objective, clips, trained, parts, sum(copies.values()) if offloaded else 0)


def plan(config, num_processes: int = 1, online_objective: str = "grpo") -> dict:
    """Component sizes and the memory of full and LoRA fine-tuning with the config's objective (an
    offline one: baton by default) and of an online step, as a JSON-ready dict."""
    model = WeightlessModel(config.model)
    offline = config.objective if config.objective in OFFLINE_OBJECTIVES else "baton"
    online = config.objective if config.objective in ONLINE_OBJECTIVES else online_objective
    sizes = component_sizes(model.backend)
    estimates = [estimate(model, config, mode, objective, num_processes) for objective in (offline, online) for mode in ("full", "lora")]
    return {
        "model": config.model,
        "backend": model.backend_type.__name__,
        "precision": config.mixed_precision or "no",
        "num_processes": num_processes,
        "components": [vars(s) for s in sizes],
        "estimates": [{**vars(e), "total": e.total} for e in estimates],
    }


def format_plan(result: dict) -> str:
    """The plan as two plain tables: components, then memory per way of training."""
    parts = list(result["estimates"][0]["parts"])
    unit, scale = ("GiB", GIB) if max(e["total"] for e in result["estimates"]) >= GIB else ("MiB", 1024**2)
    lines = [f"{result['model']} ({result['backend']}), precision {result['precision']}, per process of {result['num_processes']}", ""]
    lines.append(f"{'component':<20} {'class':<32} {'parameters':>14}  trained")
    for c in result["components"]:
        lines.append(f"{c['name']:<20} {c['class_name']:<32} {c['parameters']:>14,}  {'yes' if c['trained'] else ''}")
    lines += ["", f"memory ({unit}): " + " | ".join(["way of training", "clips", *parts, "total"])]
    for e in result["estimates"]:
        cells = [f"{e['objective']} {e['mode']}", str(e["micro_batch"]), *(f"{e['parts'][p] / scale:.2f}" for p in parts), f"{e['total'] / scale:.2f}"]
        lines.append("  " + " | ".join(cells) + (f"  (+ {e['host_bytes'] / scale:.2f} in CPU memory)" if e["host_bytes"] else ""))
    lines += [
        "",
        "clips: through the denoiser with gradient per micro-step (dpo: both of a pair; grpo: every trained sampler step, both guidance halves).",
        "Measured activations of a shape-only forward of the backend's own code; a GPU's allocator cache and cuDNN workspaces come on top.",
    ]
    return "\n".join(lines)
