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

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from reward_hub.rewards import Reward, RewardError, RewardSet, ScoreCache, build_reward, clip_key, register_reward

from .annotation.store import ALIGNED, NOT_ALIGNED, AnnotationStore
from .atomic import atomic_write_bytes
from .audio import save_wav
from .evaluation.event_scores import EventMap, PannsSedDetector, ToyEventDetector, detect_events, score_clips
from .generations import METADATA, read_generations
from .hub import resolve_folder
from .toyworld.oracle import OracleAnnotator, annotate_store


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


class HumanVotesReward(Reward):
    """Live votes on the policy's own clips: each call (one rollout of the online objectives) the
    clips of up to `budget` of its captions, all clips of a caption, the captions picked at random
    (a group's contrast is what an advantage needs), are written to a live annotation campaign in `folder`
    (clips/ + metadata.jsonl, ratings in votes.sqlite) and rated there:

        r = mean of the clip's votes, 1 aligned, 0 not aligned (skips left out)
        r = fallback(clip)   for clips outside the budget or only skipped (e.g. the reward model)

    `annotator`: "oracle" (the toy world's oracle annotator rates at once, with `error_rate` and
    `skip_rate`, standing in for people: the budget is what makes it a fair comparison) or
    "people" (the call waits up to `wait_s` for `ratings_per_clip` votes per clip from the
    annotation app serving the campaign: `python -m baton_trainer annotate --generations_dir
    FOLDER --store FOLDER/votes.sqlite`). Votes are stored as they come, clips are named by their
    content: a killed run finds its votes again and asks nobody twice. Binary votes become
    advantages the way any reward does (group-normalised; KTO/AWM-style for binary data)."""

    name = "human_votes"
    cacheable = False  # which clips get votes depends on the draw; the campaign's store keeps every vote
    sample_rate = 16_000

    def __init__(
        self,
        folder: str,
        budget: int | None = None,
        annotator: str = "oracle",
        fallback: str | dict | None = None,
        ratings_per_clip: int = 1,
        error_rate: float = 0.0,
        skip_rate: float = 0.0,
        seed: int = 0,
        wait_s: float = 3600.0,
        poll_s: float = 5.0,
        device=None,
    ):
        if annotator not in ("oracle", "people"):
            raise ValueError(f"reward 'human_votes': annotator must be 'oracle' or 'people', got {annotator!r}")
        if budget is not None and int(budget) < 1:
            raise ValueError(f"reward 'human_votes': budget is the number of captions whose clips are voted per rollout (>= 1), got {budget!r}")
        self.folder, self.budget, self.annotator = str(folder), None if budget is None else int(budget), annotator
        self.fallback = build_reward(fallback, device=device) if fallback is not None else None
        self.ratings_per_clip, self.error_rate, self.skip_rate, self.seed = int(ratings_per_clip), float(error_rate), float(skip_rate), int(seed)
        self.wait_s, self.poll_s = float(wait_s), float(poll_s)
        self.batch_size = 1 << 30  # one call = one rollout: the budget is spent per rollout, never per batch
        self.event_map: EventMap = ToyEventDetector().event_map()

    def options(self) -> dict:
        fallback = self.fallback.identity() if self.fallback is not None else None
        return {"folder": self.folder, "budget": self.budget, "annotator": self.annotator, "fallback": fallback, "seed": self.seed}

    def _score(self, captions, waves):
        groups: dict[str, list[int]] = {}
        for i, caption in enumerate(captions):
            groups.setdefault(caption, []).append(i)
        keys = [clip_key(c, w, self.sample_rate)[:20] for c, w in zip(captions, waves)]
        digest = int(hashlib.sha256("".join(keys).encode()).hexdigest()[:12], 16)  # the same rollout draws the same groups
        order = list(groups)
        if self.budget is not None and self.budget < len(order):
            picked_at = np.random.default_rng([self.seed, digest]).permutation(len(order))[: self.budget]
            order = [order[i] for i in sorted(picked_at)]
            if self.fallback is None:
                raise RewardError(
                    f"reward 'human_votes': the budget covers {self.budget} of this rollout's {len(groups)} captions; "
                    "give a fallback reward for the rest (e.g. fallback: {name: baton, model: RUN/reward_model}) or a budget of at least the groups"
                )
        picked = [i for caption in order for i in groups[caption]]

        folder = Path(self.folder)
        metadata = folder / METADATA
        rows = {r["clip_id"]: r for r in read_generations(folder)} if metadata.is_file() else {}
        caption_ids = {r["caption"]: int(r["caption_id"]) for r in rows.values()}
        for i in picked:
            if keys[i] in rows:
                continue  # a resumed run: the clip is in the campaign already, with any votes it has
            events, _ = self.event_map.caption_events({"caption": captions[i]})
            labels = [names[0] for names in events] if events else []
            caption_id = caption_ids.setdefault(captions[i], len(caption_ids))
            file_name = f"clips/{keys[i]}.wav"
            save_wav(folder / file_name, waves[i], self.sample_rate)
            rows[keys[i]] = {
                "file_name": file_name,
                "clip_id": keys[i],
                "caption": captions[i],
                "task": "temporal" if len(labels) >= 3 else "integrity",
                "labels": labels,
                "caption_id": caption_id,
                "clip_index": sum(r["caption_id"] == caption_id for r in rows.values()),
            }
        atomic_write_bytes(metadata, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows.values()).encode("utf-8"))
        wanted = [keys[i] for i in picked]
        store = AnnotationStore(folder / "votes.sqlite")
        try:
            store.register_clips(folder)
            if self.annotator == "oracle":
                oracle = OracleAnnotator(error_rate=self.error_rate, skip_rate=self.skip_rate, seed=self.seed + digest % 1000)
                annotate_store(store, folder, annotator="oracle", oracle=oracle, clip_ids=wanted, progress=False)
                votes = self._votes(store, wanted)
            else:
                deadline, told = time.monotonic() + self.wait_s, False
                while True:
                    votes = self._votes(store, wanted)
                    missing = [k for k in wanted if len(votes.get(k, [])) < self.ratings_per_clip]
                    if not missing:
                        break
                    if time.monotonic() > deadline:
                        raise RewardError(
                            f"reward 'human_votes': {len(missing)} of {len(wanted)} clips in {folder} still lack {self.ratings_per_clip} vote(s) "
                            f"after {self.wait_s:g} s; the votes given are kept in {folder / 'votes.sqlite'}: rerun to go on waiting"
                        )
                    if not told:
                        print(
                            f"waiting for votes on {len(missing)} clips: python -m baton_trainer annotate --generations_dir {folder} "
                            f"--store {folder / 'votes.sqlite'} --ratings_per_clip {self.ratings_per_clip}",
                            flush=True,
                        )
                        told = True
                    time.sleep(self.poll_s)
        finally:
            store.close()
        scores = np.full(len(captions), np.nan)
        for i in picked:
            if votes.get(keys[i]):
                scores[i] = float(np.mean(votes[keys[i]]))
        rest = [i for i in range(len(captions)) if np.isnan(scores[i])]
        if rest and self.fallback is not None:
            scores[rest] = self.fallback.score([captions[i] for i in rest], [waves[i] for i in rest], self.sample_rate, clip_indices=rest)
        return scores  # a clip with neither a vote nor a fallback stays NaN: the interface names it

    @staticmethod
    def _votes(store, clip_ids) -> dict[str, list[int]]:
        wanted, votes = set(clip_ids), {}
        for rating in store.ratings(include_skips=False):
            if rating["clip_id"] in wanted and rating["label"] in (ALIGNED, NOT_ALIGNED):
                votes.setdefault(rating["clip_id"], []).append(1 if rating["label"] == ALIGNED else 0)
        return votes


