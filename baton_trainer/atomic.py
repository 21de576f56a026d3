"""Atomic writes: a reader, or a rerun after a kill, sees the old file or folder or the whole new
one, never half of it. Every file a stage leaves in a run folder is written through these."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, fsync it, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    """Indented UTF-8 JSON with a final newline."""
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def atomic_save_figure(figure: Any, path: str | os.PathLike, dpi: int = 110) -> None:
    """A matplotlib figure as a PNG file, written atomically."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike):
    """Build a folder under a temporary name beside `path`, then swap it in, so that readers and a
    rerun after a kill see the old folder or the whole new one, never half of it.

        with atomic_folder(out) as tmp:
            model.save_pretrained(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = path.with_name(f".{path.name}.tmp"), path.with_name(f".{path.name}.old")
    if old.exists() and not path.exists():  # a kill between the two renames below: the old folder comes back
        old.rename(path)
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed run
    shutil.rmtree(old, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)
