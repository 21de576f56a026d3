"""What the `run` stage does differently in the toy world: it renders the world's own inputs, lets
the oracle rate clips as people would (through the same annotation store), and has the noise-free
oracle check every reward label."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..annotation.store import AnnotationStore
from ..atomic import atomic_write_bytes, atomic_write_json
from ..audio import load_audio, save_wav, wav_bytes
from ..data import PRETRAIN_FEATURES, build_dataset, load_preference_dataset, save_dataset_atomic
from ..generations import read_generations
from ..layout import RunLayout
from ..reward_training import plot_reward_histogram
from .events import EVENT_NAMES
from .oracle import OracleAnnotator, alignment_outcomes, annotate_store
from .render import PRETRAIN_WORLD, iter_dataset

WORLD_KEYS = ("order_noise", "event_dropout", "pair_event_dropout", "gap_concentration")


def model_world(model: str | Path) -> dict[str, Any]:
    """The loose world a shipped toy model learned from, as its `training_report.json` records it
    (`render.PRETRAIN_WORLD` for a model without one), so that the pretraining term keeps the model close
    to its own pretraining data."""

    world = dict(PRETRAIN_WORLD)
    report = Path(model) / "training_report.json"
    if report.is_file():
        args = json.loads(report.read_text(encoding="utf-8")).get("args", {})
        world.update({k: args[k] for k in WORLD_KEYS if args.get(k) is not None})
    return world


def write_toy_inputs(layout: RunLayout, model: str, pretrain_clips: int, reference_clips: int, seed: int) -> None:
    """The toy world's label vocabulary, rendered pretraining clips (the pretraining term's data) and
    reference clips (for FD) from the world the model learned from, each written once."""

    world = model_world(model)

    if not layout.toy_labels.is_file():
        atomic_write_bytes(layout.toy_labels, ("# the toy world's sound events (baton_trainer.toyworld.events)\n" + "\n".join(EVENT_NAMES) + "\n").encode())
    duration = float(json.loads((Path(model) / "model_index.json").read_text(encoding="utf-8")).get("duration_s", 2.56))
    if not layout.pretrain.is_dir():
        items = list(iter_dataset(pretrain_clips, seed=seed + 7, duration_s=duration, **world))
        columns = {
            "caption": [i["caption"] for i in items],
            "audio": [{"bytes": wav_bytes(i["audio"], 16000), "path": f"pretrain_{i['index']}.wav"} for i in items],
        }
        save_dataset_atomic(build_dataset(columns, PRETRAIN_FEATURES), layout.pretrain)
    if not (layout.reference / "done").is_file():
        for item in iter_dataset(reference_clips, seed=seed + 11, duration_s=duration, **world):
            save_wav(layout.reference / f"reference_{item['index']:05d}.wav", item["audio"], 16000)
        (layout.reference / "done").write_text("rendered\n")


def oracle_ratings(layout: RunLayout, rated_fraction: float, rate_by: str, error_rate: float, skip_rate: float, seed: int) -> dict[str, int]:
    """The oracle rates a seeded share of the clips (`rate_by` "clip"), or every clip of a share
    of the captions ("caption": reward labels then reach captions nobody rated)."""

    rows = read_generations(layout.generations)
    unit = "caption_id" if rate_by == "caption" else "clip_id"
    units = sorted({r[unit] for r in rows})
    picked = np.random.default_rng(seed).permutation(len(units))[: int(round(rated_fraction * len(units)))]
    chosen = {units[i] for i in picked}
    clip_ids = sorted(r["clip_id"] for r in rows if r[unit] in chosen)
    store = AnnotationStore(layout.annotations)
    try:
        oracle = OracleAnnotator(error_rate=error_rate, skip_rate=skip_rate, seed=seed)
        return annotate_store(store, layout.generations, annotator="oracle", oracle=oracle, clip_ids=clip_ids)
    finally:
        store.close()


def oracle_ratings_of(generations: Path, store_path: Path, count: int, error_rate: float, skip_rate: float, seed: int) -> dict[str, int]:
    """The oracle rates `count` seeded clips of a generations folder into the store at `store_path`
    (an online round's rating budget); clips it already rated are not asked again."""

    clip_ids = sorted(r["clip_id"] for r in read_generations(generations))
    picked = sorted(clip_ids[i] for i in np.random.default_rng(seed).permutation(len(clip_ids))[:count])
    store = AnnotationStore(store_path)
    try:
        return annotate_store(
            store, generations, annotator="oracle", oracle=OracleAnnotator(error_rate=error_rate, skip_rate=skip_rate, seed=seed), clip_ids=picked
        )
    finally:
        store.close()


def check_reward_labels(layout: RunLayout) -> dict[str, Any]:
    """The noise-free oracle judges every clip the reward model labelled (none of which it was
    trained on), the largest held-out test a reward model gets here.

    Writes RUN/reward_labeled_oracle (the same rows with the oracle's 1/0 as their reward: the
    benchmark's `oracle_rewards` diagnostic trains on it), RUN/reward_label_check.json (accuracy
    of reward > 0.5, and the share of the rows' total reward that sits on misaligned clips, the
    part of the reward-weighted loss that teaches the wrong thing; overall and by task) and
    RUN/reward_label_check.png (the rewards by the oracle's answer).
    """

    out, report, plot = layout.reward_labeled_oracle, layout.reward_label_check, layout.reward_label_check_plot
    ds = load_preference_dataset(layout.reward_labeled)
    labels_digest = hashlib.sha256(json.dumps([list(ds["caption"]), list(ds["reward"])]).encode()).hexdigest()[:16]
    if out.is_dir() and report.is_file() and plot.is_file():
        done = json.loads(report.read_text())
        if done.get("reward_labels") == labels_digest:  # else the reward labels were made again: judge them again
            return done
    audio = ds.with_format("arrow")["audio"].to_pylist()
    wavs = [load_audio(a, 16000, what=f"reward_labeled row {i}")[0] for i, a in enumerate(audio)]
    truth = alignment_outcomes(wavs, ds["labels"], ds["task"])
    rewards = list(ds["reward"])

    def summary(rows: list[int]) -> dict[str, Any]:
        total = sum(rewards[i] for i in rows)
        return {
            "clips": len(rows),
            "accuracy": sum((rewards[i] > 0.5) == truth[i] for i in rows) / len(rows) if rows else None,
            "aligned_share": sum(truth[i] for i in rows) / len(rows) if rows else None,
            "reward_share_on_misaligned": sum(rewards[i] for i in rows if not truth[i]) / total if total > 0 else None,
        }

    result = {
        "reward_labels": labels_digest,
        **summary(list(range(len(ds)))),
        "by_task": {task: summary([i for i, t in enumerate(ds["task"]) if t == task]) for task in sorted(set(ds["task"]))},
    }
    save_dataset_atomic(ds.map(lambda _, i: {"reward": float(truth[i]), "feedback": int(truth[i])}, with_indices=True), out, allow_empty=True)
    plot_reward_histogram(np.array(rewards), np.array(truth, dtype=int), plot, title=f"Reward labels on the {len(ds)} clips nobody rated", judge="oracle")
    atomic_write_json(report, result)
    return result
