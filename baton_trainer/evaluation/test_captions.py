"""The BATON paper's evaluation captions: AudioCaps test captions with 2 (integrity task) and 3
(temporal task) events, copied unchanged from the authors' release into `assets/eval/`."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import PurePosixPath, PureWindowsPath

TEST_CAPTION_FILES = {
    "integrity": "test_audiocaps_2label.json",  # 148 captions
    "temporal": "test_audiocaps_3label.json",  # 165 captions
}


class TestCaptionError(ValueError):
    """A missing or malformed test caption file or an unknown task; the message names it."""

    __test__ = False  # not a pytest test class


def _file_name(location: str) -> str:
    return PureWindowsPath(location).name if "\\" in location else PurePosixPath(location).name


def load_test_captions(task: str | None = None) -> list[dict]:
    """Rows `{"caption_id", "caption", "task", "reference"}` for `task` ("integrity", "temporal")
    or both (None; integrity first).

    `caption_id` numbers the rows of both lists together (integrity 0-147, temporal 148-312), so
    an id means the same caption whatever `task` is asked for. `reference` is the AudioCaps clip
    the caption describes (file name, e.g. "7fmOlUlwoNg_20.wav"): name generated clips after it
    to pair them for KL as audioldm_eval does.
    """
    if task is not None and task not in TEST_CAPTION_FILES:
        raise TestCaptionError(f"unknown task {task!r}: expected one of {sorted(TEST_CAPTION_FILES)} or None")
    rows: list[dict] = []
    folder = resources.files("baton_trainer") / "assets" / "eval"
    for name, filename in TEST_CAPTION_FILES.items():
        try:
            entries = json.loads((folder / filename).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise TestCaptionError(f"baton_trainer/assets/eval/{filename}: cannot be read ({exc})") from None
        for i, entry in enumerate(entries):
            caption = entry.get("captions") if isinstance(entry, dict) else None
            if not isinstance(caption, str) or not caption.strip():
                raise TestCaptionError(f"baton_trainer/assets/eval/{filename}: row {i} has no 'captions' text")
            reference = _file_name(str(entry.get("location", "")))
            rows.append({"caption_id": len(rows), "caption": caption.strip(), "task": name, "reference": reference})
    return [row for row in rows if task in (None, row["task"])]
