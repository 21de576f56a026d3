"""The trainer's side of the reward interface (`reward_hub.rewards`, docs/rewards.md): the rewards
that need this package (the toy world's oracle), and the training rewards of a fine-tune run.

    rewards = training_rewards(finetune_config, device)   # a RewardSet; its scores cached in the run
    parts = rewards.score(captions, waves, sample_rate)   # {"baton": (N,), ...}

The toy oracle is registered as a reward so that it can judge (`eval_rewards`), and refused as a
training reward: a model trained on the judge can no longer be judged by it.
"""

from __future__ import annotations

import numpy as np

from reward_hub.rewards import Reward, RewardSet, ScoreCache, register_reward

from .evaluation.event_scores import ToyEventDetector, score_clips


class ToyOracleReward(Reward):
    """The toy world's oracle, clip by clip: 1 when every event of the caption is there and, for
    3-event (temporal-task) captions, in the asked order; else 0. An evaluation judge only."""

    name = "oracle"
    training_allowed = False
    batch_size = 64

    def __init__(self, device=None):
        self.detector = ToyEventDetector()
        self.sample_rate = self.detector.oracle.sample_rate

    def _score(self, captions, waves):
        rows = []
        for caption in captions:
            events, _ = self.detector.event_map().caption_events({"caption": caption})
            rows.append({"caption": caption, "task": "temporal" if events is not None and len(events) >= 3 else "integrity"})
        scores = score_clips(self.detector, rows, waves, self.sample_rate)
        if scores.unscored:
            return np.full(len(captions), np.nan)  # named by the interface: the caption's events are not the toy world's
        return np.asarray([float(c["presence"] and c["order"] is not False) for c in scores.per_clip])


register_reward("oracle", ToyOracleReward)


def training_rewards(config, device=None) -> RewardSet:
    """The fine-tune config's `rewards` (default: the run's BATON reward model), each checked to
    be allowed in training, scores cached in RUN/cache/reward_scores (a resumed run or a second
    objective on the same clips scores nothing twice)."""
    layout = config.layout()
    specs = config.rewards or [{"name": "baton", "model": str(layout.reward_model)}]
    rewards = RewardSet(specs, device=device, cache=ScoreCache(layout.cache / "reward_scores.jsonl"))
    rewards.check_training_allowed()
    return rewards
