"""Several rewards into one training signal: a weighted sum, or GDPO's per-reward normalisation.

With rewards r_k (k = 1..K), weights w_k and groups g (the clips of one caption):

- "sum":        R_i = sum_k w_k r_k,i. Raw values: the caller turns R into advantages with its
                usual group normalisation (R_i - mean_g R) / (std_g R + eps).
- "per_reward": R_i = sum_k w_k z_k,i with z_k,i = (r_k,i - mean_g r_k) / (std_g r_k + eps)
                (GDPO, group reward-decoupled normalisation). Each reward is normalised within its group first, so a
                reward with a wide range (a CLAP cosine spread 0.3) cannot drown one with a narrow
                range (a judge's P(yes) spread 0.05); the weights then mean what they say. R has
                mean 0 within every group; GDPO rescales R over the whole batch afterwards, which
                the caller does (normalising R per group again would undo the weighting).

std is the population standard deviation (ddof 0), as in the group advantage of DESIGN.md
section 11; a group of one clip, or of equal values, gets z = 0 (it carries no signal).
"""

from __future__ import annotations

import numpy as np

AGGREGATIONS = ("sum", "per_reward")


def group_normalise(values: np.ndarray, groups: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    """(r - group mean) / (group std + eps), per group."""
    values = np.asarray(values, dtype=np.float64)
    out = np.zeros_like(values)
    for group in np.unique(groups):
        members = groups == group
        part = values[members]
        out[members] = (part - part.mean()) / (part.std() + eps)
    return out


def combine(parts: dict[str, np.ndarray], weights: dict[str, float], groups: np.ndarray, aggregation: str = "sum", eps: float = 1e-4) -> np.ndarray:
    """One float64 value per clip from per-reward values `parts` (see the module docstring for
    exactly what each aggregation returns). `weights` must name the same rewards as `parts`."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"combine: aggregation must be one of {', '.join(AGGREGATIONS)}, got {aggregation!r}")
    if not parts:
        raise ValueError("combine: no rewards to combine")
    if set(parts) != set(weights):
        raise ValueError(f"combine: rewards {sorted(parts)} but weights for {sorted(weights)}")
    groups = np.asarray(groups).reshape(-1)
    total = np.zeros(groups.shape[0], dtype=np.float64)
    for name, values in parts.items():
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        if values.shape != groups.shape:
            raise ValueError(f"combine: reward {name!r} has {values.shape[0]} values for {groups.shape[0]} clips")
        if not np.all(np.isfinite(values)):
            raise ValueError(f"combine: reward {name!r} has NaN or infinite values at clips {np.flatnonzero(~np.isfinite(values))[:10].tolist()}")
        if aggregation == "per_reward":
            values = group_normalise(values, groups, eps)
        total += float(weights[name]) * values
    return total
