"""Objectives that learn from the ratings against the base model: Diffusion-DPO on (aligned, not
aligned) pairs of one caption, Diffusion-KTO on per-clip desirable / undesirable labels
(docs/method.md, "Other objectives on the same ratings"; the equations are in `losses.dpo_loss` and `losses.kto_loss`).

Both compare the trained model's per-clip error with the reference's at the same noise and
timestep (`ReferenceModel`), and add BATON's pretraining term on top for a fair comparison.
"""

from __future__ import annotations

import torch

from ..backends.base import TextConditioning
from ..denoising import FEEDBACK_STREAM, Batch
from ..losses import dpo_loss, kto_loss
from .base import FeedbackRows, Objective
from .reference import ReferenceModel


class ReferenceObjective(Objective):
    """An objective with a reference model and the disk store of its losses."""

    def attach(self, denoiser, draw):
        super().attach(denoiser, draw)
        self.reference = ReferenceModel(denoiser, draw, self.config.use_lora, self.config.offload_copies)

    def begin(self, denoiser, feedback):
        cfg, draw = self.config, self.draw
        if not cfg.cache_reference_losses or feedback is None:
            return
        acc = draw.accelerator
        key = {
            "backend": draw.backend.fingerprint(),
            "objective": self.name,
            "seed": cfg.seed,
            "batch": cfg.train_batch_size,
            "accumulation": cfg.gradient_accumulation_steps,
            "processes": acc.num_processes,
            "rank": acc.process_index,
            "cfg_dropout": draw.cfg_dropout,
            "dtype": str(draw.weight_dtype),
            "input_dtype": str(draw.input_dtype),
            "duration_s": draw.duration_s,
        }
        self.reference.open_store(feedback, acc.unwrap_model(denoiser), key, cfg.layout().cache)

    def save(self):
        self.reference.save()

    def model_and_reference_errors(self, denoiser, batch: Batch, feedback, step: int, micro: int, pairs: bool = False):
        """SNR-weighted per-clip errors of the trained model and of the reference on one draw."""
        draw = self.draw
        noised = draw.noised(batch, step, micro, FEEDBACK_STREAM, pairs=pairs)
        ref = self.reference.errors(denoiser, noised, feedback, draw.micro_index(step, micro))
        model = draw.errors(denoiser, noised)
        snr = draw.snr(noised.timesteps)
        return model, (ref if snr is None else ref * snr.float())


class DPOObjective(ReferenceObjective):
    """Diffusion-DPO (Wallace et al. 2023) on every (aligned, not aligned) pair of a caption."""

    name = "dpo"

    def select(self, rated) -> FeedbackRows:
        from ..data import preference_pairs  # here: configs import the objectives, and `datasets` is slow to import

        cfg = self.config
        rows = super().select(rated)
        pairs = preference_pairs(rated, cfg.max_pairs_per_caption, cfg.seed, cfg.min_reward_gap)
        if not pairs:
            raise ValueError("dpo: no caption has both a clip rated aligned and one rated not aligned (min_reward_gap pairs unrated clips too)")
        return FeedbackRows(rows.dataset, rows.weights, pairs)

    def loss(self, denoiser, feedback, pretrain, step, micro):
        draw, cfg = self.draw, self.config
        chosen = draw.batch(feedback.chosen, step, micro, cfg.train_batch_size, FEEDBACK_STREAM)
        rejected = draw.batch(feedback.rejected, step, micro, cfg.train_batch_size, FEEDBACK_STREAM)  # the same draw: row i against row i
        both = Batch(
            torch.cat([chosen.latents, rejected.latents]), TextConditioning.cat([chosen.text, rejected.text]), torch.cat([chosen.weights, rejected.weights])
        )
        model, ref = self.model_and_reference_errors(denoiser, both, feedback, step, micro, pairs=True)
        n = chosen.latents.shape[0]
        loss, logs = dpo_loss(model[:n], model[n:], ref[:n], ref[n:], cfg.dpo_beta)
        return self.with_pretraining(loss, logs, denoiser, pretrain, step, micro)


class KTOObjective(ReferenceObjective):
    """Diffusion-KTO (Li et al. 2024) on each clip: desirable when its weight >= reward_threshold."""

    name = "kto"

    def select(self, rated) -> FeedbackRows:
        rows = super().select(rated)
        if self.config.weighting != "ones":  # desirable (1) or undesirable (0)
            rows.weights = (rows.weights >= self.config.reward_threshold).float()
        return rows

    def loss(self, denoiser, feedback, pretrain, step, micro):
        draw, cfg = self.draw, self.config
        batch = draw.batch(feedback, step, micro, cfg.train_batch_size, FEEDBACK_STREAM)
        model, ref = self.model_and_reference_errors(denoiser, batch, feedback, step, micro)
        # The reference point over every process's batch, as the authors all-reduce it.
        reference_point = draw.accelerator.reduce((ref - model).detach().mean().reshape(1), reduction="mean")[0].clamp(min=0)
        loss, logs = kto_loss(model, ref, batch.weights > 0.5, cfg.kto_beta, cfg.kto_lambda_desirable, cfg.kto_lambda_undesirable, reference_point)
        return self.with_pretraining(loss, logs, denoiser, pretrain, step, micro)
