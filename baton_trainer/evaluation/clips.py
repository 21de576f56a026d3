"""The clips an evaluation judges: each model's clips of the same captions under the same seeds
(made by the generate stage, so they resume and never mix settings), and reading them back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..atomic import atomic_write_bytes
from ..audio import load_audio

if TYPE_CHECKING:
    from ..layout import RunLayout
    from ..stages.evaluate import EvaluateConfig


def captions_file(config: "EvaluateConfig", layout: "RunLayout") -> tuple[Path, str]:
    """The captions to evaluate as a JSONL file the generate stage reads, and its split filter."""
    if config.captions == "paper":
        from .test_captions import load_test_captions

        rows = [{**r, "labels": r.get("labels", []), "split": "heldout"} for r in load_test_captions()]
        path = layout.eval / "captions.jsonl"
        atomic_write_bytes(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())
        return path, "all"
    if config.captions == "heldout":
        if not layout.captions.is_file():
            raise FileNotFoundError(f"captions=heldout needs {layout.captions} (run the prompts stage first)")
        return layout.captions, "heldout"
    path = Path(config.captions)
    if not path.is_file():
        raise FileNotFoundError(f"captions file not found: {path}")
    return path, "all"


def generate_clips(config: "EvaluateConfig", captions: Path, split: str, out: Path, export: str | None, backend=None) -> Path:
    """One model's clips (base: `export` None) of the evaluation captions, in `out`."""
    from ..stages.generate import GenerateConfig, generate

    gen = GenerateConfig(
        run_dir=config.run_dir,
        model=config.model,
        export=export,
        captions_file=str(captions),
        out_dir=str(out),
        split=split,
        clips_per_caption=config.clips_per_caption,
        num_inference_steps=config.num_inference_steps,
        guidance_scale=config.guidance_scale,
        duration_s=config.duration_s,
        sampler=config.sampler,
        batch_size=config.batch_size,
        seed=config.seed,
        device=config.device,
        dtype=config.dtype,
    )
    return generate(gen, backend=backend)


def best_of_candidates(config: "EvaluateConfig", layout: "RunLayout", captions: Path, split: str, backend=None) -> Path:
    """The base model's N clips per evaluated clip that best-of-N picks from (the generate stage's folder)."""
    import dataclasses

    wider = dataclasses.replace(config, clips_per_caption=config.clips_per_caption * config.best_of)
    return generate_clips(wider, captions, split, layout.eval / "clips" / f"best_of_{config.best_of}_candidates", None, backend)


def best_of_n(config: "EvaluateConfig", layout: "RunLayout", captions: Path, split: str, base_rows: list[dict[str, Any]], sample_rate: int, backend=None):
    """Best-of-N, the training-free baseline: for clip k of a caption, the base model's clips k,
    k + C, ..., k + (N - 1) C (C clips per caption, so clip k itself is one of them; seeds as the
    generate stage derives them), and the one the run's reward model scores highest. Returns the
    base rows (same clip ids and file names, the winner's seed, candidate id and score) and the
    winners' waveforms; the winners are also written as `RUN/eval/clips/best_of_<N>/`."""
    from ..clap import CLAP_SAMPLE_RATE

    per_caption, n = config.clips_per_caption, config.best_of
    if not layout.reward_model.exists() and config.reward_model is None:
        raise FileNotFoundError(f"best_of {n} needs the run's reward model: {layout.reward_model} not found (run the reward stage, or --reward_model)")
    folder = best_of_candidates(config, layout, captions, split, backend)
    rows = sorted_rows(folder)
    model = load_scorer(layout.reward_model, "reward model", config.device)
    scores = model.score([r["caption"] for r in rows], read_waves(folder, rows, CLAP_SAMPLE_RATE), CLAP_SAMPLE_RATE, batch_size=config.batch_size).tolist()
    best: dict[tuple[int, int], int] = {}
    for i, r in enumerate(rows):
        key = (int(r["caption_id"]), int(r["clip_index"]) % per_caption)
        if key not in best or scores[i] > scores[best[key]]:
            best[key] = i
    # The winners as a generations folder of their own (clips + metadata.jsonl), to listen to and re-judge.
    winners = layout.eval / "clips" / f"best_of_{n}"
    (winners / "clips").mkdir(parents=True, exist_ok=True)
    picked_rows, picked_clips, lines = [], [], []
    for base in base_rows:
        i = best[(int(base["caption_id"]), int(base["clip_index"]))]
        winner = rows[i]
        atomic_write_bytes(winners / base["file_name"], (folder / winner["file_name"]).read_bytes())
        picked_rows.append({**base, "seed": winner["seed"], "candidate": winner["clip_id"], "reward": scores[i]})
        picked_clips.append(load_audio(folder / winner["file_name"], sample_rate, what=str(folder / winner["file_name"]))[0])
        lines.append(json.dumps(picked_rows[-1], ensure_ascii=False) + "\n")
    atomic_write_bytes(winners / "metadata.jsonl", "".join(lines).encode())
    return picked_rows, picked_clips


def sorted_rows(folder: Path) -> list[dict[str, Any]]:
    """A generations folder's rows, by caption, then clip."""
    from ..generations import read_generations

    return sorted(read_generations(folder), key=lambda r: (r["caption_id"], r["clip_index"]))


def read_waves(folder: Path, rows: list[dict[str, Any]], sample_rate: int) -> list[np.ndarray]:
    """The rows' clips in `folder` as waveforms at `sample_rate`."""
    return [load_audio(folder / r["file_name"], sample_rate, what=str(folder / r["file_name"]))[0] for r in rows]


def read_clips(folder: Path, sample_rate: int = 16000) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
    """A generations folder's rows (by caption, then clip) and their waveforms at `sample_rate`."""
    rows = sorted_rows(folder)
    return rows, read_waves(folder, rows, sample_rate)


def load_scorer(path: str | Path, what: str, device: str | None = None):
    """A reward model (the run's, or a judge) from a folder or Hub id, on `device` (default cuda if there)."""
    import reward_hub

    from ..hub import resolve_folder
    from ..runtime import pick_device

    return reward_hub.load(str(resolve_folder(path, what)), device=pick_device(device))


def oracle_metrics(rows: list[dict[str, Any]], clips: list[np.ndarray], sample_rate: int) -> dict[str, float]:
    """Integrity accuracy on 2-label (integrity-task) captions, temporal accuracy on 3-label
    (temporal-task) captions, as the toy world's oracle judges them (through its detector, the
    evaluation's event path), each with its standard error and clip count."""
    from .events import ToyEventDetector, event_metrics, score_clips

    metrics = event_metrics(score_clips(ToyEventDetector(), rows, clips, sample_rate))
    return {k: v for k, v in metrics.items() if k.startswith(("integrity_accuracy", "temporal_accuracy"))}
