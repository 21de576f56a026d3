"""How far a reward agrees with a judge's yes/no labels (the toy oracle's, or people's): which
reward to trust for which task (`benchmarks/reward_bench.py`).

For scores s_i and labels y_i in {0, 1} of the clips of held-out captions:

    AUC       = P(s_pos > s_neg) + P(s_pos = s_neg) / 2     (Mann-Whitney, from mid-ranks)
    accuracy  = mean_i [ (s_i >= t) == y_i ],  t chosen to maximise accuracy on a validation split
    Spearman  = the rank correlation of s and y (for binary y, a rescaled AUC that also weighs
                how many positives there are)

AUC and Spearman need no threshold; accuracy does, and a threshold chosen on the clips it is
scored on flatters it, so it is chosen on other captions. Intervals are 95 % caption-bootstrap
intervals (`intervals.bootstrap_statistic`): clips of one caption share its difficulty.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.stats import rankdata, spearmanr

from .intervals import bootstrap_statistic


def auc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Area under the ROC curve (ties count half); NaN when one class is missing."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    positives, negatives = int(y.sum()), int((~y).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = rankdata(s)  # mid-ranks: a tie between a positive and a negative counts half
    return float((ranks[y].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def best_threshold(scores: Sequence[float], labels: Sequence[int]) -> float:
    """The threshold t (clip counted aligned when s >= t) with the highest accuracy on these clips;
    among equally good ones the midpoint between neighbouring scores, so a new clip is not decided
    by a tie with a validation clip."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    values = np.unique(s)
    candidates = np.concatenate([[values[0] - 1.0], (values[:-1] + values[1:]) / 2, [values[-1] + 1.0]])
    accuracy = [np.mean((s >= t) == y) for t in candidates]
    return float(candidates[int(np.argmax(accuracy))])


def spearman(scores: Sequence[float], labels: Sequence[int]) -> float:
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    if np.ptp(s) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(s, y).statistic)


def reward_agreement(
    scores: Sequence[float],
    labels: Sequence[int],
    caption_ids: Sequence,
    validation: Sequence[bool],
    resamples: int = 500,
    seed: int = 0,
) -> dict[str, float]:
    """AUC, accuracy (threshold from the `validation` clips) and Spearman on the other clips, each
    with its 95 % caption-bootstrap interval (`<name>_lo`, `<name>_hi`), and the counts."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    validation = np.asarray(validation, dtype=bool)
    if not (s.shape == y.shape == validation.shape == (len(caption_ids),)):
        raise ValueError(f"reward_agreement: {s.size} scores, {y.size} labels, {validation.size} split flags and {len(caption_ids)} caption ids")
    if not np.isfinite(s).all():
        raise ValueError(f"reward_agreement: {int((~np.isfinite(s)).sum())} scores are NaN or infinite")
    if validation.all() or not validation.any():
        raise ValueError("reward_agreement: the validation split must hold some clips and leave some")
    threshold = best_threshold(s[validation], y[validation])
    test = ~validation
    s, y = s[test], y[test]
    ids = [c for c, keep in zip(caption_ids, test) if keep]
    statistics = {
        "auc": lambda idx: auc(s[idx], y[idx]),
        "accuracy": lambda idx: float(np.mean((s[idx] >= threshold) == y[idx])),
        "spearman": lambda idx: spearman(s[idx], y[idx]),
    }
    result: dict[str, float] = {"clips": int(y.size), "positives": int(y.sum()), "captions": len(set(map(str, ids))), "threshold": threshold}
    everything = np.arange(y.size)
    for name, statistic in statistics.items():
        result[name] = statistic(everything)
        lo, hi = bootstrap_statistic(statistic, ids, resamples=resamples, seed=seed)  # a one-class resample (no AUC) is left out
        result[f"{name}_lo"], result[f"{name}_hi"] = lo, hi
    return result
