"""How much raters agree, and how their votes become one label per clip (the `export` stage uses these)."""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict
from typing import Any, Iterable

from .store import ALIGNED, NOT_ALIGNED, SKIP, AnnotationError


def fleiss_kappa(counts: Iterable[Iterable[int]]) -> float | None:
    """Fleiss' kappa from per-item category counts (items with >= 2 raters; raters may vary).

    Each item i has n_i >= 2 ratings; its agreement is P_i = (sum_j n_ij^2 - n_i) / (n_i (n_i - 1)).
    P_bar is their mean, P_e = sum_j p_j^2 with p_j the share of all ratings in category j, and
    kappa = (P_bar - P_e) / (1 - P_e). With a constant number of raters this is Fleiss (1971); with a
    varying number it is the usual extension. None when undefined (no items, or one category only).
    """
    items = [list(map(int, row)) for row in counts if sum(row) >= 2]
    if not items:
        return None
    totals = [0] * max(len(row) for row in items)
    agreements = []
    for row in items:
        n = sum(row)
        agreements.append((sum(c * c for c in row) - n) / (n * (n - 1)))
        for j, c in enumerate(row):
            totals[j] += c
    all_ratings = sum(totals)
    p_e = sum((t / all_ratings) ** 2 for t in totals)
    if math.isclose(p_e, 1.0):
        return None
    p_bar = sum(agreements) / len(agreements)
    return (p_bar - p_e) / (1.0 - p_e)


def cohen_kappa(first: list[int], second: list[int]) -> float | None:
    """Cohen's kappa of two raters over the same items; None when chance agreement is 1."""
    if len(first) != len(second):
        raise AnnotationError(f"cohen_kappa needs two equally long rating lists ({len(first)} != {len(second)})")
    if not first:
        return None
    n = len(first)
    categories = sorted(set(first) | set(second))
    p_o = sum(a == b for a, b in zip(first, second)) / n
    count_a, count_b = Counter(first), Counter(second)
    p_e = sum(count_a[c] * count_b[c] for c in categories) / (n * n)
    if math.isclose(p_e, 1.0):
        return None
    return (p_o - p_e) / (1.0 - p_e)


def agreement_statistics(ratings: list[dict[str, Any]]) -> dict[str, Any]:
    """Fleiss' kappa over clips with >= 2 ratings, Cohen's kappa per annotator pair, raw agreement."""
    by_clip: dict[str, dict[str, int]] = defaultdict(dict)
    skips = 0
    for r in ratings:
        if r["label"] == SKIP:
            skips += 1
            continue
        by_clip[r["clip_id"]][r["annotator"]] = int(r["label"])
    multi = {clip: votes for clip, votes in by_clip.items() if len(votes) >= 2}
    counts = [[sum(v == 0 for v in votes.values()), sum(v == 1 for v in votes.values())] for votes in multi.values()]
    unanimous = sum(1 for c in counts if min(c) == 0)
    annotators = sorted({a for votes in by_clip.values() for a in votes})
    pairs = []
    for a, b in itertools.combinations(annotators, 2):
        shared = [clip for clip, votes in by_clip.items() if a in votes and b in votes]
        if not shared:
            continue
        first = [by_clip[c][a] for c in shared]
        second = [by_clip[c][b] for c in shared]
        pairs.append(
            {
                "annotators": [a, b],
                "clips": len(shared),
                "cohen_kappa": cohen_kappa(first, second),
                "percent_agreement": sum(x == y for x, y in zip(first, second)) / len(shared),
            }
        )
    return {
        "clips_rated": len(by_clip),
        "ratings": sum(len(v) for v in by_clip.values()),
        "skips": skips,
        "annotators": annotators,
        "ratings_per_clip_histogram": {str(k): v for k, v in sorted(Counter(len(v) for v in by_clip.values()).items())},
        "clips_with_2plus_ratings": len(multi),
        "fleiss_kappa": fleiss_kappa(counts),
        "unanimous_fraction": (unanimous / len(multi)) if multi else None,
        "cohen_kappa_pairs": pairs,
    }


def majority_vote(labels: list[int], ties: str = "drop") -> int | None:
    """1 or 0 by majority of non-skip labels; a tie follows `ties`; None when dropped or no votes."""
    votes = [label for label in labels if label in (ALIGNED, NOT_ALIGNED)]
    if not votes:
        return None
    positive = sum(votes)
    negative = len(votes) - positive
    if positive != negative:
        return ALIGNED if positive > negative else NOT_ALIGNED
    return {"drop": None, "positive": ALIGNED, "negative": NOT_ALIGNED}[ties]
