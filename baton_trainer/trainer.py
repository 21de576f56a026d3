"""Reward-weighted diffusion fine-tuning (BATON stage 3) on accelerate.

The whole loop is `RewardWeightedDiffusionTrainer.train`: the loss is formed in `training_loss`
(Eq. 7 through `losses.baton_loss`, or DPO / KTO against the base model), the optimiser step and
the checkpoint are in `train`. Its config is `baton_trainer.stages.finetune.FinetuneConfig`;
latents come from `latent_cache`, DPO's and KTO's reference losses from `reference_losses` once a
run of the same data has computed them.

Data order, timesteps and noise are drawn from generators seeded by (seed, step), not from the
global RNG, so a run resumed from a checkpoint takes exactly the steps an uninterrupted run takes,
and N processes with batch B take the same steps as one process with batch N * B.

One process trains at one precision: accelerate keeps its state process-wide (`AcceleratorState`
is a singleton) and offers no public way to reset it, so a second trainer in the same process that
asks for another `mixed_precision` gets accelerate's own error. Run trainings of different
precisions in separate processes, as `accelerate launch` does.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .backends.base import TextConditioning, TextToAudioBackend
from .config import config_to_dict
from .latent_cache import EncodedSet, LatentCache, PairedSet
from .losses import baton_loss, dpo_loss, kto_loss, noised_latents_and_target, per_sample_mse, snr_weights
from .reference_losses import ReferenceLosses, data_digest, weights_digest

if TYPE_CHECKING:
    from .stages.finetune import FinetuneConfig


def _step_generator(seed: int, step: int, stream: int) -> torch.Generator:
    # A fresh generator per (seed, step, stream): randomness does not depend on what ran before,
    # which makes resumption and multi-process runs reproduce single-process runs exactly.
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 7_919 + stream) % (2**63 - 1))


class RewardWeightedDiffusionTrainer:
    """Fine-tunes a backend's UNet with the BATON objective. One `Accelerator`, one loop."""

    def __init__(self, config: "FinetuneConfig", backend: TextToAudioBackend | None = None, accelerator=None):
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration

        self.config = config
        layout = config.layout()
        self.output_dir = layout.aligned
        self.accelerator = accelerator or Accelerator(
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            mixed_precision=config.mixed_precision,
            log_with=config.report_to,
            project_config=ProjectConfiguration(project_dir=str(self.output_dir), logging_dir=str(self.output_dir / "logs")),
        )
        if backend is None:
            from .backends import load_backend

            backend = load_backend(config.model)
        self.backend = backend
        self.snr_mode = config.snr_mode or backend.default_snr_mode
        if self.snr_mode != "none" and backend.objective != "ddpm":
            raise ValueError(f"snr_mode {self.snr_mode!r} weights DDPM timesteps; {type(backend).__name__} trains with the {backend.objective} objective: use snr_mode none")
        self.cfg_dropout = backend.cfg_dropout if config.cfg_dropout is None else config.cfg_dropout
        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.accelerator.mixed_precision, torch.float32)
        duration = config.duration_s or backend.duration_s
        self.latent_cache = LatentCache(backend, self.accelerator, layout.cache, duration, enabled=config.cache_embeddings)
        self._setup_model()
        self._null_text: TextConditioning | None = None
        self.reference_losses: ReferenceLosses | None = None  # DPO/KTO: set by `train`, for `_reference_losses_data`
        self._reference_losses_data = None
        self.global_step = 0
        self.last_logs: dict[str, float] = {}

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
            if getattr(unet, "peft_config", None):  # an adapter loaded from an export (an online round): train it on
                backend.switch_adapters(unet, True)
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
            from diffusers.training_utils import cast_training_params

            cast_training_params(unet, dtype=torch.float32)
        else:
            unet.requires_grad_(True)
            for name, parameter in unet.named_parameters():
                # Parts text-to-audio never calls (an inpainting input) get no gradient; DDP would stop on them.
                if any(name.startswith(prefix) or f".{prefix}" in name for prefix in backend.unused_denoiser_parts):
                    parameter.requires_grad_(False)
            unet.to(acc.device, dtype=torch.float32)
        # DPO and KTO compare against the base model: under LoRA the same denoiser with its adapter
        # switched off (`adapters_disabled`, no copy); under full fine-tuning a frozen copy.
        self.reference_unet = None
        if cfg.objective in ("dpo", "kto") and not cfg.use_lora:
            import copy

            self.reference_unet = copy.deepcopy(unet).requires_grad_(False).to(acc.device, dtype=self.weight_dtype).eval()
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
        unet = self.accelerator.unwrap_model(models.pop()) if models else self.backend.unet
        self.backend.restore_trained(unet, input_dir)
        models.clear()

    # -- data ------------------------------------------------------------------------------------

    def load_data(self) -> tuple[EncodedSet | PairedSet | None, EncodedSet | None]:
        """The feedback mix (human-rated + reward-rated rows, weights w_i; for `reward_ranked` the
        good rows only, for `kto` weights 1 desirable / 0 not, for `dpo` its pairs) and the
        pretraining set, encoded."""
        from .data import (
            load_pairwise_dataset, load_preference_dataset, load_pretrain_dataset, mix_feedback, pairwise_to_preference, preference_pairs,
            reward_ranked_rows,
        )

        cfg = self.config
        feedback = None
        if cfg.weighting != "none":
            human_source, reward_source = cfg.feedback_sources()
            if cfg.pairwise_dataset:  # Audio-Alpaca-schema pairs: chosen rated aligned, rejected not
                human = pairwise_to_preference(load_pairwise_dataset(cfg.pairwise_dataset))
            else:
                human = load_preference_dataset(human_source) if human_source else None
            reward = load_preference_dataset(reward_source) if reward_source else None
            if human is None and reward is None:
                raise FileNotFoundError("no feedback data: feedback_dataset is 'none' and no reward_dataset is there")
            if human is None:
                mixed = reward
            else:
                mixed = mix_feedback(human, reward, cfg.mix_ratio, cfg.seed)
            if cfg.objective == "reward_ranked":  # the plain denoising loss on the best clips only
                keep = reward_ranked_rows(mixed, cfg.reward_threshold, cfg.reward_top_fraction)
                if not keep:
                    raise ValueError(f"reward_ranked: no clip has a weight >= reward_threshold {cfg.reward_threshold}")
                mixed = mixed.select(keep)
            weights = torch.tensor(mixed["reward"], dtype=torch.float32)
            if cfg.weighting == "ones" or cfg.objective == "reward_ranked":
                weights = torch.ones_like(weights)
            elif cfg.objective == "kto":  # desirable (1) or undesirable (0)
                weights = (weights >= cfg.reward_threshold).float()
            pairs = preference_pairs(mixed, cfg.max_pairs_per_caption, cfg.seed, cfg.min_reward_gap) if cfg.objective == "dpo" else None
            if pairs == []:
                raise ValueError("dpo: no caption has both a clip rated aligned and one rated not aligned (min_reward_gap pairs unrated clips too)")
            feedback = self.latent_cache.encode(mixed, weights, "feedback")
            if pairs:
                feedback = PairedSet(feedback.subset([w for w, _ in pairs]), feedback.subset([l for _, l in pairs]))
        pretrain = None
        if cfg.beta > 0 and cfg.pretrain_dataset:
            ds = load_pretrain_dataset(cfg.pretrain_dataset)
            pretrain = self.latent_cache.encode(ds, torch.ones(len(ds)), "pretrain")
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
                text = self.backend.encode_text([data.captions[i] for i in mine.tolist()], self.latent_cache.duration_s)
        return latents.to(acc.device), text.to(acc.device, self.weight_dtype), data.weights[mine].to(acc.device)

    # -- the loss --------------------------------------------------------------------------------

    def _noised(self, latents, text, step, micro, stream, pairs=False):
        """Noise the latents at timesteps from the model's training distribution (drawn over the
        global batch, so the process count does not change them); with `pairs`, the two halves
        of the batch (preferred, rejected) share their noise, timestep and caption dropout.
        Returns (noisy, target, timesteps, text)."""
        acc, backend = self.accelerator, self.backend
        n_local = latents.shape[0] // 2 if pairs else latents.shape[0]
        n_global = n_local * acc.num_processes
        gen = _step_generator(self.config.seed + 1, step * self.config.gradient_accumulation_steps + micro, stream)
        noise = torch.randn((n_global, *latents.shape[1:]), generator=gen)
        timesteps = backend.draw_timesteps(n_global, gen)
        rank = slice(acc.process_index * n_local, (acc.process_index + 1) * n_local)
        noise, timesteps = noise[rank].to(latents.device), timesteps[rank].to(latents.device)
        dropped = (torch.rand(n_global, generator=gen) < self.cfg_dropout)[rank] if self.cfg_dropout > 0 else None
        if pairs:
            noise, timesteps = torch.cat([noise, noise]), torch.cat([timesteps, timesteps])
            dropped = None if dropped is None else torch.cat([dropped, dropped])
        if dropped is not None:  # classifier-free-guidance training: some captions become the null conditioning
            text = self._drop_captions(text, dropped.to(latents.device))
        noisy, target = noised_latents_and_target(backend.objective, latents, noise, timesteps, backend.noise_scheduler)
        return noisy, target, timesteps, text

    def _predict(self, unet, noisy, timesteps, text):
        backend = self.backend
        with self.accelerator.autocast():
            return unet(noisy.to(self.unet_input_dtype), backend.denoiser_timestep(timesteps), **text.unet_kwargs(), **backend.denoiser_kwargs(noisy)).sample

    def _snr(self, timesteps):
        return None if self.snr_mode == "none" else snr_weights(self.backend.noise_scheduler, timesteps, self.config.snr_gamma, self.snr_mode)

    def _noisy_prediction(self, latents, text, step, micro, stream):
        """The denoiser's prediction on freshly noised latents; returns (prediction, target, snr weight or None)."""
        noisy, target, timesteps, text = self._noised(latents, text, step, micro, stream)
        return self._predict(self.unet, noisy, timesteps, text), target, self._snr(timesteps)

    def _model_and_reference_losses(self, latents, text, step, micro, pairs=False, store: ReferenceLosses | None = None):
        """Per-clip denoising losses (times the SNR weight) of the trained model and of the base
        model at the same noise and timestep, for DPO and KTO."""
        noisy, target, timesteps, text = self._noised(latents, text, step, micro, stream=0, pairs=pairs)
        snr = self._snr(timesteps)
        index = step * self.config.gradient_accumulation_steps + micro
        ref = store.get(index, latents.device) if store is not None else None
        if ref is None:
            with torch.no_grad():  # the reference first: switching the adapter back on re-enables its gradients
                if self.reference_unet is not None:
                    ref = per_sample_mse(self._predict(self.reference_unet, noisy, timesteps, text), target)
                else:
                    with self.backend.adapters_disabled(self.accelerator.unwrap_model(self.unet)) as base:
                        ref = per_sample_mse(self._predict(base, noisy, timesteps, text), target)
            if store is not None:
                store.put(index, ref)
        model = per_sample_mse(self._predict(self.unet, noisy, timesteps, text), target)
        if snr is not None:
            model, ref = model * snr.float(), ref * snr.float()
        return model, ref

    def _reference_losses_for(self, feedback: EncodedSet | PairedSet | None) -> ReferenceLosses | None:
        """The disk store of the reference's losses for this data, draw and reference (DPO and KTO;
        `reference_losses.py` says what the key holds)."""
        cfg, acc = self.config, self.accelerator
        if cfg.objective not in ("dpo", "kto") or not cfg.cache_reference_losses or feedback is None:
            return None
        reference = self.reference_unet if self.reference_unet is not None else acc.unwrap_model(self.unet)
        key = {
            "backend": self.backend.fingerprint(), "reference": weights_digest(reference), "data": data_digest(feedback),
            "objective": cfg.objective, "seed": cfg.seed, "batch": cfg.train_batch_size, "accumulation": cfg.gradient_accumulation_steps,
            "processes": acc.num_processes, "rank": acc.process_index, "cfg_dropout": self.cfg_dropout,
            "dtype": str(self.weight_dtype), "input_dtype": str(self.unet_input_dtype), "duration_s": self.latent_cache.duration_s,
        }
        store = ReferenceLosses.for_run(self.latent_cache.folder, key)
        if store.losses:
            acc.print(f"reference losses of {len(store.losses)} micro-steps read from {store.path}")
        return store

    def _preference_term(self, feedback, step, micro):
        """Diffusion-DPO on a batch of pairs, or Diffusion-KTO on a batch of labelled clips."""
        cfg = self.config
        # The store answers for the data it was keyed on only (`train` sets both).
        store = self.reference_losses if feedback is self._reference_losses_data else None
        if cfg.objective == "dpo":
            lat_w, text_w, _ = self._batch(feedback.chosen, step, micro, cfg.train_batch_size, stream=0)
            lat_l, text_l, _ = self._batch(feedback.rejected, step, micro, cfg.train_batch_size, stream=0)  # the same draw: row i against row i
            model, ref = self._model_and_reference_losses(torch.cat([lat_w, lat_l]), TextConditioning.cat([text_w, text_l]), step, micro, pairs=True, store=store)
            n = lat_w.shape[0]
            return dpo_loss(model[:n], model[n:], ref[:n], ref[n:], cfg.beta_dpo)
        latents, text, desirable = self._batch(feedback, step, micro, cfg.train_batch_size, stream=0)
        model, ref = self._model_and_reference_losses(latents, text, step, micro, store=store)
        # The reference point over every process's batch, as the authors all-reduce it.
        reference_point = self.accelerator.reduce((ref - model).detach().mean().reshape(1), reduction="mean")[0].clamp(min=0)
        return kto_loss(model, ref, desirable > 0.5, cfg.beta_kto, cfg.kto_lambda_desirable, cfg.kto_lambda_undesirable, reference_point)

    def _drop_captions(self, text: TextConditioning, dropped: torch.Tensor) -> TextConditioning:
        """`text` with the rows of `dropped` replaced by the backend's null conditioning."""
        if not dropped.any():
            return text
        if self._null_text is None:
            with torch.no_grad():
                self._null_text = self.backend.null_text(self.latent_cache.duration_s)
        both = TextConditioning.cat([text, self._null_text.to(dropped.device, self.weight_dtype)])
        rows = torch.where(dropped, len(text), torch.arange(len(text), device=dropped.device))
        return both[rows]

    @property
    def unet_input_dtype(self) -> torch.dtype:
        return self.weight_dtype if self.config.use_lora else torch.float32

    def training_loss(self, feedback: EncodedSet | PairedSet | None, pretrain: EncodedSet | None, step: int, micro: int):
        """The objective's loss on this step's batch, plus beta times the pretraining term.
        baton (and reward_ranked, its weights all ones on the selected clips), Eq. 7:
        mean_i w_i * snr_i * mse_i over feedback clips + beta * mean_j snr_j * mse_j;
        dpo and kto: `losses.dpo_loss` / `losses.kto_loss` against the base model + the same beta term."""
        cfg = self.config
        if cfg.objective in ("dpo", "kto"):  # the same beta pretraining term on top, for a fair comparison
            loss, logs = self._preference_term(feedback, step, micro)
            if pretrain is not None:
                latents, text, _ = self._batch(pretrain, step, micro, cfg.pretrain_batch_size, stream=1)
                pred_pt, target_pt, snr_pt = self._noisy_prediction(latents, text, step, micro, stream=1)
                mse_pt = per_sample_mse(pred_pt, target_pt) * (1 if snr_pt is None else snr_pt.float())
                loss = loss + cfg.beta * mse_pt.mean()
                logs["loss_pretrain"] = mse_pt.mean().detach().item()
            logs["loss"] = loss.detach().item()
            return loss, logs
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
        if self.reference_losses is not None:  # each rank its own file, no collective
            self.reference_losses.save()
        acc.save_state(str(tmp))  # every rank calls it: a rank-gated save_state hangs DDP/DeepSpeed
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
        state = json.loads((path / "trainer_state.json").read_text())
        self.global_step, self.last_logs = state["global_step"], state.get("logs", {})
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

        from .atomic import atomic_write_json

        cfg, acc = self.config, self.accelerator
        if feedback is None and pretrain is None:
            feedback, pretrain = self.load_data()
        total = self.num_training_steps(feedback, pretrain)
        self.reference_losses, self._reference_losses_data = self._reference_losses_for(feedback), feedback
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
            step_logs: list[dict[str, float]] = []
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
                step_logs.append(logs)
            self.global_step += 1
            self.last_logs = self._mean_over_processes(step_logs)
            bar.update(1)
            bar.set_postfix(loss=f"{self.last_logs['loss']:.4f}")
            if cfg.report_to and self.global_step % cfg.logging_steps == 0:
                acc.log({**self.last_logs, "lr": self.lr_scheduler.get_last_lr()[0]}, step=self.global_step)
            if self.global_step % cfg.checkpointing_steps == 0:
                self.save_checkpoint()
        bar.close()
        if self.reference_losses is not None:
            self.reference_losses.save()
        out = self.export()
        if acc.is_main_process:
            summary = {"global_step": self.global_step, "seconds": round(time.time() - started, 1), "final_loss": self.last_logs.get("loss")}
            atomic_write_json(out / "train_summary.json", summary)
        acc.end_training()
        return out

    def _mean_over_processes(self, step_logs: list[dict[str, float]]) -> dict[str, float]:
        """Each logged value averaged over the step's micro-steps and over every process, as
        diffusers' training scripts log their loss. A collective: every rank calls it each step."""
        keys = sorted(step_logs[0])
        local = torch.tensor([sum(logs[k] for logs in step_logs) / len(step_logs) for k in keys], device=self.accelerator.device)
        return dict(zip(keys, self.accelerator.reduce(local, reduction="mean").tolist()))

    def export(self) -> Path:
        """The trained part (adapter or UNet) in safetensors, with the config and library versions."""
        from .atomic import atomic_write_json
        from .runtime import library_versions

        acc, cfg = self.accelerator, self.config
        out = self.output_dir
        acc.wait_for_everyone()
        if acc.is_main_process:
            self.backend.unet = acc.unwrap_model(self.unet)
            self.backend.save_trained(out, "lora" if cfg.use_lora else "full", base=cfg.model)
            atomic_write_json(out / "finetune_config.json", config_to_dict(cfg))
            atomic_write_json(out / "versions.json", library_versions())
        acc.wait_for_everyone()
        return out
