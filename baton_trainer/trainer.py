"""Diffusion fine-tuning on accelerate: one loop for every objective.

`DiffusionTrainer.train` is the whole loop. The loss is formed by the objective
(`self.objective.loss`, a class in `baton_trainer.objectives`), the optimiser step is taken and
the checkpoint written in `train`, and `export` writes the trained part. The trainer never asks
which objective it runs. Its config is `baton_trainer.stages.finetune.FinetuneConfig`; the data
arrives ready (encoded by the fine-tune stage), and every random draw of a step comes from
`baton_trainer.denoising.DenoisingDraw`.

One process trains at one precision: accelerate keeps its state process-wide (`AcceleratorState`
is a singleton) and offers no public way to reset it, so a second trainer in the same process that
asks for another `mixed_precision` gets accelerate's own error. Run trainings of different
precisions in separate processes, as `accelerate launch` does.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import cast_training_params
from peft import LoraConfig
from tqdm.auto import tqdm

from .atomic import atomic_write_json
from .backends import EXPORT_FILE, TextToAudioBackend, load_backend
from .backends.base import move
from .config import config_to_dict
from .denoising import DenoisingDraw
from .latent_cache import EncodedSet, LatentCache, PairedSet
from .objectives import build_objective
from .runtime import library_versions


class DiffusionTrainer:
    """Fine-tunes a backend's denoiser with one objective. One `Accelerator`, one loop."""

    def __init__(self, config, backend: TextToAudioBackend | None = None, accelerator: Accelerator | None = None):
        self.config = config
        layout = config.layout()
        self.output_dir = layout.aligned
        self.accelerator = accelerator or Accelerator(
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            mixed_precision=config.mixed_precision,
            log_with=config.report_to,
            project_config=ProjectConfiguration(project_dir=str(self.output_dir), logging_dir=str(self.output_dir / "logs")),
        )
        self.backend = backend or load_backend(config.model)
        self.objective = build_objective(config)
        weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.accelerator.mixed_precision, torch.float32)
        duration = config.duration_s or self.backend.duration_s
        self.draw = DenoisingDraw(
            self.backend,
            self.accelerator,
            seed=config.seed,
            accumulation=config.gradient_accumulation_steps,
            cfg_dropout=self.backend.cfg_dropout if config.cfg_dropout is None else config.cfg_dropout,
            snr_mode=config.snr_mode or self.backend.default_snr_mode,
            snr_gamma=config.snr_gamma,
            weight_dtype=weight_dtype,
            # LoRA trains in the frozen weights' dtype; full fine-tuning trains fp32 weights.
            input_dtype=weight_dtype if config.use_lora else torch.float32,
            duration_s=duration,
        )
        self.latent_cache = LatentCache(self.backend, self.accelerator, layout.cache, duration, enabled=config.cache_embeddings)
        self._setup_model()
        self.global_step = 0
        self.last_logs: dict[str, float] = {}

    # -- model -----------------------------------------------------------------------------------

    def _setup_model(self) -> None:
        cfg, acc, backend, weight_dtype = self.config, self.accelerator, self.backend, self.draw.weight_dtype
        set_seed(cfg.seed)  # adapter initialisation and anything else drawn from the global RNG
        for module in backend.frozen_modules():
            module.requires_grad_(False)
            move(module, acc.device, weight_dtype)
        if hasattr(backend, "mel"):
            backend.mel.to(acc.device)
        denoiser = backend.denoiser
        if cfg.use_lora:
            denoiser.requires_grad_(False)
            move(denoiser, acc.device, weight_dtype)
            if getattr(denoiser, "peft_config", None):  # an adapter loaded from an export (an online round): train it on
                backend.switch_adapters(denoiser, True)
            else:
                backend.add_lora(
                    LoraConfig(
                        r=cfg.lora_rank,
                        lora_alpha=cfg.lora_alpha or cfg.lora_rank,
                        init_lora_weights="gaussian",
                        target_modules=list(cfg.lora_target_modules or backend.lora_target_modules),
                    )
                )
            # Trained parameters stay fp32 whatever the mixed precision: fp16 LoRA weights make
            # the GradScaler fail with "Attempting to unscale FP16 gradients".
            cast_training_params(denoiser, dtype=torch.float32)
        else:
            denoiser.requires_grad_(True)
            for name, parameter in denoiser.named_parameters():
                # Parts text-to-audio never calls (an inpainting input) get no gradient; DDP would stop on them.
                if any(name.startswith(prefix) or f".{prefix}" in name for prefix in backend.unused_denoiser_parts):
                    parameter.requires_grad_(False)
            move(denoiser, acc.device, torch.float32)
        self.objective.attach(denoiser, self.draw)  # before gradient checkpointing and wrapping: a reference copy is a plain module
        if cfg.gradient_checkpointing:
            denoiser.enable_gradient_checkpointing()
        denoiser.train()
        self.trainable_params = [p for p in denoiser.parameters() if p.requires_grad]
        if not self.trainable_params:
            raise RuntimeError(f"no trainable parameters in the {backend.denoiser_name}")
        self.optimizer = self._optimizer_class()(
            self.trainable_params,
            lr=cfg.learning_rate,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            weight_decay=cfg.adam_weight_decay,
            eps=cfg.adam_epsilon,
        )
        if acc.distributed_type == DistributedType.DEEPSPEED:
            # DeepSpeed sizes its engine from a dataloader, and the trainer has none (the objective draws its batches)
            acc.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = cfg.train_batch_size
        self.denoiser, self.optimizer = acc.prepare(denoiser, self.optimizer)
        acc.register_save_state_pre_hook(self._save_model_hook)
        acc.register_load_state_pre_hook(self._load_model_hook)

    def _optimizer_class(self) -> type:
        """torch's AdamW, or bitsandbytes' 8-bit AdamW (its two moments in 8 bits)."""
        if self.config.optimizer != "adamw_8bit":
            return torch.optim.AdamW
        try:
            import bitsandbytes  # optional: the 8bit extra
        except ImportError:
            raise RuntimeError("optimizer adamw_8bit needs bitsandbytes: pip install 'baton-trainer[8bit]'") from None
        return bitsandbytes.optim.AdamW8bit

    def _save_model_hook(self, models, weights, output_dir):
        # Write the trained part in the export format (adapter or denoiser, safetensors) instead of
        # accelerate's generic pickle of the whole model, so that resume restores the adapter.
        state = self._whole_state()
        if self.accelerator.is_main_process:
            self.backend.save_trained(output_dir, self.export_mode, base=self.config.model, state_dict=state)
        while weights:
            weights.pop()

    def _load_model_hook(self, models, input_dir):
        if not models:  # FSDP and DeepSpeed restored the model themselves, from their own files in the checkpoint
            return
        self.backend.restore_trained(self.accelerator.unwrap_model(models.pop()), input_dir)
        models.clear()

    def _whole_state(self) -> dict | None:
        """The denoiser's whole state dict where an engine shards it (FSDP, DeepSpeed: gathered from
        every rank, so every rank must call this), None where the module holds it whole."""
        acc = self.accelerator
        return acc.get_state_dict(self.denoiser) if acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED) else None

    @property
    def export_mode(self) -> str:
        return "lora" if self.config.use_lora else "full"

    # -- the loss --------------------------------------------------------------------------------

    def training_loss(self, feedback: EncodedSet | PairedSet | None, pretrain: EncodedSet | None, step: int, micro: int):
        """The objective's loss on this micro-step's batch (its pretraining term included)."""
        return self.objective.loss(self.denoiser, feedback, pretrain, step, micro)

    # -- checkpoints (training state, to resume from) --------------------------------------------

    @property
    def checkpoint_root(self) -> Path:
        return self.output_dir / "checkpoints"

    def latest_checkpoint(self) -> Path | None:
        found = [(int(m.group(1)), p) for p in self.checkpoint_root.glob("checkpoint-*") if (m := re.fullmatch(r"checkpoint-(\d+)", p.name))]
        return max(found)[1] if found else None

    def save_checkpoint(self) -> Path:
        # Built under a temporary name and renamed, not saved into its final folder as accelerate's
        # own checkpointing does: a run killed mid-save leaves no half checkpoint for "latest" to pick.
        acc = self.accelerator
        final = self.checkpoint_root / f"checkpoint-{self.global_step}"
        tmp = self.checkpoint_root / f".checkpoint-{self.global_step}.tmp"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        acc.wait_for_everyone()
        self.objective.save()
        acc.save_state(str(tmp))  # every rank calls it: a rank-gated save_state hangs DDP/DeepSpeed
        self.objective.save_state(tmp)
        acc.wait_for_everyone()
        if acc.is_main_process:
            (tmp / "trainer_state.json").write_text(json.dumps({"global_step": self.global_step, "logs": self.last_logs}))
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)  # a run killed mid-save leaves only a .tmp folder, never a bad checkpoint
            limit = self.config.checkpoints_total_limit
            if limit:
                ordered = sorted(self.checkpoint_root.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
                for old in ordered[:-limit]:
                    shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    def resume(self) -> None:
        target = self.config.resume_from_checkpoint
        if not target:
            return
        path = self.latest_checkpoint() if target == "latest" else Path(target)
        if path is None:
            self.accelerator.print("resume_from_checkpoint=latest: no checkpoint yet, starting fresh")
            return
        if not path.is_dir():
            raise FileNotFoundError(f"checkpoint folder not found: {path}")
        self.accelerator.load_state(str(path))
        self.objective.load_state(path)
        state = json.loads((path / "trainer_state.json").read_text())
        self.global_step, self.last_logs = state["global_step"], state.get("logs", {})
        self.accelerator.print(f"resumed from {path} at step {self.global_step}")

    # -- the loop --------------------------------------------------------------------------------

    def num_training_steps(self, feedback: EncodedSet | PairedSet | None, pretrain: EncodedSet | None) -> int:
        cfg, acc = self.config, self.accelerator
        if cfg.max_train_steps:
            return cfg.max_train_steps
        if (steps := self.objective.training_steps(feedback, pretrain)) is not None:
            return steps
        main = feedback if feedback is not None else pretrain
        per = cfg.train_batch_size if feedback is not None else cfg.pretrain_batch_size
        micro_per_epoch = max(1, len(main) // (per * acc.num_processes))
        return max(1, cfg.num_epochs * micro_per_epoch // cfg.gradient_accumulation_steps)

    def train(self, feedback: EncodedSet | PairedSet | None, pretrain: EncodedSet | None) -> Path:
        """Trains on the encoded `feedback` (None: the pretraining term alone) and `pretrain` data
        (`stages.finetune.load_training_data` makes both) and exports the result."""
        cfg, acc = self.config, self.accelerator
        if feedback is None and pretrain is None:
            raise ValueError("nothing to train on: no feedback data and no pretraining data")
        total = self.num_training_steps(feedback, pretrain)
        self.objective.begin(self.denoiser, feedback)
        lr_scheduler = get_scheduler(
            cfg.lr_scheduler, self.optimizer, num_warmup_steps=cfg.lr_warmup_steps * acc.num_processes, num_training_steps=total * acc.num_processes
        )
        self.lr_scheduler = acc.prepare(lr_scheduler)
        if cfg.report_to:
            acc.init_trackers("baton", config={k: v for k, v in config_to_dict(cfg).items() if isinstance(v, (int, float, str, bool))})
        self.resume()
        bar = tqdm(total=total, initial=self.global_step, desc="fine-tuning", disable=not acc.is_local_main_process)
        started = time.time()
        if self.global_step == 0:
            self.objective.end_of_step(self.denoiser, 0)  # the online judge's view of the untrained model
        while self.global_step < total:
            step_logs: list[dict[str, float]] = []
            for micro in range(cfg.gradient_accumulation_steps):
                with acc.accumulate(self.denoiser):
                    loss, logs = self.training_loss(feedback, pretrain, self.global_step, micro)  # the objective forms the loss
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"loss is {loss.item()} at step {self.global_step}; with fp16, try bf16 (audio VAEs overflow in fp16)")
                    acc.backward(loss)
                    if acc.sync_gradients and cfg.max_grad_norm > 0:
                        acc.clip_grad_norm_(self.trainable_params, cfg.max_grad_norm)
                    self.optimizer.step()
                    self.lr_scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                step_logs.append(logs)
            self.global_step += 1
            self.last_logs = self._mean_over_processes(step_logs)
            bar.update(1)
            bar.set_postfix(loss=f"{self.last_logs['loss']:.4f}")
            if cfg.report_to and self.global_step % cfg.logging_steps == 0:
                acc.log({**self.last_logs, "lr": self.lr_scheduler.get_last_lr()[0]}, step=self.global_step)
            stop = self.objective.end_of_step(self.denoiser, self.global_step)  # before the checkpoint, which keeps what it judged
            if self.global_step % cfg.checkpointing_steps == 0:
                self.save_checkpoint()
            if stop:
                break
        bar.close()
        self.objective.save()
        self.objective.finish(self.denoiser)
        summary = {"global_step": self.global_step, "seconds": round(time.time() - started, 1), "final_loss": self.last_logs.get("loss")}
        out = self.export(summary)
        acc.end_training()
        return out

    def _mean_over_processes(self, step_logs: list[dict[str, float]]) -> dict[str, float]:
        """Each logged value averaged over the step's micro-steps and over every process, as
        diffusers' training scripts log their loss. A collective: every rank calls it each step."""
        keys = sorted(step_logs[0])
        local = torch.tensor([sum(logs[k] for logs in step_logs) / len(step_logs) for k in keys], device=self.accelerator.device)
        return dict(zip(keys, self.accelerator.reduce(local, reduction="mean").tolist()))

    # -- export (the shipped model folder) -------------------------------------------------------

    def export(self, summary: dict) -> Path:
        """The trained part (adapter or denoiser) in safetensors, with the config, library versions
        and training summary. The export marker (`baton_export.json`) goes first out and last in:
        a run killed at any write leaves a folder no stage accepts as an export."""
        acc, cfg = self.accelerator, self.config
        out = self.output_dir
        acc.wait_for_everyone()
        state = self._whole_state()
        if acc.is_main_process:
            (out / EXPORT_FILE).unlink(missing_ok=True)  # a previous export's marker must not vouch for this one's files
            self.backend.denoiser = acc.unwrap_model(self.denoiser)
            atomic_write_json(out / "finetune_config.json", config_to_dict(cfg))
            atomic_write_json(out / "versions.json", library_versions())
            atomic_write_json(out / "train_summary.json", summary)
            self.backend.save_trained(out, self.export_mode, base=cfg.model, state_dict=state)  # writes the marker last
        acc.wait_for_everyone()
        return out
