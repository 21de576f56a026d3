"""Honest intervals: 95 % bootstrap intervals resampled over captions, paired between models.

Clips of one caption are not independent (they share the caption's difficulty), so the unit of
resampling is the caption: each resample draws C captions with replacement from the C evaluated
and takes all their clips. Models that saw the same captions and seeds are resampled together,
so a difference between two models gets the paired interval, which is much narrower than the two
intervals side by side suggest. Intervals are percentile intervals of `resamples` draws (Efron &
Tibshirani 1993, ch. 13), seeded.

    mean_m(b)   = sum_c w_bc S_mc / sum_c w_bc N_c      w_bc: times caption c is drawn in resample b
    interval_m  = quantiles 2.5 % and 97.5 % of mean_m(b) over b
    difference  = mean_m - mean_base, interval from mean_m(b) - mean_base(b) (the same draws)

Set-level statistics (FD, FAD, IS) are not means over clips. Refit on a bootstrap resample they
are biased: a resample repeats clips, and FD on fewer distinct clips is larger (the default run's
aligned model: FD 0.029, percentile interval [0.045, 0.119]). Their intervals come from the
delete-one-caption jackknife instead (Efron & Tibshirani 1993, ch. 11), which never repeats a clip:

    F_(c)    = the statistic without caption c's clips
    SE^2     = (C - 1) / C * sum_c (F_(c) - mean_c F_(c))^2
    interval = F -/+ 1.96 SE, floored at the statistic's least value (FD 0, IS 1)
    difference: the same with F_m - F_base, the same caption left out of both

On Gaussian embeddings the jackknife interval covered the expected FD at the sample's size in
95-100 % of 60 draws in each of 4 settings, the percentile bootstrap in 0-90 % (tested).
"""

from __future__ import annotations

from statistics import NormalDist
from typing import Callable, Mapping, Sequence

import numpy as np

from .metrics import frechet_distance_from_embeddings, inception_score, within_caption_spread

CONFIDENCE = 0.95


