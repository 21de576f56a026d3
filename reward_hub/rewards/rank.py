"""`rank`: any reward turned groupwise, each clip scored by its rank within its caption's group."""

from __future__ import annotations

import numpy as np

from .base import GroupwiseReward
from .registry import build_reward


class RankReward(GroupwiseReward):
    """The clips of a caption ranked by the reward `of` (a spec, as in a rewards list):

        r_i = (rank of clip i among the group's G clips, from 0 for the lowest) / (G - 1)

    ties sharing their mean rank, a group of one scoring 1/2. Only the order within the group is
    kept, so a reward with a wide or drifting scale (a CLAP cosine, an LLM judge's P(yes)) weighs
    no more than one in [0, 1] when combined, and a reward that moves every clip of a caption
    together (the caption is easy) gives no signal, as a group-normalised advantage would not."""

    name = "rank"

    def __init__(self, of: str | dict, device=None, batch_size: int | None = None):
        self.inner = build_reward(of, device=device)
        self.name = f"rank({self.inner.name})"
        self.sample_rate = self.inner.sample_rate
        self.training_allowed = self.inner.training_allowed
        self.batch_size = batch_size or self.inner.batch_size

    def _score_group(self, caption, waves):
        values = self.inner.score([caption] * len(waves), waves, self.sample_rate)
        if len(values) == 1:
            return [0.5]
        unique, inverse = np.unique(values, return_inverse=True)
        order = np.argsort(values, kind="stable")
        ranks = np.empty(len(values))
        ranks[order] = np.arange(len(values))
        mean_rank = np.bincount(inverse, weights=ranks) / np.bincount(inverse)  # ties share their mean rank
        return mean_rank[inverse] / (len(values) - 1)

    def options(self) -> dict:
        return {"of": self.inner.identity()}
