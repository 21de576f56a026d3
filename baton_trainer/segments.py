"""Frame activity -> event segments: the one rule that both the toy world's oracle
(`toyworld.oracle`) and the event scores of a sound event detector (`evaluation.event_scores`) use,
so that the toy detector's events are the oracle's, clip for clip."""

from __future__ import annotations

import numpy as np


def active_segments(active: np.ndarray, frame_s: float, max_gap_s: float, min_duration_s: float) -> list[tuple[int, int]]:
    """[start, end) frame runs of `active`, runs at most `max_gap_s` apart merged, kept when at
    least `min_duration_s` of their frames are active (bridged gaps do not count: a few isolated
    bright frames bridged together must not add up to an event)."""
    max_gap = int(round(max_gap_s / frame_s))
    min_len = int(round(min_duration_s / frame_s))
    padded = np.concatenate([[False], np.asarray(active, dtype=bool), [False]])
    changes = np.flatnonzero(np.diff(padded.astype(np.int8)))
    merged: list[list[int]] = []
    for start, end in zip(changes[::2], changes[1::2]):
        if merged and start - merged[-1][1] <= max_gap:
            merged[-1][1] = int(end)
        else:
            merged.append([int(start), int(end)])
    return [(start, end) for start, end in merged if active[start:end].sum() >= max(min_len, 1)]
