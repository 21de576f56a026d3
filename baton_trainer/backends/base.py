"""What the BATON trainer needs from a text-to-audio latent diffusion model.

A new model is one file that subclasses `TextToAudioBackend` and implements the methods below.
The trainer only ever touches a backend through them:

    latents = backend.encode_audio(waveforms)          # (B, samples) at backend.sample_rate
    cond = backend.encode_text(captions, duration_s)   # TextConditioning
    t = backend.draw_timesteps(n, generator)           # the model's own training distribution
    noisy, target = losses.noised_latents_and_target(backend.objective, latents, noise, t, backend.noise_scheduler)
    pred = backend.predict(backend.denoiser, noisy, t, cond)  # denoiser(noisy, denoiser_timestep(t), **cond, **denoiser_kwargs(noisy))
    backend.add_lora(lora_config)                      # a peft adapter on the denoiser
    backend.save_trained(folder, mode) / backend.load_trained(folder)
    clips = backend.generate(captions, seeds, ...)     # (B, samples) float32 numpy, through backend.pipe

`denoiser` is the module that is trained (fully or through a LoRA adapter); everything returned by
`frozen_modules()` stays frozen and may be cast to the training dtype. The rest (components by
their diffusers names, device and dtype moves, `with_denoiser`, exports in diffusers' formats) is
written once here, over `self.pipe`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import importlib.util
import json
import math
import shutil
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_write_json
from ..hub import resolve_folder
from ..weight_files import load_pretrained, load_state_dict_file

# peft, diffusers' LoRA helpers and safetensors are imported in the methods that use them: checking
# a finetune config imports this module (through the objectives), and the model's libraries load
# with the model.

EXPORT_FILE = "baton_export.json"


class TextConditioning:
    """The denoiser's caption conditioning: its keyword arguments (`encoder_hidden_states`,
    `encoder_attention_mask`, ... as the model's own pipeline passes them), each batch-first, padded
    along dim 1 where captions differ in length."""

    def __init__(self, **tensors: torch.Tensor):
        if not tensors:
            raise ValueError("TextConditioning needs at least one tensor")
        self.tensors = dict(tensors)

    def as_kwargs(self) -> dict[str, torch.Tensor]:
        return dict(self.tensors)

    def to(self, device=None, dtype=None) -> "TextConditioning":
        """Move every tensor; `dtype` applies to the floating ones (masks keep theirs)."""
        return TextConditioning(**{k: v.to(device=device, dtype=dtype if v.is_floating_point() else None) for k, v in self.tensors.items()})

    def __getitem__(self, index) -> "TextConditioning":
        return TextConditioning(**{k: v[index] for k, v in self.tensors.items()})

    def __len__(self) -> int:
        return next(iter(self.tensors.values())).shape[0]

    @classmethod
    def cat(cls, parts: list["TextConditioning"]) -> "TextConditioning":
        """Concatenate along the batch, padding dim 1 to the longest (zeros; False in masks)."""
        joined = {}
        for key in parts[0].tensors:
            tensors = [p.tensors[key] for p in parts]
            length = max(t.shape[1] for t in tensors) if tensors[0].ndim > 1 else None
            padded = []
            for t in tensors:
                if length is not None and t.shape[1] < length:
                    pad = [0, 0] * (t.ndim - 2) + [0, length - t.shape[1]]
                    t = torch.nn.functional.pad(t, pad, value=False if t.dtype == torch.bool else 0)
                padded.append(t)
            joined[key] = torch.cat(padded)
        return cls(**joined)


def import_own_components(folder: str | Path) -> None:
    """Import the modules of this package that a pipeline folder's model_index.json names as a
    component's library (the toy flow model's `baton_trainer.toyworld.mel_autoencoder`): diffusers
    loads a component only from a library it knows or a module already imported, and this
    package's own modules are not remote code."""

    index = Path(folder) / "model_index.json"
    entries = json.loads(index.read_text(encoding="utf-8")).values() if index.is_file() else []
    for entry in entries:
        if isinstance(entry, list) and entry and isinstance(entry[0], str) and entry[0].startswith(__package__.split(".")[0] + "."):
            importlib.import_module(entry[0])


