"""Evaluation report: `report.md` (base vs aligned table, metric definitions, skipped metrics),
`metrics.json`, `per_caption.jsonl` and plots (metric bars, per-caption CLAP scatter,
spectrogram grid). Every file is written atomically, so a killed run leaves the old report or
the whole new one."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..atomic import atomic_save_figure, atomic_write_text
from ..runtime import library_versions
from ..spectrogram import draw_spectrogram, log_mel_db
from .intervals import seed_spread

FD_DEFINITION = (
    "FD: Fréchet distance between Gaussians fitted to PANNs Cnn14 (16 kHz, Cnn14_16k_mAP=0.438) 2048-d "
    "clip embeddings of generated and reference audio (audioldm_eval's `frechet_distance`)."
)
FAD_DEFINITION = (
    "FAD: Fréchet distance between Gaussians fitted to VGGish 128-d embeddings of every 0.96 s frame of "
    "generated and reference audio; VGGish without PCA/quantisation and without its final ReLU "
    "(audioldm_eval's `frechet_audio_distance`). Not the same scale as FAD from Google's TF tool or fadtk."
)

# key -> (label in tables, True if higher is better (None: neither), display scale, definition)
METRIC_INFO: dict[str, tuple[str, bool | None, float, str]] = {
    "clap_score": (
        "CLAP score (x100)",
        True,
        100.0,
        "CLAP score: mean cosine similarity of L2-normalised CLAP (laion/clap-htsat-unfused, LAION "
        "630k-audioset-best) caption and clip embeddings; audio resampled to 48 kHz and cut to the first 10 s. "
        "Shown x100 as in the BATON paper's tables.",
    ),
    "fd": ("FD (PANNs)", False, 1.0, FD_DEFINITION),
    "fad": ("FAD (VGGish)", False, 1.0, FAD_DEFINITION),
    "kl": (
        "KL (PANNs, softmax)",
        False,
        1.0,
        "KL: mean over clip pairs of KL(softmax(reference logits) || softmax(generated logits)) on PANNs "
        "Cnn14's 527 AudioSet logits, generated probabilities + 1e-6 (audioldm_eval's "
        "`kullback_leibler_divergence_softmax`); pairs matched by name.",
    ),
    "is": (
        "IS (PANNs)",
        True,
        1.0,
        "IS: inception score of PANNs Cnn14 softmax probabilities, 10 splits after a shuffle with seed 2020 "
        "(audioldm_eval's `inception_score_mean`; the +- is the std over splits).",
    ),
}
METRIC_INFO.update(
    {
        "fd_clap": (
            "FD (CLAP embeddings)",
            False,
            1.0,
            "FD (CLAP embeddings): Fréchet distance between Gaussians fitted to the CLAP audio embeddings of generated "
            "and reference clips (the toy world's FD: its references are rendered clips).",
        ),
        "fd_matched": (
            "FD (matched references)",
            False,
            1.0,
            "FD (matched references): Fréchet distance between Gaussians fitted to the CLAP audio embeddings of generated "
            "clips and of references of the evaluated captions themselves: in the toy world clean renderings (4 per caption, "
            "the toy renderer), for a real model the reference clip each caption names (AudioCaps test audio); the header "
            "says which. The distance to what each caption asks for, where FD (CLAP embeddings) measures it to a whole "
            "reference set.",
        ),
        "integrity_accuracy": (
            "Integrity accuracy (%)",
            True,
            100.0,
            "Integrity accuracy: share of clips of 2-label captions in which every label's event is present, as the "
            "toy world's oracle judges it; ± is the standard error sqrt(p (1 - p) / n).",
        ),
        "temporal_accuracy": (
            "Temporal accuracy (%)",
            True,
            100.0,
            "Temporal accuracy: share of clips of 3-label captions with every event present in the stated order (oracle); ± is the standard error.",
        ),
        "event_presence": (
            "Event presence (%)",
            True,
            100.0,
            "Event presence: share of clips in which the sound event detector finds every event the caption names "
            "(thresholds in the header; clips whose events could not be named are left out and counted).",
        ),
        "event_order": (
            "Event order (%)",
            True,
            100.0,
            "Event order: share of clips of ordered (temporal-task) captions with every named event detected and their "
            "first onsets in the stated order, each at least the order margin after the previous one.",
        ),
        "event_parsimony": (
            "Event parsimony (%)",
            True,
            100.0,
            "Event parsimony: share of clips with no strong event (above the parsimony threshold) that the caption does "
            "not name; the event map lists the classes a named event may also fire.",
        ),
        "diversity_mel": (
            "Diversity (spectrogram spread)",
            True,
            1.0,
            "Diversity (spectrogram): as Diversity, on each clip's 64-band log-mel image (dB below its own peak, 0.1 s "
            "frames, mean removed) instead of CLAP embeddings: independent of CLAP and of any reward, so a selection or "
            "a model that pleases CLAP cannot move it by moving towards CLAP's view of the caption.",
        ),
        "toy_quality": (
            "Toy quality judge (1-5)",
            True,
            1.0,
            "Toy quality judge: the toy world's stand-in for MOS-Q, 1 + 4 exp(-D) where D sums the excess over clean "
            "renderings of clipping, clicks, noise floor and frame-rate buzz on a level-normalised copy of the clip "
            "(baton_trainer/evaluation/quality.py); independent of the reward and the losses; not a MOS.",
        ),
        "loudness_lufs": (
            "Loudness (LUFS)",
            None,
            1.0,
            "Loudness: mean over clips of the integrated loudness (ITU-R BS.1770-4 via pyloudnorm; silent clips left out). "
            "Neither higher nor lower is better: a louder model biases listeners and level-sensitive metrics.",
        ),
        "peak_dbfs": (
            "Peak (dBFS)",
            None,
            1.0,
            "Peak: mean over clips of each clip's sample peak, 20 log10 max|x| (0 dBFS is full scale; above it clips).",
        ),
        "diversity": (
            "Diversity (CLAP spread)",
            True,
            1.0,
            "Diversity: mean over captions of the mean pairwise cosine distance between the CLAP audio embeddings of "
            "that caption's clips (different seeds); a drop against the base model is collapse.",
        ),
    }
)
_COMPANION_KEYS = {"is_std", "event_unscored_clips"}  # shown inside another metric's cell


def _is_companion(key: str) -> bool:
    """Standard errors and counts go beside their metric (and into metrics.json), not in rows of their own."""
    return key in _COMPANION_KEYS or key.endswith(("_se", "_clips"))


REPORT_FILES = ("report.md", "metrics.json", "per_caption.jsonl", "metrics.png", "clap_per_caption.png", "spectrograms.png")


class ReportInputError(ValueError):
    """Report inputs that cannot be written; the message names the key or row."""


def _number(value: Any) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.floating, float)):
        return _number(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    return str(value)


def _format(key: str, value: float | None) -> str:
    if value is None:
        return "—"
    scale = METRIC_INFO.get(key, ("", True, 1.0, ""))[2]
    return f"{value * scale:.2f}" if scale != 1.0 else f"{value:.4f}"


def _format_delta(key: str, delta: float) -> str:
    scale = METRIC_INFO.get(key, ("", True, 1.0, ""))[2]
    return f"{delta * scale:+.2f}" if scale != 1.0 else f"{delta:+.4f}"


def _metric_keys(metrics: Mapping[str, Mapping[str, Any]]) -> list[str]:
    keys: list[str] = [k for k in METRIC_INFO if any(k in m for m in metrics.values())]
    for model_metrics in metrics.values():
        keys += [k for k in model_metrics if k not in keys and not _is_companion(k)]
    return keys


def _table(metrics: Mapping[str, Mapping[str, Any]], keys: list[str], intervals: Mapping[str, Mapping[str, Any]] | None = None) -> list[str]:
    models = list(metrics)
    header = ["metric", *models]
    others = models[1:]  # each compared with the first (the base model)
    header += [f"{m} - {models[0]}" for m in others]
    header.append("better")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 2) + [":---:"]) + "|"]
    for key in keys:
        label, higher, scale, _ = METRIC_INFO.get(key, (key, True, 1.0, ""))
        cells = [label]
        values = [_number(metrics[m].get(key)) for m in models]
        for model, value in zip(models, values):
            cell = _format(key, value)
            std = _number(metrics[model].get("is_std" if key == "is" else f"{key}_se"))
            scale = METRIC_INFO.get(key, ("", True, 1.0, ""))[2]
            ci = (intervals or {}).get(model, {}).get(key, {})
            if value is not None and _number(ci.get("lo")) is not None:
                cell += f" [{_format(key, ci['lo'])}, {_format(key, ci['hi'])}]"
            elif std is not None and value is not None:
                cell += f" ± {std * scale:.4g}"
            cells.append(cell)
        a = values[0]
        for model, b in zip(models[1:], values[1:]):
            ci = (intervals or {}).get(model, {}).get(key, {})
            cell = "—" if a is None or b is None else _format_delta(key, b - a)
            if cell != "—" and _number(ci.get("difference_lo")) is not None:
                cell += f" [{_format_delta(key, ci['difference_lo'])}, {_format_delta(key, ci['difference_hi'])}]"
            cells.append(cell)
        cells.append("" if higher is None or key not in METRIC_INFO else "↑" if higher else "↓")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _pyplot():
    import matplotlib  # lazy: slow to import, and the backend must be set before pyplot loads

    matplotlib.use("Agg", force=True)  # files only; never a window
    import matplotlib.pyplot as plt  # lazy: after matplotlib.use

    return plt


def _write_figure(fig, path: Path) -> bool:
    """Save a report figure (None: nothing to draw) and free it; whether a file was written."""
    if fig is None:
        return False
    atomic_save_figure(fig, path)
    _pyplot().close(fig)
    return True


def _plot_metric_bars(metrics: Mapping[str, Mapping[str, Any]], keys: list[str], path: Path, intervals: Mapping[str, Mapping[str, Any]] | None = None) -> bool:
    return _write_figure(metric_bars_figure(metrics, keys, intervals), path)


def metric_bars_figure(metrics: Mapping[str, Mapping[str, Any]], keys: list[str], intervals: Mapping[str, Mapping[str, Any]] | None = None):
    """One panel per metric, a bar per model, with its 95 % bootstrap interval over captions where
    there is one (`intervals`, as the table shows); None when no metric has a value."""
    shown = [k for k in keys if any(_number(m.get(k)) is not None for m in metrics.values())]
    if not shown:
        return None
    plt = _pyplot()
    models = list(metrics)
    fig, axes = plt.subplots(1, len(shown), figsize=(2.6 * len(shown) + 0.6, 3.2), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, key in zip(axes[0], shown):
        label, higher, scale, _ = METRIC_INFO.get(key, (key, True, 1.0, ""))
        values = [(_number(metrics[m].get(key)) or 0.0) * scale for m in models]
        bounds = [(intervals or {}).get(m, {}).get(key, {}) for m in models]
        # an interval need not contain its point estimate (FD's refits are biased up): whiskers never go negative
        errors = np.array(
            [
                [max(0.0, v - _number(b["lo"]) * scale), max(0.0, _number(b["hi"]) * scale - v)]
                if _number(b.get("lo")) is not None and _number(b.get("hi")) is not None
                else [0.0, 0.0]
                for v, b in zip(values, bounds)
            ]
        ).T
        ax.bar(range(len(models)), values, color=[colors[i % len(colors)] for i in range(len(models))], yerr=errors if errors.any() else None, capsize=4)
        ax.set_xticks(range(len(models)), models, rotation=20)
        ax.set_title(f"{label} {'' if higher is None else '↑' if higher else '↓'}".strip(), fontsize=9)
        for i, v in enumerate(values):
            ax.annotate(f"{v:.3g}", (i, v), ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    return fig


def _plot_clap_scatter(per_caption: Sequence[Mapping[str, Any]], models: list[str], path: Path) -> bool:
    if len(models) < 2:
        return False
    x_name, y_name = models[0], models[1]
    points = [(_number(r.get(x_name)), _number(r.get(y_name)), str(r.get("task", ""))) for r in per_caption]
    points = [(x * 100, y * 100, t) for x, y, t in points if x is not None and y is not None]
    if not points:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    for task in sorted({t for *_, t in points}):
        xs = [x for x, _, t in points if t == task]
        ys = [y for _, y, t in points if t == task]
        ax.scatter(xs, ys, s=14, alpha=0.7, label=task or None)
    lo = min(min(x, y) for x, y, _ in points)
    hi = max(max(x, y) for x, y, _ in points)
    ax.plot([lo, hi], [lo, hi], color="grey", linewidth=1, linestyle="--")
    ax.set_xlabel(f"{x_name} CLAP score (x100)")
    ax.set_ylabel(f"{y_name} CLAP score (x100)")
    above = sum(y > x for x, y, _ in points)
    ax.set_title(f"per clip: {above}/{len(points)} above the diagonal", fontsize=9)
    if any(t for *_, t in points):
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _write_figure(fig, path)


def _spectrogram_input(entry: Any, name: str) -> tuple[np.ndarray | None, int, np.ndarray | None]:
    """(waveform, sample_rate, image) from `(waveform, sample_rate)` or a given 2-d (bands, frames) array."""
    if isinstance(entry, np.ndarray) and entry.ndim == 2:
        return None, 0, entry
    if not (isinstance(entry, (tuple, list)) and len(entry) == 2):
        raise ReportInputError(f"spectrograms[{name}]: expected (waveform, sample_rate) or a 2-d array")
    waveform, sample_rate = np.asarray(entry[0], dtype=np.float64), int(entry[1])
    if waveform.ndim != 1 or waveform.size < 1024:
        raise ReportInputError(f"spectrograms[{name}]: waveform must be mono with at least 1024 samples")
    return waveform, sample_rate, None


def _plot_spectrograms(spectrograms: Mapping[str, Mapping[str, Any]], path: Path) -> bool:
    return _write_figure(spectrograms_figure(spectrograms), path)


def spectrograms_figure(spectrograms: Mapping[str, Mapping[str, Any]]):
    """A caption per row, a model per column, every panel on one colour scale with a dB colour bar;
    None when there is nothing to draw."""
    rows = list(spectrograms)
    if not rows:
        return None
    columns: list[str] = []
    for row in rows:
        if not isinstance(spectrograms[row], Mapping):
            raise ReportInputError(f"spectrograms[{row!r}]: expected a mapping of model name -> audio")
        columns += [c for c in spectrograms[row] if c not in columns]

    inputs = {(row, column): _spectrogram_input(spectrograms[row][column], f"{row!r}][{column!r}") for row in rows for column in spectrograms[row]}
    images = {key: image if image is not None else log_mel_db(waveform, sample_rate) for key, (waveform, sample_rate, image) in inputs.items()}
    # One colour scale for every panel (the top 80 dB of them all): a louder model looks louder.
    vmax = max(float(np.max(image)) for image in images.values())
    vmin = max(min(float(np.min(image)) for image in images.values()), vmax - 80.0)
    plt = _pyplot()
    fig, axes = plt.subplots(len(rows), len(columns), figsize=(3.6 * len(columns) + 0.6, 2.3 * len(rows) + 0.4), squeeze=False)
    artist = None
    for i, row in enumerate(rows):
        for j, column in enumerate(columns):
            ax = axes[i][j]
            if column in spectrograms[row]:
                waveform, sample_rate, _ = inputs[row, column]
                artist = draw_spectrogram(ax, waveform, sample_rate, image=images[row, column], vmin=vmin, vmax=vmax)
                ax.tick_params(labelsize=7)
                ax.xaxis.label.set_size(7)
                ax.yaxis.label.set_size(7)
            else:
                ax.axis("off")
            if i == 0:
                ax.set_title(column, fontsize=9)
            if j == 0:
                text = str(row)
                ax.annotate(
                    text if len(text) <= 60 else text[:57] + "...",
                    (0, 1),
                    xycoords="axes fraction",
                    xytext=(0, 2),
                    textcoords="offset points",
                    fontsize=7,
                    va="bottom",
                )
    fig.tight_layout()
    if artist is not None:
        fig.colorbar(artist, ax=axes.ravel().tolist(), label="dB", shrink=0.8, pad=0.01)
    return fig


def _caption_changes(per_caption: Sequence[Mapping[str, Any]], models: list[str], count: int = 5) -> list[str]:
    if len(models) < 2:
        return []
    a, b = models[0], models[1]
    diffs = []
    for row in per_caption:
        x, y = _number(row.get(a)), _number(row.get(b))
        if x is not None and y is not None:
            diffs.append((y - x, str(row.get("caption", "")), x, y))
    if not diffs:
        return []
    diffs.sort(key=lambda d: d[0])
    better = sum(d > 0 for d, *_ in diffs)
    lines = [
        f"{better} of {len(diffs)} clips score higher with {b} than with {a} (the same caption and seed) "
        f"(mean change {100 * float(np.mean([d for d, *_ in diffs])):+.2f} CLAP x100).",
        "",
        f"| caption | {a} | {b} | change |",
        "|---|---:|---:|---:|",
    ]
    picked = diffs[::-1][:count] + [d for d in diffs[:count] if d not in diffs[::-1][:count]]
    for d, caption, x, y in picked:
        caption = caption.replace("|", "\\|")
        lines.append(f"| {caption} | {100 * x:.2f} | {100 * y:.2f} | {100 * d:+.2f} |")
    return lines


def write_report(
    out_dir: str | os.PathLike,
    metrics: Mapping[str, Mapping[str, Any]],
    per_caption: Sequence[Mapping[str, Any]] | None = None,
    spectrograms: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    skipped: Mapping[str, str] | None = None,
    info: Mapping[str, Any] | None = None,
    intervals: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None,
    title: str = "Evaluation report",
) -> dict[str, Path]:
    """Write the evaluation report into `out_dir` and return the written files by name.

    - `metrics`: model name -> {metric key -> value}, in column order (e.g. "base", then
      "aligned"). Known keys: `clap_score` (cosine, shown x100), `fd`, `fad`, `kl`, `is` (with
      `is_std`); any other key is shown as is.
    - `per_caption`: rows with `caption` (and optionally `caption_id`, `task`) plus a CLAP score
      per model name; drawn as a scatter of the first model against the second.
    - `spectrograms`: row title (a caption) -> {model name -> (waveform, sample_rate) or a 2-d
      (frequency, time) array}; drawn as a grid.
    - `skipped`: metric key -> reason (e.g. a checkpoint that was not given); listed as skipped.
    - `info`: free key/values for the header (task, number of captions, checkpoints, seeds).
    - `intervals`: model -> metric -> {lo, hi[, difference_lo, difference_hi]} (95 % bootstrap
      intervals, `intervals.model_intervals`); shown in brackets beside values and differences.
    """
    out = Path(out_dir)
    if not isinstance(metrics, Mapping) or not metrics:
        raise ReportInputError("metrics: expected a mapping of model name -> {metric: value} with at least one model")
    for model, values in metrics.items():
        if not isinstance(values, Mapping):
            raise ReportInputError(f"metrics[{model!r}]: expected a mapping of metric -> value")
        for key, value in values.items():
            if value is not None and not isinstance(value, (int, float, np.number)):
                raise ReportInputError(f"metrics[{model!r}][{key!r}]: expected a number, got {type(value).__name__}")
    skipped = dict(skipped or {})
    models = [str(m) for m in metrics]
    keys = _metric_keys(metrics)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}

    plots = {
        "metrics.png": _plot_metric_bars(metrics, keys, out / "metrics.png", intervals),
        "clap_per_caption.png": bool(per_caption) and _plot_clap_scatter(per_caption, models, out / "clap_per_caption.png"),
        "spectrograms.png": bool(spectrograms) and _plot_spectrograms(spectrograms, out / "spectrograms.png"),
    }
    written.update({name: out / name for name, made in plots.items() if made})

    if per_caption:
        text = "".join(json.dumps(_jsonable(row), ensure_ascii=False) + "\n" for row in per_caption)
        atomic_write_text(out / "per_caption.jsonl", text)
        written["per_caption.jsonl"] = out / "per_caption.jsonl"

    definitions = {k: METRIC_INFO[k][3] for k in [*keys, *skipped] if k in METRIC_INFO}
    # Every report names the FD and FAD definitions, measured or not: FAD scales differ between tools.
    definitions.setdefault("fd", FD_DEFINITION)
    definitions.setdefault("fad", FAD_DEFINITION)
    payload = {
        "models": models,
        "metrics": _jsonable(metrics),
        "skipped": _jsonable(skipped),
        "definitions": definitions,
        "info": _jsonable(dict(info or {})),
        "intervals": _jsonable(dict(intervals or {})),
        "versions": library_versions(),
        "files": sorted([*written, "report.md", "metrics.json"]),
    }
    atomic_write_text(out / "metrics.json", json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    written["metrics.json"] = out / "metrics.json"

    lines = [f"# {title}", ""]
    for key, value in (info or {}).items():
        lines.append(f"- **{key}**: {value}")
    if info:
        lines.append("")
    lines += ["## Metrics", "", *_table(metrics, keys, intervals), ""]
    lines.append("Arrows say which direction is better. Raw values (CLAP as a cosine, not x100) are in `metrics.json`.")
    if intervals:
        lines.append(
            "Brackets: 95% bootstrap intervals over captions; a difference's interval is paired (the same resampled "
            "captions for both models), so it can exclude 0 while the two models' intervals overlap."
        )
    lines.append("")
    if skipped:
        lines += ["## Skipped metrics", ""]
        for key, reason in skipped.items():
            label = METRIC_INFO.get(key, (key,))[0]
            lines.append(f"- {label} (`{key}`): skipped: {reason}")
        lines.append("")
    lines += ["## Definitions", ""]
    lines += [f"- {text}" for text in definitions.values()]
    lines.append("")
    changes = _caption_changes(per_caption or [], models)
    if changes:
        lines += ["## Per clip (CLAP)", "", *changes, ""]
    if written.keys() & set(plots):
        lines += ["## Plots", ""]
        captions = {"metrics.png": "Metrics", "clap_per_caption.png": "CLAP score per clip", "spectrograms.png": "Spectrograms"}
        lines += [f"![{captions[name]}]({name})" for name in plots if name in written]
        lines.append("")
    atomic_write_text(out / "report.md", "\n".join(lines))
    written["report.md"] = out / "report.md"
    return written


def print_table(metrics: Mapping[str, Mapping[str, float]]) -> None:
    """The metrics of each model as a plain-text table on stdout (standard errors and counts left out)."""
    keys = [k for k in next(iter(metrics.values())) if not _is_companion(k) and not k.endswith("_std")]
    print("metric".ljust(22) + "".join(name.rjust(12) for name in metrics))
    for key in keys:
        print(key.ljust(22) + "".join(f"{metrics[name].get(key, float('nan')):12.4f}" for name in metrics))


def write_seed_report(eval_dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike) -> Path:
    """The spread across training seeds: each run's `metrics.json` (one evaluation per seed of
    training, same captions) -> `seeds.json` and `seeds.md` in `out_dir` with, per model and
    metric, the mean, the standard deviation and standard error over seeds, and each seed's value."""

    runs = []
    for folder in eval_dirs:
        path = Path(folder) / "metrics.json"
        if not path.is_file():
            raise ReportInputError(f"{path}: not found (run the evaluate stage for that seed first)")
        runs.append(json.loads(path.read_text(encoding="utf-8"))["metrics"])
    models = [m for m in runs[0] if all(m in r for r in runs)]
    table: dict[str, dict[str, Any]] = {}
    for model in models:
        keys = [
            k
            for k in runs[0][model]
            if not _is_companion(k)
            and not k.endswith(("_lo", "_hi", "_std", "_ratings", "_trials", "_wins"))
            and all(_number(r[model].get(k)) is not None for r in runs)
        ]
        table[model] = {k: {**seed_spread([r[model][k] for r in runs]), "per_seed": [r[model][k] for r in runs]} for k in keys}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "seeds.json", json.dumps({"runs": [str(d) for d in eval_dirs], "models": table}, indent=2) + "\n")
    lines = [
        f"# Across {len(runs)} training seeds",
        "",
        "Mean ± standard error over seeds (sd in brackets).",
        "",
        "| metric | " + " | ".join(models) + " |",
        "|---|" + "---:|" * len(models),
    ]
    keys = [k for k in _metric_keys({m: {k: 0 for k in table[m]} for m in models})]
    for key in keys:
        cells = []
        for model in models:
            s = table[model].get(key)
            if s is None:
                cells.append("—")
                continue
            scale = METRIC_INFO.get(key, ("", True, 1.0, ""))[2]
            fmt = (lambda v: f"{v * scale:.2f}") if scale != 1.0 else (lambda v: f"{v:.4f}")
            cells.append(f"{fmt(s['mean'])} ± {fmt(s['se'])} ({fmt(s['sd'])})" if "se" in s else fmt(s["mean"]))
        lines.append(f"| {METRIC_INFO.get(key, (key,))[0]} | " + " | ".join(cells) + " |")
    atomic_write_text(out / "seeds.md", "\n".join(lines) + "\n")
    return out / "seeds.md"
