"""Fine-tuning objectives, one class each, on the contract of `objectives.base.Objective`.

    baton          BATON's reward-weighted denoising (Eq. 7)          objectives/baton.py
    reward_ranked  the plain loss on the best clips (RAFT)            objectives/baton.py
    dpo            Diffusion-DPO on (aligned, not aligned) pairs      objectives/preference.py
    kto            Diffusion-KTO on per-clip labels                   objectives/preference.py

A new objective: a subclass of `Objective` with a `name` and a `loss`, added to `OBJECTIVES`.
"""

from __future__ import annotations

from .base import FeedbackRows, Objective
from .baton import BatonObjective, RewardRankedObjective
from .preference import DPOObjective, KTOObjective

OBJECTIVES: dict[str, type[Objective]] = {cls.name: cls for cls in (BatonObjective, DPOObjective, KTOObjective, RewardRankedObjective)}


def build_objective(config) -> Objective:
    """The objective `config.objective` names, built from the fine-tune config."""
    try:
        cls = OBJECTIVES[config.objective]
    except KeyError:
        raise ValueError(f"unknown objective {config.objective!r} (known: {', '.join(OBJECTIVES)})") from None
    return cls(config)


__all__ = ["OBJECTIVES", "FeedbackRows", "Objective", "build_objective"]