def caption_resamples(caption_ids: Sequence, resamples: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(weights (resamples, C): how often each caption is drawn; index (clips,): each clip's caption)."""
    captions, index = np.unique(np.asarray([str(c) for c in caption_ids]), return_inverse=True)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(captions), size=(resamples, len(captions)))
    weights = np.zeros((resamples, len(captions)))
    np.add.at(weights, (np.arange(resamples)[:, None], draws), 1.0)
    return weights, index


def _quantiles(values: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(values, [tail, 1.0 - tail])
    return float(lo), float(hi)


def bootstrap_means(
    values: Mapping[str, Sequence[float]],
    caption_ids: Sequence,
    baseline: str | None = None,
    resamples: int = 2000,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> dict[str, dict[str, float]]:
    """Per model: `mean`, `lo`, `hi` of the mean over clips, and (against `baseline`, the first
    model by default) `difference`, `difference_lo`, `difference_hi`, paired. `values[m][i]` is
    clip i's value for model m (the same clip order for every model; NaN = not scored, left out
    of that model's mean)."""
    if not values:
        return {}
    weights, index = caption_resamples(caption_ids, resamples, seed)
    baseline = baseline if baseline is not None else next(iter(values))
    draws: dict[str, np.ndarray] = {}
    result: dict[str, dict[str, float]] = {}
    for model, per_clip in values.items():
        x = np.asarray(per_clip, dtype=np.float64)
        if x.shape != index.shape:
            raise ValueError(f"bootstrap: model {model!r} has {x.size} values for {index.size} clips")
        scored = np.isfinite(x)
        sums = np.bincount(index, weights=np.where(scored, x, 0.0), minlength=weights.shape[1])
        counts = np.bincount(index, weights=scored.astype(np.float64), minlength=weights.shape[1])
        with np.errstate(invalid="ignore", divide="ignore"):
            draws[model] = (weights @ sums) / (weights @ counts)
        mean = float(sums.sum() / counts.sum()) if counts.sum() else float("nan")
        lo, hi = _quantiles(draws[model][np.isfinite(draws[model])], confidence) if counts.sum() else (float("nan"),) * 2
        result[model] = {"mean": mean, "lo": lo, "hi": hi}
    for model in values:
        if model == baseline or baseline not in draws:
            continue
        diff = draws[model] - draws[baseline]
        finite = diff[np.isfinite(diff)]
        lo, hi = _quantiles(finite, confidence) if finite.size else (float("nan"),) * 2
        result[model].update({"difference": result[model]["mean"] - result[baseline]["mean"], "difference_lo": lo, "difference_hi": hi})
    return result


def bootstrap_statistic(
    statistic: Callable[[np.ndarray], float],
    caption_ids: Sequence,
    resamples: int = 200,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> tuple[float, float]:
    """Interval of a set-level `statistic(clip_indices)` (e.g. FD of those clips' embeddings)
    over caption resamples; the same seed gives the same draws as `bootstrap_means`'s first ones.
    Resamples where the statistic is undefined (NaN, e.g. an AUC of one class) are left out."""
    weights, index = caption_resamples(caption_ids, resamples, seed)
    members = [np.flatnonzero(index == c) for c in range(weights.shape[1])]
    values = []
    for w in weights.astype(int):
        picked = np.concatenate([np.repeat(members[c], w[c]) for c in np.flatnonzero(w)])
        values.append(statistic(picked))
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    return _quantiles(values, confidence) if values.size else (float("nan"), float("nan"))


def jackknife_values(statistic: Callable[[np.ndarray], float], caption_ids: Sequence) -> tuple[float, np.ndarray]:
    """(a set-level `statistic(clip_indices)` on all clips, its value without each caption's clips,
    in sorted caption order): what `jackknife_interval` takes. One refit per caption."""
    ids = np.asarray([str(c) for c in caption_ids])
    everything = np.arange(ids.size)
    return float(statistic(everything)), np.asarray([statistic(everything[ids != c]) for c in np.unique(ids)], dtype=np.float64)


def jackknife_interval(estimate: float, left_out: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The delete-one-caption jackknife interval (module docstring) from `jackknife_values`; a
    difference between models is the difference of their values, caption by caption. Captions whose
    leave-out is NaN are left out; fewer than 2 finite leave-outs give NaN."""
    left_out = left_out[np.isfinite(left_out)]
    if left_out.size < 2 or not np.isfinite(estimate):
        return float("nan"), float("nan")
    n = left_out.size
    half = NormalDist().inv_cdf(0.5 + confidence / 2) * float(np.sqrt((n - 1) / n * np.sum((left_out - left_out.mean()) ** 2)))
    return estimate - half, estimate + half


def jackknife_statistic(statistic: Callable[[np.ndarray], float], caption_ids: Sequence, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Interval of a set-level `statistic(clip_indices)` (e.g. FD of those clips' embeddings) by
    the delete-one-caption jackknife (module docstring): one refit per caption."""
    return jackknife_interval(*jackknife_values(statistic, caption_ids), confidence)


def seed_spread(per_seed: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation and standard error of one number over training seeds."""
    x = np.asarray(per_seed, dtype=np.float64)
    if x.size < 2:
        return {"mean": float(x.mean()) if x.size else float("nan"), "seeds": int(x.size)}
    sd = float(x.std(ddof=1))
    return {"mean": float(x.mean()), "sd": sd, "se": sd / np.sqrt(x.size), "seeds": int(x.size)}


def model_intervals(
    per_clip: Mapping[str, Mapping[str, Sequence[float]]],
    embeddings: Mapping[str, Mapping[str, object]],
    caption_ids: Sequence,
    resamples: int = 2000,
    set_level: bool = True,
    seed: int = 0,
) -> dict[str, dict[str, dict[str, float]]]:
    """The evaluate stage's intervals: model -> metric -> {lo, hi[, difference, difference_lo,
    difference_hi]}. Per-clip metrics (`per_clip[model][metric]`) get `bootstrap_means`, paired
    against the first model; FD (`embeddings["fd"|"fd_clap"|"fd_matched"|"fad"]`, a model's rows per clip and
    the fixed "reference") and IS (`embeddings["is"]`, logits) get jackknife intervals unless
    `set_level` is False (one refit per caption: slow for PANNs' 2048-d FD on many captions)."""

    models = list(per_clip)
    out: dict[str, dict[str, dict[str, float]]] = {m: {} for m in models}
    metric_keys = sorted({k for m in models for k in per_clip[m]})
    for key in metric_keys:
        values = {m: per_clip[m][key] for m in models if key in per_clip[m]}
        for m, stats in bootstrap_means(values, caption_ids, resamples=resamples, seed=seed).items():
            out[m][key] = {k: v for k, v in stats.items() if k != "mean"}
    for metric, source in (("diversity", "clap_audio"), ("diversity_mel", "log_mel")):  # one number per caption: resample those
        if source not in embeddings:
            continue
        ids = [str(c) for c in caption_ids]
        captions = sorted(set(ids))
        spreads = {}
        for m in models:
            if m in embeddings[source]:
                e = np.asarray(embeddings[source][m])
                per_caption = [
                    within_caption_spread(e[[i for i, c in enumerate(ids) if c == cap]], [cap] * ids.count(cap)) if ids.count(cap) > 1 else float("nan")
                    for cap in captions
                ]
                spreads[m] = per_caption
        for m, stats in bootstrap_means(spreads, captions, resamples=resamples, seed=seed).items():
            out[m][metric] = {k: v for k, v in stats.items() if k != "mean"}
    if not set_level:
        return out
    for key, by_model in embeddings.items():
        if key not in ("fd", "fd_clap", "fd_matched", "fad", "is"):
            continue
        reference = by_model.get("reference")
        if key != "is" and reference is None:
            continue

        def rows_of(model: str, picked: np.ndarray):
            data = by_model[model]
            return [data[i] for i in picked] if isinstance(data, list) else np.asarray(data)[picked]

        def statistic(model: str):
            if key == "is":  # a leave-out with fewer clips than IS's 10 splits has no IS
                return lambda picked: inception_score(rows_of(model, picked), splits=10, from_logits=True)[0] if len(picked) >= 10 else float("nan")
            if key == "fad":
                return lambda picked: frechet_distance_from_embeddings(np.concatenate(rows_of(model, picked)), np.concatenate(reference))
            return lambda picked: frechet_distance_from_embeddings(rows_of(model, picked), reference)

        if len(caption_ids) < 10:
            continue
        floor = 1.0 if key == "is" else 0.0
        values = {m: jackknife_values(statistic(m), caption_ids) for m in models if m in by_model}  # each refit once
        for m, (estimate, left_out) in values.items():
            lo, hi = jackknife_interval(estimate, left_out)
            out[m][key] = {"lo": max(lo, floor), "hi": hi}
        base = models[0]
        for m in models[1:]:
            if m in values and base in values:
                lo, hi = jackknife_interval(values[m][0] - values[base][0], values[m][1] - values[base][1])
                out[m][key].update({"difference_lo": lo, "difference_hi": hi})
    return out


def reward_hacking(previous: dict[str, float], current: dict[str, float], margin_se: float) -> bool:
    """The training reward rose while the judge fell by more than `margin_se` standard errors of
    the difference (0: any fall). A fall inside the judge's own noise is no evidence of hacking."""
    margin = margin_se * (previous.get("judge_se", 0.0) ** 2 + current.get("judge_se", 0.0) ** 2) ** 0.5
    return previous["judge"] - current["judge"] > margin and current["reward"] > previous["reward"]
