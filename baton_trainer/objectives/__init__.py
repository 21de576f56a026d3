"""Fine-tuning objectives, one class each, on the contract of `objectives.base.Objective`.

    baton          BATON's reward-weighted denoising (Eq. 7)          objectives/baton.py
    reward_ranked  the plain loss on the best clips (RAFT)            objectives/baton.py
    dpo            Diffusion-DPO on (aligned, not aligned) pairs      objectives/preference.py
    kto            Diffusion-KTO on per-clip labels                   objectives/preference.py
    grpo           GRPO on the sampler's Gaussian steps (online)      objectives/online.py
    awm            Advantage Weighted Matching (online)               objectives/online.py
    nft            DiffusionNFT (online)                              objectives/online.py

A new objective: a subclass of `Objective` with a `name` and a `loss`, added to `OBJECTIVES`.
"""

from __future__ import annotations

from .base import FeedbackRows, Objective
from .baton import BatonObjective, RewardRankedObjective
from .online import AWMObjective, GRPOObjective, NFTObjective
from .preference import DPOObjective, KTOObjective

OBJECTIVES: dict[str, type[Objective]] = {
    cls.name: cls for cls in (BatonObjective, DPOObjective, KTOObjective, RewardRankedObjective, GRPOObjective, AWMObjective, NFTObjective)
}


def build_objective(config) -> Objective:
    """The objective `config.objective` names, built from the fine-tune config."""
    try:
        cls = OBJECTIVES[config.objective]
    except KeyError:
        raise ValueError(f"unknown objective {config.objective!r} (known: {', '.join(OBJECTIVES)})") from None
    return cls(config)


__all__ = ["OBJECTIVES", "FeedbackRows", "Objective", "build_objective"]
