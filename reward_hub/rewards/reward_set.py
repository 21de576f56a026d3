"""A weighted list of rewards scored together, each clip scored once per reward (with a cache).

    rewards = RewardSet([{"name": "baton", "model": "RUN/reward_model", "weight": 1.0},
                         {"name": "clap", "weight": 0.5}], cache=ScoreCache("RUN/scores.jsonl"))
    parts = rewards.score(captions, waves, 16000)        # {"baton": (N,), "clap": (N,)}
    total = combine(parts, rewards.weight_map(), groups, "per_reward")

Per-reward raw values are returned (and cached) so that they can be logged and stored with each
clip; combining them is a separate, cheap step.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .base import Reward, RewardError, check_inputs, check_scores, describe_clips
from .cache import ScoreCache, clip_key
from .registry import build_reward, parse_spec


class RewardSet:
    """`rewards[k]` with `weights[k]`, from specs ("clap", {"name": ..., "weight": w, **options})
    or ready `Reward` objects (weight 1). Keys of `score` are reward names, "name#2" for the
    second reward of the same name."""

    def __init__(self, specs: Sequence[str | dict | Reward], device=None, cache: ScoreCache | None = None):
        self.rewards: list[Reward] = []
        self.weights: list[float] = []
        for spec in specs:
            if isinstance(spec, Reward):
                reward, weight = spec, 1.0
            else:
                parse_spec(spec)  # a malformed spec fails before any model loads
                reward, weight = build_reward(spec, device=device), float(spec.get("weight", 1.0)) if isinstance(spec, dict) else 1.0
            if not np.isfinite(weight):
                raise ValueError(f"RewardSet: reward {reward.name!r} has weight {weight!r}; weights must be finite numbers")
            self.rewards.append(reward)
            self.weights.append(weight)
        if not self.rewards:
            raise ValueError("RewardSet: no rewards given")
        self.keys = self._unique_keys([reward.name for reward in self.rewards])
        self.cache = cache

    @staticmethod
    def _unique_keys(names: list[str]) -> list[str]:
        seen: dict[str, int] = {}
        keys = []
        for name in names:
            seen[name] = seen.get(name, 0) + 1
            keys.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
        return keys

    def weight_map(self) -> dict[str, float]:
        return dict(zip(self.keys, self.weights))

    def weighted_mean(self, parts: dict[str, np.ndarray]) -> np.ndarray:
        """sum_k w_k r_k / sum_k w_k per clip: one value on the rewards' own scale (for a label or a
        best-of-N pick, where nothing is group-normalised), from the per-reward `parts` of `score`."""
        total = sum(self.weights)
        if total == 0:
            raise ValueError(f"RewardSet: the weights of {self.keys} sum to 0; a weighted mean needs a non-zero sum")
        return sum(weight * np.asarray(parts[key], dtype=np.float64) for key, weight in zip(self.keys, self.weights)) / total

    def describe(self) -> str:
        """ "baton" or "0.5 baton + 0.5 events", for reports and dataset columns."""
        if len(self.keys) == 1:
            return self.keys[0]
        total = sum(self.weights)
        return " + ".join(f"{weight / total:.3g} {key}" for key, weight in zip(self.keys, self.weights))

    def check_training_allowed(self) -> None:
        """Raise if a reward here may only judge (e.g. the toy oracle), naming it."""
        for key, reward in zip(self.keys, self.rewards):
            if not reward.training_allowed:
                raise RewardError(
                    f"reward {key!r} is an evaluation judge only and cannot be a training reward: optimising against it would make it useless as a judge; move it to eval_rewards"
                )

    def score(self, captions: Sequence[str], waves: Sequence[Any], sample_rate: int) -> dict[str, np.ndarray]:
        """Per-reward raw scores, float64 (N,) each, keyed as `keys`."""
        captions, clips = check_inputs("reward set", captions, waves, sample_rate)
        clip_keys = [clip_key(caption, clip, sample_rate) for caption, clip in zip(captions, clips)] if self.cache is not None else None
        return {key: self._score_one(reward, captions, clips, int(sample_rate), clip_keys) for key, reward in zip(self.keys, self.rewards)}

    def _score_one(self, reward: Reward, captions: list[str], clips: list[np.ndarray], sample_rate: int, clip_keys: list[str] | None) -> np.ndarray:
        if self.cache is None or not getattr(reward, "cacheable", True):  # a groupwise score depends on the group
            return reward.score(captions, clips, sample_rate)
        try:
            identity = reward.identity()  # a remote reward asks its server which model it runs
        except RewardError as exc:
            raise RewardError(f"{exc} ({describe_clips(range(len(clips)))})") from None
        values = np.full(len(clips), np.nan)
        missing = []
        for i, key in enumerate(clip_keys):
            cached = self.cache.get(key, identity)
            if cached is None:
                missing.append(i)
            else:
                values[i] = cached
        # Score and store one batch at a time: a failure (a server that goes down) keeps every
        # batch already scored, and the resumed run starts from the first missing clip.
        step = max(1, int(reward.batch_size))
        for start in range(0, len(missing), step):
            batch = missing[start : start + step]
            scores = reward.score([captions[i] for i in batch], [clips[i] for i in batch], sample_rate, clip_indices=batch)
            self.cache.put_many((clip_keys[i], identity, value) for i, value in zip(batch, scores))
            values[batch] = scores
        return check_scores(reward.name, values, range(len(clips)))
