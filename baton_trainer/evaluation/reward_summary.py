"""What an evaluation report says about the run's reward model: its held-out accuracy, its
histogram, and in the toy world the oracle's check of every reward label."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_bytes
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
        info["reward_model_accuracy"] = (f"{100 * check['accuracy']:.1f}% of {check['clips']} reward labels agree with the oracle"
                                         + (f" ({info['reward_model_accuracy']})" if "reward_model_accuracy" in info else ""))
    return extra, info
