"""Rewards for text-to-audio alignment behind one interface (`Reward.score`), by name.

    from reward_hub.rewards import build_reward, RewardSet, ScoreCache, combine
    clap = build_reward({"name": "clap", "model": "laion/clap-htsat-unfused"})
    clap.score(["a dog barks"], [wave], sample_rate=16000)      # float64 (1,)

Built in: baton (BATON reward model), clap (CLAP cosine), lalm_judge (audio-language model's
P(yes)), remote (HTTP, served by `python -m reward_hub.serve`), aesthetics (Audiobox Aesthetics,
optional package), rank (any of them as ranks within a caption's group: a `GroupwiseReward`). The trainer registers its own (event detector, toy oracle) with
`register_reward`. Like the rest of reward_hub this needs torch, numpy, soxr and transformers only.
"""

from __future__ import annotations

from .aesthetics import AestheticsReward
from .base import GroupwiseReward, Reward, RewardError
from .baton import BatonReward
from .cache import ScoreCache, clip_key
from .clap import ClapReward
from .combine import AGGREGATIONS, combine, group_normalise
from .lalm_judge import LalmJudgeReward
from .rank import RankReward
from .registry import REWARDS, build_reward, register_reward
from .remote import RemoteReward
from .reward_set import RewardSet

register_reward("baton", BatonReward)
register_reward("clap", ClapReward)
register_reward("lalm_judge", LalmJudgeReward)
register_reward("remote", RemoteReward)
register_reward("aesthetics", AestheticsReward)
register_reward("rank", RankReward)

__all__ = [
    "AGGREGATIONS",
    "REWARDS",
    "AestheticsReward",
    "BatonReward",
    "ClapReward",
    "GroupwiseReward",
    "LalmJudgeReward",
    "RankReward",
    "RemoteReward",
    "Reward",
    "RewardError",
    "RewardSet",
    "ScoreCache",
    "build_reward",
    "clip_key",
    "combine",
    "group_normalise",
    "register_reward",
]