def move(module: torch.nn.Module, device=None, dtype=None) -> torch.nn.Module:
    """`module.to(device, dtype)`, casting only a module with parameters (one without is signal
    processing: a mel front end, a Griffin-Lim vocoder, which stays float32) and only to another dtype."""
    kwargs = {"device": device} if device is not None else {}
    current = next((p.dtype for p in module.parameters() if p.is_floating_point()), None)
    if dtype is not None and current is not None and dtype != current:
        kwargs["dtype"] = dtype
    if "dtype" in kwargs and not getattr(module, "_keep_in_fp32_modules", None):
        # diffusers (0.42) warns "modules ... should be kept in float32: []" on every cast of a model
        # that keeps none in float32 (it tests the list against None): muted for those models only.
        with quiet_diffusers():
            return module.to(**kwargs)
    return module.to(**kwargs) if kwargs else module


@contextlib.contextmanager
def quiet_diffusers(progress_bars: bool = True):
    """diffusers' warnings off for the block (and its loading bars, with `progress_bars=False`)."""
    from diffusers.utils import logging  # lazy: a config check imports this module (see the top)

    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()
    if not progress_bars:
        logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if not progress_bars:
            logging.enable_progress_bar()


def mono_into_channels(waveforms: torch.Tensor, vae: torch.nn.Module) -> torch.Tensor:
    """The project's mono waveforms (B, samples) copied into each of the VAE's `audio_channels`, on
    its device and in its dtype, as stable-audio-tools feeds mono files to a stereo model."""
    return waveforms[:, None].expand(-1, int(vae.config.audio_channels), -1).to(device=vae.device, dtype=vae.dtype)


def mixed_to_mono(audio) -> np.ndarray:
    """A pipeline's multichannel clips (B, channels, samples) mixed down to the project's mono float32."""
    return np.asarray(audio, dtype=np.float32).mean(axis=1)


def rows_by_key(keys: list) -> list[list[int]]:
    """The rows of each distinct key, in key order: the groups a model whose denoiser sees padding is
    called on one at a time, so that no row is padded (LongCat-AudioDiT, ACE-Step)."""
    return [[i for i, k in enumerate(keys) if k == key] for key in sorted(set(keys))]


def clips_by_key(keys: list, samples: int, make) -> np.ndarray:
    """Mono float32 clips (B, samples), made one `rows_by_key` group at a time: `make(rows)` is the
    pipeline's audio (rows, channels, length) for those rows, mixed down and cut or zero-padded."""
    clips = np.zeros((len(keys), samples), dtype=np.float32)
    for rows in rows_by_key(keys):
        audio = mixed_to_mono(make(rows))[:, :samples]
        clips[rows, : audio.shape[-1]] = audio
    return clips