register_reward("human_votes", HumanVotesReward)


def live_votes_defaults(spec, layout):
    """A run's `human_votes` spec with the run's defaults: its campaign in RUN/live_votes, and,
    with a budget, the run's reward model for the clips nobody votes on (as BATON labels the
    clips people did not rate)."""
    if not (spec == "human_votes" or (isinstance(spec, dict) and spec.get("name") == "human_votes")):
        return spec
    spec = {"name": spec} if isinstance(spec, str) else dict(spec)
    spec.setdefault("folder", str(layout.live_votes))
    if spec.get("budget") is not None:
        spec.setdefault("fallback", {"name": "baton", "model": str(layout.reward_model)})
    return spec


def reward_model_spec(layout, batch_size: int) -> dict:
    """The run's reward model (a folder, or a Hub repo fetched to one) as a `baton` reward spec: what
    the label stage and best-of-N score with when no `rewards` are given."""
    return {"name": "baton", "model": str(resolve_folder(layout.reward_model, "reward model")), "batch_size": batch_size}


def run_rewards(specs, layout, device=None, *, cache: bool = True) -> RewardSet:
    """The rewards a stage optimises or selects with: `specs` (names or {name, weight, options},
    docs/rewards.md), by default the run's BATON reward model; each checked to be allowed in
    training (labels, best-of-N picks and online updates all optimise against the reward, so a
    judge may not be one). With `cache`, scores are kept in RUN/cache/reward_scores.jsonl (a
    resumed run, or a second stage on the same clips, scores nothing twice)."""
    default = {"name": "baton", "model": str(layout.reward_model)}
    specs = [live_votes_defaults(spec, layout) for spec in specs or []]
    rewards = RewardSet(specs or [default], device=device, cache=ScoreCache(layout.reward_scores) if cache else None)
    rewards.check_training_allowed()
    return rewards


def training_rewards(config, device=None) -> RewardSet:
    """The fine-tune config's `rewards` for the online objectives (see `run_rewards`)."""
    return run_rewards(config.rewards, config.layout(), device)
