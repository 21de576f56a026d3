"""Reward-weighted diffusion fine-tuning (BATON stage 3) on accelerate.

The whole loop is `RewardWeightedDiffusionTrainer.train`: the loss is formed in `training_loss`
(Eq. 7 through `losses.baton_loss`), the optimiser step and the checkpoint are in `train`.

Data order, timesteps and noise are drawn from generators seeded by (seed, step), not from the
global RNG, so a run resumed from a checkpoint takes exactly the steps an uninterrupted run takes,
and N processes with batch B take the same steps as one process with batch N * B.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from .audio import load_audio
from .backends.base import EXPORT_FILE, TextConditioning, TextToAudioBackend
from .config import config_to_dict
from .losses import SnrMode, baton_loss, denoising_target, snr_weights


@dataclass
class FinetuneConfig:
    run_dir: str = field(default="runs/baton", metadata={"help": "run folder; the other paths default inside it"})
    model: str = field(default="declare-lab/tango-full-ft-audiocaps", metadata={"help": "base model: folder or Hub id"})
    feedback_dataset: str | None = field(default=None, metadata={"help": "human-rated preference data (default RUN/feedback)"})
    reward_dataset: str | None = field(default=None, metadata={"help": "reward-rated data (default RUN/reward_labeled if it exists)"})
    pretrain_dataset: str | None = field(default=None, metadata={"help": "(caption, audio) data for the beta term"})
    output_dir: str | None = field(default=None, metadata={"help": "export folder (default RUN/aligned)"})
    mix_ratio: float = field(default=1.0, metadata={"help": "reward-rated rows per human-rated row (paper: 1)"})
    weighting: Literal["reward", "ones", "none"] = field(
        default="reward", metadata={"help": "feedback weights w_i: the rewards, all ones (ablation), or no feedback term"}
    )
    beta: float = field(default=0.5, metadata={"help": "weight of the pretraining term (paper 0.5)"})
    snr_mode: SnrMode = field(default="tango", metadata={"help": "none | min_snr | tango (TANGO's own weighting)"})
    snr_gamma: float = 5.0
    learning_rate: float = 1e-5
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    lr_scheduler: str = field(default="constant_with_warmup", metadata={"help": "a diffusers.optimization schedule name"})
    lr_warmup_steps: int = 0
    train_batch_size: int = field(default=6, metadata={"help": "feedback clips per process per micro-step"})
    pretrain_batch_size: int | None = field(default=None, metadata={"help": "pretrain clips per micro-step (default: train_batch_size)"})
    num_epochs: int = 10
    max_train_steps: int | None = field(default=None, metadata={"help": "stop after this many optimiser steps"})
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0
    mixed_precision: Literal["no", "fp16", "bf16"] | None = field(
        default=None, metadata={"help": "default: what `accelerate launch` was configured with"}
    )
    gradient_checkpointing: bool = False
    use_lora: bool = False
    lora_rank: int = 8
    lora_alpha: int | None = None
    lora_target_modules: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    duration_s: float | None = field(default=None, metadata={"help": "clip length for training (default: the model's)"})
    cache_embeddings: bool = field(default=True, metadata={"help": "encode latents and captions once, cache on disk"})
    cache_dir: str | None = field(default=None, metadata={"help": "default RUN/cache"})
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = 3
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "'latest' or a checkpoint folder"})
    report_to: str | None = field(default="tensorboard", metadata={"help": "accelerate tracker, or none"})
    logging_steps: int = 1
    seed: int = 0

    def __post_init__(self):
        run = Path(self.run_dir)
        # "none" switches a source off (the human-only and reward-only ablations of Table 6).
        if self.feedback_dataset is None:
            self.feedback_dataset = str(run / "feedback")
        if self.reward_dataset is None and (run / "reward_labeled").exists():
            self.reward_dataset = str(run / "reward_labeled")
        self.feedback_dataset = None if self.feedback_dataset == "none" else self.feedback_dataset
        self.reward_dataset = None if self.reward_dataset == "none" else self.reward_dataset
        self.output_dir = self.output_dir or str(run / "aligned")
        self.cache_dir = self.cache_dir or str(run / "cache")
        self.pretrain_batch_size = self.pretrain_batch_size or self.train_batch_size
        if self.report_to in ("none", ""):
            self.report_to = None
        for name in ("learning_rate", "beta", "mix_ratio", "snr_gamma"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"config key '{name}' must be a finite number >= 0, got {value}")
        for name in ("train_batch_size", "gradient_accumulation_steps", "num_epochs", "checkpointing_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"config key '{name}' must be >= 1, got {getattr(self, name)}")


@dataclass
class EncodedSet:
    """Training examples ready for the UNet: latents and caption conditioning (or raw audio when
    `cache_embeddings` is off and every step encodes), plus the feedback weights."""

    captions: list[str]
    weights: torch.Tensor  # (N,)
    latents: torch.Tensor | None = None  # (N, C, H, W)
    text: TextConditioning | None = None
    waveforms: torch.Tensor | None = None  # (N, samples), only without the cache

    def __len__(self) -> int:
        return len(self.captions)


def _step_generator(seed: int, step: int, stream: int) -> torch.Generator:
    # A fresh generator per (seed, step, stream): randomness does not depend on what ran before,
    # which makes resumption and multi-process runs reproduce single-process runs exactly.
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 7_919 + stream) % (2**63 - 1))


class RewardWeightedDiffusionTrainer:
    """Fine-tunes a backend's UNet with the BATON objective. One `Accelerator`, one loop."""

    def __init__(self, config: FinetuneConfig, backend: TextToAudioBackend | None = None, accelerator=None):
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration

        self.config = config
        out = Path(config.output_dir)
        if accelerator is None:
            from accelerate.state import AcceleratorState

            # Several trainers in one process (the run stage, ablations) may ask for different
            # precisions; the process group (PartialState) is kept.
            AcceleratorState._reset_state()
        self.accelerator = accelerator or Accelerator(
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            mixed_precision=config.mixed_precision,
            log_with=config.report_to,
            project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
        )
        if backend is None:
            from .backends.tango import TangoModel

            backend = TangoModel.from_pretrained(config.model)
        self.backend = backend
        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.accelerator.mixed_precision, torch.float32)
        self._setup_model()
        self.global_step = 0

    # -- model -----------------------------------------------------------------------------------

    def _setup_model(self) -> None:
        from accelerate.utils import set_seed

        cfg, acc, backend = self.config, self.accelerator, self.backend
        set_seed(cfg.seed)  # adapter initialisation and anything else drawn from the global RNG
        for module in backend.frozen_modules():
            module.requires_grad_(False)
            module.to(acc.device, dtype=self.weight_dtype)
        if hasattr(backend, "mel"):
            backend.mel.to(acc.device)
        unet = backend.unet
        if cfg.use_lora:
            from peft import LoraConfig

            unet.requires_grad_(False)
            unet.to(acc.device, dtype=self.weight_dtype)
            if not getattr(unet, "peft_config", None):
                unet.add_adapter(
                    LoraConfig(
                        r=cfg.lora_rank,
                        lora_alpha=cfg.lora_alpha or cfg.lora_rank,
                        init_lora_weights="gaussian",
                        target_modules=list(cfg.lora_target_modules),
                    )
                )
            # Trained parameters stay fp32 whatever the mixed precision: fp16 LoRA weights make
            # the GradScaler fail with "Attempting to unscale FP16 gradients".
            for param in unet.parameters():
                if param.requires_grad:
                    param.data = param.data.float()
        else:
            unet.requires_grad_(True)
            unet.to(acc.device, dtype=torch.float32)
        if cfg.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        unet.train()
        self.trainable_params = [p for p in unet.parameters() if p.requires_grad]
        if not self.trainable_params:
            raise RuntimeError("no trainable parameters in the UNet")
        self.optimizer = torch.optim.AdamW(
            self.trainable_params,
            lr=cfg.learning_rate,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            weight_decay=cfg.adam_weight_decay,
            eps=cfg.adam_epsilon,
        )
        self.unet, self.optimizer = acc.prepare(unet, self.optimizer)
        acc.register_save_state_pre_hook(self._save_model_hook)
        acc.register_load_state_pre_hook(self._load_model_hook)

    def _save_model_hook(self, models, weights, output_dir):
        # Write the trained part in the export format (adapter or UNet, safetensors) instead of
        # accelerate's generic pickle of the whole model, so that resume restores the adapter.
        if self.accelerator.is_main_process:
            self.backend.save_trained(output_dir, "lora" if self.config.use_lora else "full", base=self.config.model)
        while weights:
            weights.pop()

    def _load_model_hook(self, models, input_dir):
        from peft.utils import set_peft_model_state_dict
        from safetensors.torch import load_file

        unet = self.accelerator.unwrap_model(models.pop()) if models else self.backend.unet
        if self.config.use_lora:
            state = load_file(os.path.join(input_dir, "unet_lora.safetensors"))
            result = set_peft_model_state_dict(unet, state)
            if getattr(result, "unexpected_keys", None):
                raise RuntimeError(f"{input_dir}: adapter keys not found in the UNet: {result.unexpected_keys[:5]}")
        else:
            folder = Path(input_dir) / "unet"
            state = load_file(str(next(folder.glob("*.safetensors"))))
            unet.load_state_dict(state)
        models.clear()

    # -- data ------------------------------------------------------------------------------------

    def _duration(self) -> float:
        return self.config.duration_s or getattr(getattr(self.backend, "settings", None), "duration_s", 10.0)

    def _read_audio(self, ds, name: str) -> torch.Tensor:
        sr = self.backend.sample_rate
        samples = int(round(self._duration() * sr))
        from .audio import crop_or_pad

        rows = ds.with_format("arrow")["audio"].to_pylist()
        return torch.stack(
            [torch.from_numpy(crop_or_pad(load_audio(a, sr, what=f"{name}: row {i}, column 'audio'")[0], samples)) for i, a in enumerate(rows)]
        )

    def _cache_key(self, captions: list[str], ds) -> str:
        h = hashlib.sha256()
        h.update(self.backend.fingerprint().encode())
        h.update(json.dumps([self._duration(), captions]).encode())
        h.update(str(getattr(ds, "_fingerprint", "")).encode())
        return h.hexdigest()[:20]

    def encode_set(self, ds, weights: torch.Tensor, name: str) -> EncodedSet:
        """Latents and caption embeddings for `ds`, from the disk cache when they are there."""
        captions = list(ds["caption"])
        if not self.config.cache_embeddings:
            return EncodedSet(captions, weights, waveforms=self._read_audio(ds, name))
        from safetensors.torch import load_file, save_file

        acc = self.accelerator
        path = Path(self.config.cache_dir) / f"{name}-{self._cache_key(captions, ds)}.safetensors"
        if acc.is_main_process and not path.is_file():
            waveforms = self._read_audio(ds, name)
            latents, hidden, masks = [], [], []
            from tqdm.auto import tqdm

            for start in tqdm(range(0, len(captions), 16), desc=f"encoding {name}", disable=not acc.is_local_main_process):
                chunk = waveforms[start : start + 16].to(acc.device)
                latents.append(self.backend.encode_audio(chunk).float().cpu())
                cond = self.backend.encode_text(captions[start : start + 16])
                hidden.append(cond.hidden_states.float().cpu())
                masks.append(cond.attention_mask.cpu())
            length = max(h.shape[1] for h in hidden)
            pad = lambda t, v: torch.nn.functional.pad(t, (0, 0, 0, length - t.shape[1]) if t.ndim == 3 else (0, length - t.shape[1]), value=v)  # noqa: E731
            tensors = {
                "latents": torch.cat(latents),
                "text_hidden": torch.cat([pad(h, 0.0) for h in hidden]),
                "text_mask": torch.cat([pad(m, False) for m in masks]),
            }
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
            os.replace(tmp, path)
        acc.wait_for_everyone()
        tensors = load_file(str(path))
        return EncodedSet(captions, weights, tensors["latents"], TextConditioning(tensors["text_hidden"], tensors["text_mask"]))

    def load_data(self) -> tuple[EncodedSet | None, EncodedSet | None]:
        from .data import load_preference_dataset, load_pretrain_dataset, mix_feedback

        cfg = self.config
        feedback = None
        if cfg.weighting != "none":
            human = load_preference_dataset(cfg.feedback_dataset) if cfg.feedback_dataset else None
            reward = load_preference_dataset(cfg.reward_dataset) if cfg.reward_dataset else None
            if human is None and reward is None:
                raise FileNotFoundError(f"no feedback data: {cfg.feedback_dataset} does not exist and no reward_dataset is set")
            if human is None:
                mixed = reward
            else:
                mixed = mix_feedback(human, reward, cfg.mix_ratio, cfg.seed)
            weights = torch.tensor(mixed["reward"], dtype=torch.float32)
            if cfg.weighting == "ones":
                weights = torch.ones_like(weights)
            feedback = self.encode_set(mixed, weights, "feedback")
        pretrain = None
        if cfg.beta > 0 and cfg.pretrain_dataset:
            ds = load_pretrain_dataset(cfg.pretrain_dataset)
            pretrain = self.encode_set(ds, torch.ones(len(ds)), "pretrain")
        if feedback is None and pretrain is None:
            raise ValueError("nothing to train on: weighting 'none' needs a pretrain_dataset and beta > 0")
        return feedback, pretrain

    def _batch(self, data: EncodedSet, step: int, micro: int, per_process: int, stream: int):
        """This process's slice of the global batch for (step, micro-step): a seeded permutation
        per epoch over the whole set, cut into global batches of per_process * num_processes."""
        acc = self.accelerator
        global_batch = per_process * acc.num_processes
        per_epoch = max(1, len(data) // global_batch)
        index = step * self.config.gradient_accumulation_steps + micro
        epoch, position = divmod(index, per_epoch)
        order = torch.randperm(len(data), generator=_step_generator(self.config.seed, epoch, stream))
        if len(data) < global_batch:  # tiny sets: repeat to fill the batch
            order = order.repeat(math.ceil(global_batch / len(data)))
        chosen = order[position * global_batch : (position + 1) * global_batch]
        mine = chosen[acc.process_index * per_process : (acc.process_index + 1) * per_process]
        if data.latents is not None:
            latents, text = data.latents[mine], data.text[mine]
        else:
            with torch.no_grad():
                latents = self.backend.encode_audio(data.waveforms[mine].to(acc.device)).float()
                text = self.backend.encode_text([data.captions[i] for i in mine.tolist()])
        return latents.to(acc.device), text.to(acc.device, self.weight_dtype), data.weights[mine].to(acc.device)

    # -- the loss --------------------------------------------------------------------------------

    def _noisy_prediction(self, latents, text, step, micro, stream):
        """Add noise at random timesteps and run the UNet; returns (prediction, target, snr weight)."""
        acc, scheduler = self.accelerator, self.backend.noise_scheduler
        n_global = latents.shape[0] * acc.num_processes
        gen = _step_generator(self.config.seed + 1, step * self.config.gradient_accumulation_steps + micro, stream)
        noise = torch.randn((n_global, *latents.shape[1:]), generator=gen)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (n_global,), generator=gen)
        rank = slice(acc.process_index * latents.shape[0], (acc.process_index + 1) * latents.shape[0])
        noise, timesteps = noise[rank].to(latents.device), timesteps[rank].to(latents.device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        target = denoising_target(scheduler, latents, noise, timesteps)
        with acc.autocast():
            pred = self.unet(noisy.to(self.unet_input_dtype), timesteps, **text.unet_kwargs()).sample
        weight = snr_weights(scheduler, timesteps, self.config.snr_gamma, self.config.snr_mode)
        return pred, target, weight

    @property
    def unet_input_dtype(self) -> torch.dtype:
        return self.weight_dtype if self.config.use_lora else torch.float32

    def training_loss(self, feedback: EncodedSet | None, pretrain: EncodedSet | None, step: int, micro: int):
        """Eq. 7: mean_i w_i * snr_i * mse_i over feedback clips + beta * mean_j snr_j * mse_j."""
        cfg = self.config
        if feedback is not None:
            latents, text, weights = self._batch(feedback, step, micro, cfg.train_batch_size, stream=0)
            pred_fb, target_fb, snr_fb = self._noisy_prediction(latents, text, step, micro, stream=0)
        else:  # the pretraining-term-alone ablation: an all-zero feedback term
            pred_fb = target_fb = torch.zeros(1, 1, device=self.accelerator.device)
            weights, snr_fb = torch.zeros(1, device=self.accelerator.device), None
        pred_pt = target_pt = snr_pt = None
        if pretrain is not None:
            latents, text, _ = self._batch(pretrain, step, micro, cfg.pretrain_batch_size, stream=1)
            pred_pt, target_pt, snr_pt = self._noisy_prediction(latents, text, step, micro, stream=1)
        return baton_loss(pred_fb, target_fb, weights, pred_pt, target_pt, cfg.beta, snr_fb, snr_pt)

    # -- checkpoints -----------------------------------------------------------------------------

    @property
    def checkpoint_root(self) -> Path:
        return Path(self.config.output_dir) / "checkpoints"

    def latest_checkpoint(self) -> Path | None:
        found = [(int(m.group(1)), p) for p in self.checkpoint_root.glob("checkpoint-*") if (m := re.fullmatch(r"checkpoint-(\d+)", p.name))]
        return max(found)[1] if found else None

    def save_checkpoint(self) -> Path:
        acc = self.accelerator
        final = self.checkpoint_root / f"checkpoint-{self.global_step}"
        tmp = self.checkpoint_root / f".checkpoint-{self.global_step}.tmp"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))  # every rank calls it: a rank-gated save_state hangs DDP/DeepSpeed
        acc.wait_for_everyone()
        if acc.is_main_process:
            (tmp / "trainer_state.json").write_text(json.dumps({"global_step": self.global_step}))
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
        self.global_step = json.loads((path / "trainer_state.json").read_text())["global_step"]
        self.accelerator.print(f"resumed from {path} at step {self.global_step}")

    # -- the loop --------------------------------------------------------------------------------

    def num_training_steps(self, feedback: EncodedSet | None, pretrain: EncodedSet | None) -> int:
        cfg, acc = self.config, self.accelerator
        if cfg.max_train_steps:
            return cfg.max_train_steps
        main = feedback if feedback is not None else pretrain
        per = cfg.train_batch_size if feedback is not None else cfg.pretrain_batch_size
        micro_per_epoch = max(1, len(main) // (per * acc.num_processes))
        return max(1, cfg.num_epochs * micro_per_epoch // cfg.gradient_accumulation_steps)

    def train(self, feedback: EncodedSet | None = None, pretrain: EncodedSet | None = None) -> Path:
        from diffusers.optimization import get_scheduler
        from tqdm.auto import tqdm

        cfg, acc = self.config, self.accelerator
        if feedback is None and pretrain is None:
            feedback, pretrain = self.load_data()
        total = self.num_training_steps(feedback, pretrain)
        lr_scheduler = get_scheduler(
            cfg.lr_scheduler, self.optimizer, num_warmup_steps=cfg.lr_warmup_steps * acc.num_processes, num_training_steps=total * acc.num_processes
        )
        self.lr_scheduler = acc.prepare(lr_scheduler)
        if cfg.report_to:
            acc.init_trackers("baton", config={k: v for k, v in config_to_dict(cfg).items() if isinstance(v, (int, float, str, bool))})
        self.resume()
        bar = tqdm(total=total, initial=self.global_step, desc="fine-tuning", disable=not acc.is_local_main_process)
        started = time.time()
        while self.global_step < total:
            for micro in range(cfg.gradient_accumulation_steps):
                with acc.accumulate(self.unet):
                    loss, logs = self.training_loss(feedback, pretrain, self.global_step, micro)
                    if not torch.isfinite(loss):
                        raise FloatingPointError(
                            f"loss is {loss.item()} at step {self.global_step}; with fp16, try bf16 (audio VAEs overflow in fp16)"
                        )
                    acc.backward(loss)
                    if acc.sync_gradients and cfg.max_grad_norm > 0:
                        acc.clip_grad_norm_(self.trainable_params, cfg.max_grad_norm)
                    self.optimizer.step()
                    self.lr_scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
            self.global_step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{logs['loss']:.4f}")
            if cfg.report_to and self.global_step % cfg.logging_steps == 0:
                acc.log({**logs, "lr": self.lr_scheduler.get_last_lr()[0]}, step=self.global_step)
            if self.global_step % cfg.checkpointing_steps == 0:
                self.save_checkpoint()
        bar.close()
        out = self.export()
        if acc.is_main_process:
            summary = {"global_step": self.global_step, "seconds": round(time.time() - started, 1), "final_loss": logs["loss"]}
            (out / "train_summary.json").write_text(json.dumps(summary, indent=2))
        acc.end_training()
        return out

    def export(self) -> Path:
        """The trained part (adapter or UNet) in safetensors, with the config and library versions."""
        acc, cfg = self.accelerator, self.config
        out = Path(cfg.output_dir)
        acc.wait_for_everyone()
        if acc.is_main_process:
            self.backend.unet = acc.unwrap_model(self.unet)
            self.backend.save_trained(out, "lora" if cfg.use_lora else "full", base=cfg.model)
            (out / "finetune_config.json").write_text(json.dumps(config_to_dict(cfg), indent=2))
            (out / "versions.json").write_text(json.dumps(library_versions(), indent=2))
        acc.wait_for_everyone()
        return out


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape numbers (diffusers/TANGO users hit version skew)."""
    import importlib.metadata as md

    versions = {}
    for name in ("baton-trainer", "torch", "diffusers", "transformers", "accelerate", "peft", "datasets", "numpy"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def finetune(config: FinetuneConfig) -> Path:
    """The `finetune` stage: feedback (+ reward-rated) clips and a pretrain set -> RUN/aligned/."""
    trainer = RewardWeightedDiffusionTrainer(config)
    out = trainer.train()
    trainer.accelerator.print(f"aligned model written to {out} ({EXPORT_FILE}: base {config.model})")
    return out