class TextToAudioBackend(ABC):
    """A diffusers pipeline (`self.pipe`) as the trainer sees it. Its components stay the
    pipeline's: `denoiser` is `pipe.unet` (or `pipe.transformer`), and a second model over the same frozen parts is `with_denoiser`."""

    sample_rate: int
    noise_scheduler: object  # the DDPM training schedule for objective "ddpm" (add_noise, its betas)
    pipe: object  # the diffusers pipeline whose components these are
    pipeline_class: type  # its class (the memory planner builds one from configs alone)
    # Classes that replace the one model_index.json names, by that name (AudioLDM 2's GPT2Model),
    # and modules of components whose code travels in the folder, by the folder's module name.
    component_classes: dict[str, type] = {}
    custom_components: dict[str, str] = {}
    name_or_path: str = ""

    @classmethod
    def component_class(cls, library: str, class_name: str) -> type:
        """The class a model_index.json entry ([library, class]) names, as this backend loads it:
        diffusers', transformers' or this package's, a module a folder carries that this package
        ships itself (`custom_components`), or a diffusers pipeline package's (Stable Audio 3's
        duration embedder). A folder never makes it import anything else."""
        if class_name in cls.component_classes:
            return cls.component_classes[class_name]
        if library in cls.custom_components:
            module = cls.custom_components[library]
        elif library in ("diffusers", "transformers") or library.startswith(__package__.split(".")[0] + "."):
            module = library
        elif library.isidentifier() and importlib.util.find_spec(f"diffusers.pipelines.{library}") is not None:
            module = f"diffusers.pipelines.{library}"
        else:
            raise ValueError(f"component {library}.{class_name}: a library this package does not load")
        return getattr(importlib.import_module(module), class_name)

    def __init__(self, pipe):
        self.pipe = pipe
        self.name_or_path = str(pipe.config.get("_name_or_path", "") or "")  # from_pretrained sets the name it was given

    @abstractmethod
    def encode_audio(self, waveforms: torch.Tensor) -> torch.Tensor:
        """Waveforms (B, samples) at `sample_rate` -> scaled latents z0 for the UNet."""

    @abstractmethod
    def encode_text(self, captions: list[str], duration_s: float | None = None, lyrics: list[str] | None = None) -> TextConditioning:
        """Captions -> the denoiser's conditioning, as the pipeline builds it, for clips of
        `duration_s` (models conditioned on the length use it); a caption's conditioning does not
        depend on the other captions of the batch. `lyrics` (one per caption, "" for none) only for
        a model that takes them (`takes_lyrics`; the others call `captions_only`)."""

    takes_lyrics = False  # conditioned on lyrics beside the caption (ACE-Step): a dataset's `lyrics` column reaches it

    def captions_only(self, lyrics: list[str] | None) -> None:
        """Refuse lyrics in a model conditioned on captions alone (empty lyrics are none)."""
        if lyrics is not None and any(lyrics):
            raise ValueError(f"{type(self).__name__} is conditioned on captions only: the data's lyrics cannot reach it (ACE-Step takes lyrics)")

    @abstractmethod
    def frozen_modules(self) -> list[torch.nn.Module]:
        """Modules that are never trained (VAE, text encoders, vocoder, ...)."""

    @abstractmethod
    def generate(
        self,
        captions: list[str],
        seeds: list[int],
        num_inference_steps: int,
        guidance_scale: float,
        duration_s: float | None = None,
        progress: bool = False,
        sampler: str | None = None,
        lyrics: list[str] | None = None,
    ) -> np.ndarray:
        """One clip per caption, each from its own seed, as float32 (B, samples); `lyrics` as in `encode_text`."""

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (as `encode_audio` makes them) -> mono waveforms (B, samples) at `sample_rate`,
        through the pipeline's own decoder: online objectives score the clips of their rollouts."""
        raise NotImplementedError(f"{type(self).__name__} has no decode_latents: online objectives need one (see docs/backends.md)")

    def decode_clips(self, latents: torch.Tensor, duration_s: float | None = None) -> np.ndarray:
        """`decode_latents`, cut or zero-padded to `duration_s` (default the model's), as float32 numpy."""
        with torch.no_grad():
            audio = self.decode_latents(latents).float()
        samples = int(round((duration_s or self.duration_s) * self.sample_rate))
        audio = audio[:, :samples]
        if audio.shape[-1] < samples:
            audio = torch.nn.functional.pad(audio, (0, samples - audio.shape[-1]))
        return audio.cpu().numpy().astype(np.float32)

    def latent_shape(self, duration_s: float | None = None) -> tuple[int, ...]:
        """The shape of one clip's latents at `duration_s` (default the model's), measured by
        encoding silence: every backend's own rounding of lengths applies."""
        samples = int(round((duration_s or self.duration_s) * self.sample_rate))
        with torch.no_grad():
            return tuple(self.encode_audio(torch.zeros(1, samples, device=self.device)).shape[1:])

    @abstractmethod
    def preprocessing(self) -> dict:
        """The settings that shape latents and conditioning besides the frozen modules (mel front
        end, clip window, text length), for `fingerprint`."""

    def fingerprint(self) -> str:
        """Identifies the encoders and preprocessing, for cache keys of latents and text embeddings:
        the model, every frozen module's config and dtype, and `preprocessing()`."""

        frozen = []
        for module in self.frozen_modules():
            config = getattr(module, "config", {})
            config = config.to_dict() if hasattr(config, "to_dict") else dict(config)
            dtype = next((str(p.dtype) for p in module.parameters()), None)
            frozen.append({"class": type(module).__name__, "config": config, "dtype": dtype})
        payload = {"model": self.name_or_path, "frozen": frozen, "preprocessing": self.preprocessing()}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]

    @property
    @abstractmethod
    def duration_s(self) -> float:
        """The clip length the model makes and trains on by default."""

    @classmethod
    @abstractmethod
    def from_pretrained(cls, name_or_path: str | Path, export: str | Path | None = None, device=None, torch_dtype=None, revision: str | None = None):
        """The model saved at `name_or_path` (a folder or Hub id), with a trained export on top."""

    @classmethod
    def tiny(cls, seed: int = 0) -> "TextToAudioBackend":
        """A randomly initialised model of this backend's real classes at toy sizes (CPU, milliseconds
        a step): what the tests run every stage on (`testing.TINY_BACKENDS`), and benchmarks time."""
        raise NotImplementedError(f"{cls.__name__} has no tiny model: define `tiny` (docs/backends.md)")

    @classmethod
    def save_tiny(cls, folder: str | Path | None = None, seed: int = 0) -> Path:
        """`tiny(seed)` saved as a pipeline folder (a new temporary one when `folder` is None)."""
        import tempfile  # lazy: only tests and benchmarks save tiny models

        folder = Path(folder or tempfile.mkdtemp(prefix=f"tiny-{cls.__name__}-"))
        cls.tiny(seed).save_pretrained(folder)
        return folder

    def save_pretrained(self, folder: str | Path) -> None:
        """Write the whole pipeline so that `from_pretrained(folder)` restores it."""
        if getattr(self.denoiser, "peft_config", None):
            raise ValueError("save_pretrained on a model with a LoRA adapter: use save_trained(folder, 'lora') for the adapter")
        self.pipe.save_pretrained(Path(folder), safe_serialization=True)

    # -- the pipeline's components ---------------------------------------------------------------

    @property
    def denoiser(self) -> torch.nn.Module:
        """The denoiser that is trained (a UNet or a transformer, as the pipeline names it `unet`
        or `transformer`)."""
        return getattr(self.pipe, self.denoiser_name)

    @denoiser.setter
    def denoiser(self, module: torch.nn.Module) -> None:
        # registered, not only set: the pipeline's config (model_index.json) names the new module's class
        self.pipe.register_modules(**{self.denoiser_name: module})

    denoiser_name = "unet"

    # How the denoiser was trained (`losses.noised_latents_and_target`): "ddpm" draws integer
    # timesteps of `noise_scheduler` (epsilon or v from its config); "v_cosine" and "flow" draw
    # continuous t in [0, 1].
    objective = "ddpm"
    default_snr_mode = "none"  # the loss weighting the model was trained with
    lora_target_modules = ("to_q", "to_k", "to_v", "to_out.0")  # the denoiser's attention projections (diffusers' names)
    unused_denoiser_parts: tuple[str, ...] = ()  # submodules of the denoiser text-to-audio never calls: not trained
    cfg_dropout = 0.0  # how often its training replaced a caption by `null_text` (classifier-free guidance)
    flow_shift: float | None = None  # "flow": the shift of the sampling grid where the pipeline applies it itself (else its scheduler's)

    def null_text(self, duration_s: float | None = None) -> TextConditioning:
        """The conditioning of a dropped caption, one row, as the model's training formed it; by
        default the pipeline's own unconditional input for guidance, the empty caption."""
        return self.encode_text([""], duration_s)

    def drop_captions(self, text: TextConditioning, dropped: torch.Tensor, null: TextConditioning) -> TextConditioning:
        """`text` with the rows of `dropped` replaced as the model's training replaced a dropped
        caption: by default by `null` (`null_text()`, one row)."""
        both = TextConditioning.cat([text, null])
        return both[torch.where(dropped, len(text), torch.arange(len(text), device=dropped.device))]

    def draw_timesteps(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Training timesteps for `n` clips, from the model's own training distribution."""
        return torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (n,), generator=generator)

    def denoiser_timestep(self, timesteps: torch.Tensor) -> torch.Tensor:
        """What the denoiser is given as its timestep for training timesteps `timesteps`."""
        return timesteps

    def denoiser_kwargs(self, latents: torch.Tensor) -> dict:
        """Arguments of the denoiser call that are not per clip (rotary embeddings, ...)."""
        return {}

    def predict(self, denoiser: torch.nn.Module, noisy: torch.Tensor, timesteps: torch.Tensor, text: TextConditioning) -> torch.Tensor:
        """`denoiser`'s prediction at training timesteps `timesteps` (the target of `objective`),
        called as the pipeline calls it. `denoiser` is this model's denoiser or a copy of it (a
        reference, an old policy, a wrapped module)."""
        return denoiser(noisy, self.denoiser_timestep(timesteps), **text.as_kwargs(), **self.denoiser_kwargs(noisy)).sample

    # The pipeline's other components, by diffusers' names (None where a pipeline has none).
    vae = property(lambda self: getattr(self.pipe, "vae", None))
    text_encoder = property(lambda self: getattr(self.pipe, "text_encoder", None))
    tokenizer = property(lambda self: getattr(self.pipe, "tokenizer", None))
    vocoder = property(lambda self: getattr(self.pipe, "vocoder", None))

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    def modules(self) -> dict[str, torch.nn.Module]:
        """Every module by name: the denoiser, the frozen ones and any front end."""
        found = {self.denoiser_name: self.denoiser}
        for name, component in self.pipe.components.items():
            if isinstance(component, torch.nn.Module) and name != self.denoiser_name:
                found[name] = component
        if isinstance(getattr(self, "mel", None), torch.nn.Module):
            found["mel"] = self.mel
        return found

    def to(self, device=None, dtype=None):
        """Move the model; `dtype` applies to the networks: a module without parameters is signal
        processing (the mel front end, a Griffin-Lim vocoder) and stays float32."""
        for module in self.modules().values():
            move(module, device, dtype)
        return self

    def eval(self):
        for module in self.modules().values():
            module.eval()
        return self

    def prepare(self, export: str | Path | None = None, device=None, torch_dtype=None):
        """Eval mode, device and dtype, then the trained export (a folder or Hub id) on top."""
        self.eval()
        if device is not None or torch_dtype is not None:
            self.to(device=device, dtype=torch_dtype)
        if export is not None:
            self.load_trained(export)
        return self

    def with_denoiser(self, denoiser: torch.nn.Module):
        """A second model over this one's frozen components, with `denoiser` as its denoiser (diffusers' `from_pipe`)."""
        model = type(self)(type(self.pipe).from_pipe(self.pipe, **{**self.pipe.components, self.denoiser_name: denoiser}))
        model.name_or_path = self.name_or_path
        return model

    def add_lora(self, config) -> None:
        """Inject a peft `LoraConfig` adapter named "default" into the denoiser. diffusers' own
        `add_adapter` where the model class has it; peft's `inject_adapter_in_model` otherwise
        (AudioLDM 2's UNet), keeping `peft_config` as diffusers does so both save alike."""
        # lazy: a config check imports this module (see the top)
        from peft import inject_adapter_in_model
        from peft.utils import NoMatchingPeftModuleError

        try:
            if hasattr(self.denoiser, "add_adapter"):
                self.denoiser.add_adapter(config)
                return
            inject_adapter_in_model(config, self.denoiser, adapter_name="default")
        except NoMatchingPeftModuleError as exc:
            raise lora_target_error(sorted(config.target_modules), type(self.denoiser).__name__, self.lora_target_modules, exc) from None
        self.denoiser.peft_config = {"default": config}

    @staticmethod
    def clip_generators(captions: list[str], seeds: list[int], guidance_scale: float) -> list[torch.Generator]:
        """One CPU generator per clip, after the checks every `generate` makes: a clip depends on
        its seed only, not on its batch neighbours."""
        if len(captions) != len(seeds):
            raise ValueError(f"{len(captions)} captions but {len(seeds)} seeds")
        if not math.isfinite(guidance_scale):
            raise ValueError(f"guidance_scale must be a finite number, got {guidance_scale}")
        return [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]

    @staticmethod
    def switch_adapters(denoiser: torch.nn.Module, enabled: bool) -> None:
        """Turn the denoiser's LoRA adapter on or off with peft's own switch, whichever way it was
        added; switching it on also makes the active adapter trainable."""
        from peft.tuners.tuners_utils import BaseTunerLayer  # lazy: a config check imports this module (see the top)

        for layer in denoiser.modules():
            if isinstance(layer, BaseTunerLayer):
                layer.enable_adapters(enabled)

    @classmethod
    @contextlib.contextmanager
    def adapters_disabled(cls, denoiser: torch.nn.Module):
        """The denoiser without its LoRA adapter for the block: the base model, with no copy of it
        (the reference of DPO and KTO)."""
        cls.switch_adapters(denoiser, False)
        try:
            yield denoiser
        finally:
            cls.switch_adapters(denoiser, True)

    # -- the trained part ------------------------------------------------------------------------
    # The export is what a diffusers user loads on the base pipeline: a LoRA adapter in diffusers'
    # format (`pipe.load_lora_weights(FOLDER)` where the pipeline has it), or the full denoiser
    # (`unet/`, passed to `from_pretrained(BASE, unet=...)`), with `baton_export.json` naming the
    # mode and the base.

    def save_trained(self, folder: str | Path, mode: str, base: str | None = None, state_dict: dict | None = None) -> None:
        """Export what was trained: a LoRA adapter (`mode="lora"`) or the full denoiser (`"full"`),
        from `state_dict` where given (the whole state an engine that shards the denoiser, FSDP or
        DeepSpeed, gathered), else from the module itself."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        # The marker says "this folder is a whole export": off before the first file is written,
        # on (atomically) after the last, so a kill in between never leaves a folder that passes.
        (folder / EXPORT_FILE).unlink(missing_ok=True)
        # An export over one of the other mode: its files go, so the marker vouches for one model only.
        if mode == "lora":
            shutil.rmtree(folder / self.denoiser_name, ignore_errors=True)
        else:
            for stale in folder.glob("pytorch_lora_weights*.safetensors"):
                stale.unlink()
        if mode == "lora":
            # lazy: a config check imports this module (see the top)
            from diffusers.loaders.lora_base import LoraBaseMixin
            from diffusers.utils import convert_state_dict_to_diffusers
            from peft.utils import get_peft_model_state_dict

            adapter = get_peft_model_state_dict(self.denoiser, state_dict=state_dict)
            layers = convert_state_dict_to_diffusers({k: v.detach().cpu().contiguous() for k, v in adapter.items()})
            # diffusers' LoRA file: keys and adapter config under the denoiser's name ("unet." as
            # `save_lora_weights` writes for TANGO's pipeline, "transformer." for DiT pipelines).
            prefix = self.denoiser_name
            LoraBaseMixin.write_lora_layers(
                LoraBaseMixin.pack_weights(layers, prefix),
                str(folder),
                is_main_process=True,
                weight_name=None,
                save_function=None,
                safe_serialization=True,
                lora_adapter_metadata={f"{prefix}.{k}": v for k, v in self.denoiser.peft_config["default"].to_dict().items()},
            )
        elif mode == "full" and state_dict is None:
            self.denoiser.save_pretrained(str(folder / self.denoiser_name), safe_serialization=True)
        elif mode == "full":
            # what save_pretrained writes (its config and one safetensors file), from the gathered state
            from diffusers.utils import SAFETENSORS_WEIGHTS_NAME  # lazy: see the top
            from safetensors.torch import save_file

            self.denoiser.save_config(str(folder / self.denoiser_name))
            tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
            save_file(tensors, str(folder / self.denoiser_name / SAFETENSORS_WEIGHTS_NAME), metadata={"format": "pt"})
        else:
            raise ValueError(f"unknown export mode '{mode}' (expected lora or full)")
        atomic_write_json(folder / EXPORT_FILE, {"mode": mode, "base": base, "pipeline": type(self.pipe).__name__, "denoiser": type(self.denoiser).__name__})

    def _export_mode(self, folder: Path) -> str:
        info_file = folder / EXPORT_FILE
        if not info_file.is_file():
            raise FileNotFoundError(f"{folder}: not a trained export (no {EXPORT_FILE})")
        info = load_pretrained(lambda f: json.loads(Path(f).read_text(encoding="utf-8")), info_file, "an export description")
        mode = info.get("mode")
        if mode not in ("lora", "full"):
            raise ValueError(f"{info_file}: unknown export mode '{mode}'")
        # exports written before the pipeline class was recorded name none: they are taken as they are
        trained_on = info.get("pipeline")
        if trained_on and trained_on != type(self.pipe).__name__:
            raise ValueError(
                f"{folder}: a {mode} export of a {trained_on} ({info.get('denoiser')}), "
                f"not of this {type(self.pipe).__name__} ({type(self.denoiser).__name__}): load it on its own base model ({info.get('base')})"
            )
        return mode

    def load_trained(self, folder: str | Path) -> None:
        """Apply an export written by `save_trained` (a folder or Hub id) on top of this (base) model."""

        folder = resolve_folder(folder, "trained export")
        if self._export_mode(folder) == "lora":
            if hasattr(self.pipe, "load_lora_weights"):
                load_pretrained(lambda f: self.pipe.load_lora_weights(f, adapter_name="default"), folder, "a LoRA adapter")
            else:
                load_pretrained(self._inject_saved_lora, folder, "a LoRA adapter")
        else:
            device, dtype = self.device, next(self.denoiser.parameters()).dtype
            denoiser_class = type(self.denoiser)
            self.denoiser = move(load_pretrained(denoiser_class.from_pretrained, folder / self.denoiser_name, f"a {denoiser_class.__name__}"), device, dtype)

    def _inject_saved_lora(self, folder: Path) -> None:
        """A diffusers-format adapter on a denoiser whose pipeline has no `load_lora_weights`: the
        adapter's config from the file's metadata, then its weights (what peft users do by hand)."""

        from peft import LoraConfig  # lazy: a config check imports this module (see the top)

        state, metadata = lora_file_contents(folder, self.denoiser_name)
        fields = {f.name for f in dataclasses.fields(LoraConfig) if f.init}
        self.add_lora(LoraConfig(**{k: v for k, v in metadata.items() if k in fields}))
        self.restore_trained(self.denoiser, folder, state)

    def restore_trained(self, denoiser: torch.nn.Module, folder: str | Path, lora_state: dict | None = None) -> None:
        """Load a checkpoint's trained part into `denoiser` in place (resuming: the adapter or the
        weights go into the module the optimiser holds)."""

        folder = Path(folder)
        if self._export_mode(folder) == "lora":
            # lazy: a config check imports this module (see the top)
            from diffusers.utils import convert_unet_state_dict_to_peft
            from peft.utils import set_peft_model_state_dict

            state = lora_state if lora_state is not None else lora_file_contents(folder, self.denoiser_name)[0]
            result = set_peft_model_state_dict(denoiser, convert_unet_state_dict_to_peft(state), adapter_name="default")
            if getattr(result, "unexpected_keys", None):
                raise RuntimeError(f"{folder}: adapter keys not found in the denoiser: {result.unexpected_keys[:5]}")
        else:
            denoiser.load_state_dict(load_state_dict_file(next((folder / self.denoiser_name).glob("*.safetensors")), self.denoiser_name))


def lora_target_error(targets, class_name: str, default_targets, exc: Exception) -> ValueError:
    """One line for LoRA targets a denoiser class lacks: the targets, the class, the backend's own."""
    return ValueError(
        f"lora_target_modules {list(targets)}: not modules of {class_name} (this backend targets {list(default_targets)} by default; {str(exc).splitlines()[0]})"
    )


def lora_file_contents(folder: str | Path, prefix: str = "unet") -> tuple[dict[str, torch.Tensor], dict]:
    """A diffusers-format LoRA file's denoiser weights (`prefix.` removed) and the adapter's
    `LoraConfig` fields from its metadata. Read with safetensors: diffusers' readers are per
    pipeline family, and this file is always the one `save_trained` writes."""
    from safetensors import safe_open  # lazy: a config check imports this module (see the top)

    path = Path(folder) / "pytorch_lora_weights.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no pytorch_lora_weights.safetensors")
    with safe_open(str(path), framework="pt") as f:
        metadata = json.loads((f.metadata() or {}).get("lora_adapter_metadata", "{}"))
        state = {k.removeprefix(f"{prefix}."): f.get_tensor(k) for k in f.keys() if k.startswith(f"{prefix}.")}
    config = {k.removeprefix(f"{prefix}."): v for k, v in metadata.items() if k.startswith(f"{prefix}.")}
    return state, config
