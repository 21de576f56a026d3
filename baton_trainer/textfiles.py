"""Reading the text files people give a stage (captions, labels, logins, metadata, release JSON):
every error names the file and the line, a file that is not UTF-8 included."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator


class TextFileError(ValueError):
    """A text file that cannot be read; the message names the file and, where it can, the line."""


def read_text(path: str | os.PathLike, what: str = "file") -> str:
    """The whole file as text; a missing file or a non-UTF-8 byte is a one-line error naming it."""
    path = Path(path)
    if not path.is_file():
        raise TextFileError(f"{what} not found: {path}")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")  # a BOM from Windows editors is not part of the first line
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise TextFileError(f"{path}: line {line} is not UTF-8 text (byte 0x{data[exc.start]:02x}); save the file as UTF-8") from None


def numbered_lines(path: str | os.PathLike, what: str = "file") -> Iterator[tuple[int, str]]:
    """(line number, line) for every line that is not blank."""
    for number, line in enumerate(read_text(path, what).splitlines(), start=1):
        if line.strip():
            yield number, line


def read_jsonl(path: str | os.PathLike, what: str = "file") -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line; a line that is not a JSON object is an error naming it."""
    rows = []
    for number, line in numbered_lines(path, what):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TextFileError(f"{path}: line {number} is not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise TextFileError(f"{path}: line {number} is not a JSON object")
        rows.append((number, row))
    return rows


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON object from `path`, or {} when it is missing or unreadable: for optional side files
    (a card, a folder's kind) that are written or decided anyway without them."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}
