"""What an evaluation report says about the run's reward model: its held-out accuracy, its
histogram, and in the toy world the oracle's check of every reward label."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_bytes
from ..formatting import display_path
from ..layout import RunLayout


def reward_model_summary(layout: RunLayout, out: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """(numbers for metrics.json, lines for the report header); copies the histogram into `out`."""
    extra: dict[str, Any] = {}
    info: dict[str, str] = {}
    reward_metrics = layout.reward_model / "metrics.json"
    histogram = layout.reward_model / "reward_histogram.png"
    if layout.reward_label_check_plot.is_file():  # toy world: every reward label by the oracle's answer
        atomic_write_bytes(out / "reward_histogram.png", layout.reward_label_check_plot.read_bytes())
        info["reward_histogram"] = "reward_histogram.png (the reward labels of the clips nobody rated, by the oracle's answer)"
    elif histogram.is_file():  # the reward model's held-out rewards by human label (the paper's Figure 4)
        atomic_write_bytes(out / "reward_histogram.png", histogram.read_bytes())
        info["reward_histogram"] = "reward_histogram.png (held-out rewards of the run's reward model, by rating)"
    if reward_metrics.is_file():
        overall = json.loads(reward_metrics.read_text(encoding="utf-8")).get("validation", {}).get("overall", {})
        if overall.get("accuracy") is not None:
            extra["reward_model_accuracy"] = overall["accuracy"]
            info["reward_model_accuracy"] = f"{100 * overall['accuracy']:.1f}% on {overall.get('count', '?')} held-out validation ratings"
    check = json.loads(layout.reward_label_check.read_text(encoding="utf-8")) if layout.reward_label_check.is_file() else {}
    if check.get("accuracy") is not None:
        # Toy world: the oracle judged every clip the reward model labelled; with few ratings this
        # held-out set is far larger than the validation split, so it is the accuracy reported.
        if "reward_model_accuracy" in extra:
            extra["reward_model_validation_accuracy"] = extra["reward_model_accuracy"]
        extra["reward_model_accuracy"] = check["accuracy"]
        extra["reward_label_check"] = check
        info["reward_model_accuracy"] = f"{100 * check['accuracy']:.1f}% of {check['clips']} reward labels agree with the oracle" + (
            f" ({info['reward_model_accuracy']})" if "reward_model_accuracy" in info else ""
        )
    return extra, info


def scorer_lines(layout: RunLayout, clap_model: str | None, detector: str | None) -> dict[str, str]:
    """Which scorer trained the aligned model and which judged it, for the report header, with a
    warning when a judge is the training reward's own backbone (it then grades its own homework)."""

    lines: dict[str, str] = {}
    backbone = None
    config_file = layout.reward_model / "config.json"
    if config_file.is_file():
        backbone = json.loads(config_file.read_text(encoding="utf-8")).get("clap_model_name_or_path")
        lines["trained_by"] = f"reward model {display_path(layout.reward_model)} (CLAP backbone: {display_path(backbone) if backbone else 'not recorded'})"
    judges = []
    if clap_model:
        judges.append(f"CLAP score by {display_path(clap_model)}")
    if detector:
        judges.append(f"event scores by {detector}")
    lines["judged_by"] = "; ".join(judges) or "no judge (no CLAP model and no detector)"
    same = backbone is not None and clap_model is not None and _same_model(backbone, clap_model)
    if same:
        lines["warning"] = (
            "the CLAP score is judged by the CLAP the reward model is built on: it is not an independent judge "
            "of the aligned model (pass another --clap_model, or read the event scores" + (")" if detector else ": --detector)")
        )
    return lines


def _same_model(a: str, b: str) -> bool:
    pa, pb = Path(a), Path(b)
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return pa.parts[-2:] == pb.parts[-2:]  # a Hub id, or a folder recorded relative to another working directory
