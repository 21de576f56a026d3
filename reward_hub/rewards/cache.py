"""A disk cache of scores, so no clip is scored twice and a resumed run re-scores nothing.

Key: sha256(clip as float32 bytes at its own rate + rate + caption) and sha256(reward.identity()).
The clip is hashed as the caller gave it (before any resampling), so the key needs no model.
The file is JSON lines, one score per line, appended with one `write` on an O_APPEND descriptor
and fsynced per batch: a kill can at worst leave a torn last line, which loading skips (and the
next append starts on a fresh line), so scores already written are never lost.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Iterable

import numpy as np


def clip_key(caption: str, wave: np.ndarray, sample_rate: int) -> str:
    """Content key of one (caption, clip at its rate)."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(np.asarray(wave, dtype=np.float32)).tobytes())
    digest.update(f"|{int(sample_rate)}|".encode())
    digest.update(caption.encode("utf-8"))
    return digest.hexdigest()


def identity_key(identity: str) -> str:
    return hashlib.sha256(identity.encode("utf-8")).hexdigest()[:32]


class ScoreCache:
    """Scores on disk at `path` (JSON lines), keyed by (clip key, reward identity)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._scores: dict[tuple[str, str], float] = {}
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8") as handle:
            for line in handle:
                try:
                    row = json.loads(line)
                    self._scores[(row["clip"], row["reward"])] = float(row["value"])
                except (ValueError, KeyError, TypeError):
                    continue  # a line torn by a kill mid-write: that one score is simply recomputed

    def __len__(self) -> int:
        return len(self._scores)

    def get(self, clip: str, identity: str) -> float | None:
        return self._scores.get((clip, identity_key(identity)))

    def put_many(self, items: Iterable[tuple[str, str, float]]) -> None:
        """Append (clip key, reward identity, score) rows and fsync: one batch, one write."""
        rows = []
        for clip, identity, value in items:
            value = float(value)
            if not math.isfinite(value):
                raise ValueError(f"ScoreCache: refusing to store a non-finite score {value!r}")
            reward = identity_key(identity)
            self._scores[(clip, reward)] = value
            rows.append(json.dumps({"clip": clip, "reward": reward, "value": value}) + "\n")
        if not rows:
            return
        data = "".join(rows).encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size and not self._ends_with_newline():
                data = b"\n" + data  # the previous writer was killed mid-line: do not glue onto it
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as handle:
            handle.seek(-1, os.SEEK_END)
            return handle.read(1) == b"\n"
