"""The clips an evaluation judges: each model's clips of the same captions under the same seeds
(made by the generate stage, so they resume and never mix settings), and reading them back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..atomic import atomic_write_bytes
from ..audio import load_audio
from ..clap import CLAP_SAMPLE_RATE
from ..generations import read_generations
from .event_scores import ToyEventDetector, event_metrics, score_clips
from .test_captions import load_test_captions

if TYPE_CHECKING:
    from reward_hub.rewards import RewardSet

    from ..layout import RunLayout


def captions_file(captions: str, layout: "RunLayout") -> tuple[Path, str]:
    """The captions to evaluate (`captions`: 'paper', 'heldout' or a file) as a JSONL file the
    generate stage reads, and its split filter."""
    if captions == "paper":
        rows = [{**r, "labels": r.get("labels", []), "split": "heldout"} for r in load_test_captions()]
        path = layout.eval / "captions.jsonl"
        atomic_write_bytes(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())
        return path, "all"
    if captions == "heldout":
        if not layout.captions.is_file():
            raise FileNotFoundError(f"captions=heldout needs {layout.captions} (run the prompts stage first)")
        return layout.captions, "heldout"
    path = Path(captions)
    if not path.is_file():
        raise FileNotFoundError(f"captions file not found: {path}")
    return path, "all"


def best_of_n(
    candidates: Path,
    winners: Path,
    base_rows: list[dict[str, Any]],
    clips_per_caption: int,
    rewards: "RewardSet",
    sample_rate: int,
):
    """Best-of-N, the training-free baseline: for clip k of a caption, the base model's clips k,
    k + C, ..., k + (N - 1) C in the generations folder `candidates` (C = `clips_per_caption`, so
    clip k itself is one of them; seeds as the generate stage derives them), and the one with the
    highest weighted mean of `rewards` (by default the run's reward model). Returns the base rows
    (same clip ids and file names, the winner's seed, candidate id and score) and the winners'
    waveforms; the winners are also written as a generations folder of their own, `winners`
    (RUN/eval/clips/best_of_<N>/)."""

    rows = sorted_rows(candidates)
    waves = read_waves(candidates, rows, CLAP_SAMPLE_RATE)
    scores = rewards.weighted_mean(rewards.score([r["caption"] for r in rows], waves, CLAP_SAMPLE_RATE)).tolist()
    best: dict[tuple[int, int], int] = {}
    for i, r in enumerate(rows):
        key = (int(r["caption_id"]), int(r["clip_index"]) % clips_per_caption)
        if key not in best or scores[i] > scores[best[key]]:
            best[key] = i
    # The winners as a generations folder of their own (clips + metadata.jsonl), to listen to and re-judge.
    (winners / "clips").mkdir(parents=True, exist_ok=True)
    picked_rows, picked_clips, lines = [], [], []
    for base in base_rows:
        i = best[(int(base["caption_id"]), int(base["clip_index"]))]
        winner = rows[i]
        atomic_write_bytes(winners / base["file_name"], (candidates / winner["file_name"]).read_bytes())
        picked_rows.append({**base, "seed": winner["seed"], "candidate": winner["clip_id"], "reward": scores[i]})
        picked_clips.append(load_audio(candidates / winner["file_name"], sample_rate, what=str(candidates / winner["file_name"]))[0])
        lines.append(json.dumps(picked_rows[-1], ensure_ascii=False) + "\n")
    atomic_write_bytes(winners / "metadata.jsonl", "".join(lines).encode())
    return picked_rows, picked_clips


def sorted_rows(folder: Path) -> list[dict[str, Any]]:
    """A generations folder's rows, by caption, then clip."""

    return sorted(read_generations(folder), key=lambda r: (r["caption_id"], r["clip_index"]))


def read_waves(folder: Path, rows: list[dict[str, Any]], sample_rate: int) -> list[np.ndarray]:
    """The rows' clips in `folder` as waveforms at `sample_rate`."""
    return [load_audio(folder / r["file_name"], sample_rate, what=str(folder / r["file_name"]))[0] for r in rows]


def read_clips(folder: Path, sample_rate: int = 16000) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
    """A generations folder's rows (by caption, then clip) and their waveforms at `sample_rate`."""
    rows = sorted_rows(folder)
    return rows, read_waves(folder, rows, sample_rate)


def oracle_metrics(rows: list[dict[str, Any]], clips: list[np.ndarray], sample_rate: int) -> dict[str, float]:
    """Integrity accuracy on 2-label (integrity-task) captions, temporal accuracy on 3-label
    (temporal-task) captions, as the toy world's oracle judges them (through its detector, the
    evaluation's event path), each with its standard error and clip count."""

    metrics = event_metrics(score_clips(ToyEventDetector(), rows, clips, sample_rate))
    return {k: v for k, v in metrics.items() if k.startswith(("integrity_accuracy", "temporal_accuracy"))}
