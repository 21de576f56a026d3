"""The trainer's side of the reward interface (`reward_hub.rewards`, docs/rewards.md): the rewards
that need this package (the toy world's oracle, the event detector's `events`), and the rewards
a run's stages optimise or select with.

    rewards = run_rewards(config.rewards, layout, device)  # a RewardSet; default the run's BATON reward model
    parts = rewards.score(captions, waves, sample_rate)    # {"baton": (N,), ...}: online objectives combine these
    values = rewards.weighted_mean(parts)                  # labels and best-of-N picks

The toy oracle is registered as a reward so that it can judge (`eval_rewards`), and refused as a
training reward: a model trained on the judge can no longer be judged by it.
"""

from __future__ import annotations

import numpy as np

from reward_hub.rewards import Reward, RewardError, RewardSet, ScoreCache, register_reward

from .evaluation.event_scores import EventMap, PannsSedDetector, ToyEventDetector, detect_events, score_clips


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


class EventsReward(Reward):
    """Presence and order of the caption's events, from a sound event detector (the evaluation's
    event path, docs/evaluation.md): with k >= 1 events named in the caption and p of them
    detected,

        r = p / k                                            (order off, or one event)
        r = 0.5 * p / k + 0.5 * [all present, onsets in the caption's order]   (order on)

    so a clip earns partial credit for each event it has (a group of clips that all miss one
    event still has a gradient) and the full score only for "every event, in the asked order".

    `detector`: "panns" (Cnn14_DecisionLevelMax; `checkpoint` is the file or a folder holding it)
    or "toy" (the toy world's oracle detector: as a training reward it would train on the judge,
    so with "toy" the reward may only judge). A caption whose events the detector's map cannot
    name has no score: the run stops naming the clip rather than scoring it 0."""

    name = "events"
    batch_size = 16

    def __init__(self, detector: str = "panns", checkpoint: str | None = None, order: bool = True, device=None, batch_size: int = 16):
        if detector == "toy":
            self.detector = ToyEventDetector()
            self.sample_rate = self.detector.oracle.sample_rate
            self.training_allowed = False
        elif detector == "panns":
            self.detector = PannsSedDetector.from_checkpoint(checkpoint, device=device)
            self.sample_rate = self.detector.model.config.sample_rate
        else:
            raise ValueError(f"reward 'events': unknown detector {detector!r} (choose 'panns' or 'toy')")
        self.detector_name, self.checkpoint, self.order = detector, checkpoint, bool(order)
        self.batch_size = int(batch_size)
        self.thresholds = self.detector.thresholds()
        self.event_map: EventMap = self.detector.event_map()

    def options(self) -> dict:
        return {"detector": self.detector_name, "checkpoint": self.checkpoint, "order": self.order}

    def _score(self, captions, waves):
        detector, thresholds = self.detector, self.thresholds
        scores = []
        for caption, probs in zip(captions, detector.frame_probabilities(waves, self.sample_rate)):
            events, why = self.event_map.caption_events({"caption": caption})
            if not events:
                raise RewardError(f"reward 'events': caption {caption!r}: {why or 'no event named'}; the detector cannot score it")
            first: dict[str, float] = {}
            for name, onset, _ in detect_events(probs, detector.frame_s, detector.classes, thresholds.presence, thresholds):
                first.setdefault(name, onset)
            onsets = [min((first[c] for c in classes if c in first), default=None) for classes in events]
            present = sum(o is not None for o in onsets) / len(events)
            if not self.order or len(events) < 2:
                scores.append(present)
                continue
            in_order = present == 1.0 and all(b - a >= thresholds.order_margin_s for a, b in zip(onsets, onsets[1:]))
            scores.append(0.5 * present + 0.5 * float(in_order))
        return np.asarray(scores, dtype=np.float64)


register_reward("events", EventsReward)


def run_rewards(specs, layout, device=None, *, cache: bool = True) -> RewardSet:
    """The rewards a stage optimises or selects with: `specs` (names or {name, weight, options},
    docs/rewards.md), by default the run's BATON reward model; each checked to be allowed in
    training (labels, best-of-N picks and online updates all optimise against the reward, so a
    judge may not be one). With `cache`, scores are kept in RUN/cache/reward_scores.jsonl (a
    resumed run, or a second stage on the same clips, scores nothing twice)."""
    default = {"name": "baton", "model": str(layout.reward_model)}
    rewards = RewardSet(specs or [default], device=device, cache=ScoreCache(layout.cache / "reward_scores.jsonl") if cache else None)
    rewards.check_training_allowed()
    return rewards


def training_rewards(config, device=None) -> RewardSet:
    """The fine-tune config's `rewards` for the online objectives (see `run_rewards`)."""
    return run_rewards(config.rewards, config.layout(), device)
