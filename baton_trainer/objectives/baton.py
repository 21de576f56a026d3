"""BATON's reward-weighted denoising (Liao et al., IJCAI 2024, Eq. 7) and reward-ranked fine-tuning.

    L = (1/B) * sum_i w_i * l_i  +  pretrain_weight * (1/B') * sum_j l_j        (`losses.baton_loss`)

Reward-ranked fine-tuning (RAFT, Dong et al. 2023, arXiv 2304.06767) is the same loss with every
w_i = 1, on the clips whose weight reaches `reward_threshold` (or the best `reward_top_fraction` of
each caption's clips).
"""

from __future__ import annotations

import torch

from ..denoising import FEEDBACK_STREAM
from ..losses import baton_loss
from .base import FeedbackRows, Objective


class BatonObjective(Objective):
    """Eq. 7: each feedback clip's denoising error weighted by its w_i, plus the pretraining term.
    With `weighting: none` the feedback term is left out (the pretraining-term-alone ablation)."""

    name = "baton"
    needs_feedback = False

    def loss(self, denoiser, feedback, pretrain, step, micro):
        draw, cfg = self.draw, self.config
        pred_fb = target_fb = weights = snr_fb = None
        if feedback is not None:
            batch = draw.batch(feedback, step, micro, cfg.train_batch_size, FEEDBACK_STREAM)
            noised = draw.noised(batch, step, micro, FEEDBACK_STREAM)
            pred_fb, target_fb, weights, snr_fb = draw.predict(denoiser, noised), noised.target, batch.weights, draw.snr(noised.timesteps)
        pred_pt = target_pt = snr_pt = None
        noised_pt = self.pretraining_noised(pretrain, step, micro)
        if noised_pt is not None:
            pred_pt, target_pt, snr_pt = draw.predict(denoiser, noised_pt), noised_pt.target, draw.snr(noised_pt.timesteps)
        return baton_loss(pred_fb, target_fb, weights, pred_pt, target_pt, cfg.pretrain_weight, snr_fb, snr_pt)


class RewardRankedObjective(BatonObjective):
    """The plain denoising loss (all w_i = 1) on the best clips only."""

    name = "reward_ranked"
    needs_feedback = True

    def select(self, rated) -> FeedbackRows:
        from ..data import reward_ranked_rows  # here: configs import the objectives, and `datasets` is slow to import

        cfg = self.config
        keep = reward_ranked_rows(rated, cfg.reward_threshold, cfg.reward_top_fraction)
        if not keep:
            raise ValueError(f"reward_ranked: no clip has a weight >= reward_threshold {cfg.reward_threshold}")
        return FeedbackRows(rated.select(keep), torch.ones(len(keep), dtype=torch.float32))
