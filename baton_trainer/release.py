"""Reading the data released with the BATON paper (github Hannieliao/Baton; a copy is in the
developers' `shared/baton_release/`).

The release holds JSON (or JSON lines) rows `{"dataset": "2label_HA", "location": ".../0088_<caption>_0.wav",
"captions": ..., "feedback": 0|1}`; reward-model files carry `"SED": float` instead of feedback;
`grouped_ratings_*.json` repeat the human ratings grouped by caption; the AudioCaps lists are rows
without either (pretraining captions). Audio was not released in a reachable place: `location`
is resolved against a folder the user gives, by file name. The release has inconsistencies (a
file's folder can disagree with its `dataset` field): they are reported, not fatal.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

from tqdm.auto import tqdm

from .data import PREFERENCE_FEATURES, PreferenceDataError
from .textfiles import read_text

_FILE_NAME = re.compile(r"^(?P<caption_id>\d+)_(?P<caption>.*)_(?P<clip>\d+)\.wav$")


def read_release_file(path: Path) -> Any:
    """A release file's content: one JSON document, or JSON lines."""
    text = read_text(path, "release file").strip()
    if not text:
        raise PreferenceDataError(f"{path}: empty file")
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    rows = []
    for line_no, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise PreferenceDataError(f"{path}: line {line_no} is not JSON ({exc.msg})") from None
    return rows


def release_rows(path: Path) -> tuple[str, list[dict[str, Any]]]:
    """One release file as rows: (kind, rows) with kind 'preference' or 'pretrain'."""
    data = read_release_file(path)
    if isinstance(data, dict) and "grouped_ratings" in data:
        task = "temporal" if "3label" in path.name else "integrity"
        rows = [
            {"location": name, "captions": caption, "feedback": int(score), "dataset": f"{task}_grouped"}
            for caption, clips in data["grouped_ratings"].items()
            for name, score in clips.items()
        ]
        return "preference", rows
    if not isinstance(data, list):
        raise PreferenceDataError(f"{path}: expected a JSON list, JSON lines, or a grouped_ratings object")
    if data and all("feedback" not in r and "SED" not in r for r in data):
        return "pretrain", data
    return "preference", data


def task_of(dataset_field: str, path: Path) -> str:
    """'temporal' for the 3-label files, 'integrity' for the 2-label ones."""
    text = f"{dataset_field} {path.name}"
    return "temporal" if "3label" in text or "temporal" in text else "integrity"


def read_release(
    files: list[str], audio_index: dict[str, Path], missing_audio: Literal["drop", "keep", "error"] = "drop"
) -> tuple[dict[str, list[Any]], dict[str, list[Any]], dict[str, Any]]:
    """Release files -> (preference columns, pretrain columns, report). `audio_index` maps a wav's
    file name to where it is; rows whose wav is missing are dropped, kept without audio, or an error."""
    report: dict[str, Any] = {"files": {}, "missing_audio": [], "inconsistencies": [], "duplicates": 0}
    seen: set[tuple[str, str]] = set()  # the grouped_ratings files repeat the *_HA ratings
    preference: dict[str, list[Any]] = {k: [] for k in PREFERENCE_FEATURES}
    pretrain: dict[str, list[Any]] = {"caption": [], "audio": []}
    for file_name in files:
        path = Path(file_name)
        if not path.is_file():
            raise PreferenceDataError(f"release file not found: {path}")
        kind, rows = release_rows(path)
        counts = {"rows": len(rows), "imported": 0, "missing_audio": 0, "duplicates": 0, "kind": kind}
        for i, row in enumerate(tqdm(rows, desc=f"import {path.name}", leave=False)):
            caption = row.get("captions") or row.get("caption")
            location = str(row.get("location", ""))
            base = Path(location).name
            if not isinstance(caption, str) or not caption.strip():
                raise PreferenceDataError(f"{path}: row {i}: empty caption")
            key = (kind, base if kind == "preference" else location)
            if key in seen:
                counts["duplicates"] += 1
                report["duplicates"] += 1
                continue
            seen.add(key)
            dataset_field = str(row.get("dataset", ""))
            folder = Path(location).parent.name
            if dataset_field[:6] in ("2label", "3label") and folder and not folder.startswith(dataset_field[:6]):
                report["inconsistencies"].append(f"{path.name} row {i}: dataset '{dataset_field}' but folder '{folder}'")
            found = audio_index.get(base)
            if found is None:
                counts["missing_audio"] += 1
                report["missing_audio"].append(f"{path.name} row {i}: {base}")
                if missing_audio == "error":
                    raise PreferenceDataError(f"{path}: row {i}: audio file '{base}' not found")
                if missing_audio == "drop":
                    continue
            audio = {"path": str(found), "bytes": found.read_bytes()} if found else None
            counts["imported"] += 1
            if kind == "pretrain":
                pretrain["caption"].append(caption)
                pretrain["audio"].append(audio)
                continue
            if "feedback" in row:
                feedback = int(row["feedback"])
                reward, source = float(feedback), "human"
            else:
                feedback, reward, source = -1, float(row["SED"]), "reward_model"
            match = _FILE_NAME.match(base)
            preference["caption"].append(caption)
            preference["audio"].append(audio)
            preference["feedback"].append(feedback)
            preference["reward"].append(reward)
            preference["source"].append(source)
            preference["task"].append(task_of(dataset_field, path))
            preference["labels"].append([])
            preference["caption_id"].append(int(match["caption_id"]) if match else -1)
            preference["clip_index"].append(int(match["clip"]) if match else 0)
            preference["annotator"].append("baton_release" if source == "human" else "")
        report["files"][path.name] = counts
    return preference, pretrain, report
