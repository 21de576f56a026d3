"""The generations folder: how clips are named, seeded and listed (the `generate` stage writes it,
`baton_trainer.stages.generate`; annotate, export, label and evaluate read it through here).

Every clip has its own recorded seed, derived from (seed, caption_id, clip_index) alone, so any
clip can be regenerated on its own and a clip does not depend on its batch neighbours. The stage
resumes after a kill: a wav is written atomically before its metadata row is appended; on restart
metadata.jsonl is rebuilt from the complete wav files, and only the missing clips are made.

Output (the contract other stages read):

    generations/metadata.jsonl   one row per clip: file_name, clip_id, caption, caption_id,
                                 clip_index, task, labels, seed, model (and lyrics and
                                 reference, where its caption has them)
    generations/clips/00012_3.wav   16-bit PCM, mono, at the model's sample rate (16 kHz for TANGO)
    generations/generation_config.json   the settings, checked on resume (clips are never mixed
                                         from different models or sampling settings)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from .atomic import atomic_write_bytes
from .captions import CaptionError, read_captions
from .textfiles import TextFileError, read_jsonl, read_text

METADATA = "metadata.jsonl"
SETTINGS_FILE = "generation_config.json"
CLIP_DIR = "clips"
CLIP_NAME = re.compile(r"^(\d+)_(\d+)\.wav$")
# Settings that change what a clip sounds like: a resumed run must use the same ones.
CONTENT_KEYS = ("model", "export", "num_inference_steps", "guidance_scale", "duration_s", "sampler", "seed", "dtype")


class GenerationError(ValueError):
    """A captions file, output folder or setting that cannot be used; the message names it."""


def clip_seed(seed: int, caption_id: int, clip_index: int) -> int:
    """The seed of one clip: a hash of (base seed, caption_id, clip_index), in [0, 2**31)."""
    digest = hashlib.sha256(f"baton-clip:{int(seed)}:{int(caption_id)}:{int(clip_index)}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def clip_id(caption_id: int, clip_index: int) -> str:
    return f"{int(caption_id):05d}_{int(clip_index)}"


def read_caption_rows(path: str | Path) -> list[dict[str, Any]]:
    """Captions JSONL (checked by the prompts stage's reader) or plain text, one caption per line.

    Plain text rows get caption_id = their line number - 1, task "", labels [], split "train".
    Errors name the file and line."""

    path = Path(path)
    if not path.is_file():
        raise GenerationError(f"captions file not found: {path}")
    lines = read_text(path, "captions file").splitlines()
    first = next((line.strip() for line in lines if line.strip()), None)
    if first is None:
        raise GenerationError(f"{path}: no captions (the file is empty)")
    if path.suffix in (".jsonl", ".json") or first.startswith("{"):
        try:
            rows = read_captions(path)
        except (CaptionError, TextFileError) as exc:
            raise GenerationError(str(exc)) from None
        seen: dict[int, int] = {}
        numbered = [(n, line) for n, line in enumerate(lines, start=1) if line.strip()]
        for (number, _), row in zip(numbered, rows):
            if not isinstance(row["caption_id"], int) or isinstance(row["caption_id"], bool) or row["caption_id"] < 0:
                raise GenerationError(f"{path}: line {number}: caption_id must be a non-negative integer, got {row['caption_id']!r}")
            if row["caption_id"] in seen:
                raise GenerationError(f"{path}: line {number}: caption_id {row['caption_id']} repeats line {seen[row['caption_id']]}")
            seen[row["caption_id"]] = number
        return rows
    rows = []
    for number, line in enumerate(lines, start=1):
        caption = line.strip()
        if not caption:
            continue
        if caption.startswith("{"):
            raise GenerationError(f"{path}: line {number} looks like JSON in a plain text captions file; use a .jsonl file")
        rows.append({"caption_id": number - 1, "caption": caption, "task": "", "labels": [], "split": "train"})
    return rows


def check_settings(out_dir: Path, settings: dict[str, Any]) -> None:
    path = out_dir / SETTINGS_FILE
    if path.is_file():
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):  # a damaged settings file is rewritten below
            previous = None
        if isinstance(previous, dict):
            for key in CONTENT_KEYS:
                if key in previous and previous[key] != settings[key]:
                    raise GenerationError(
                        f"{path}: the clips there were made with {key}={previous[key]!r}, this run has {key}={settings[key]!r}; "
                        "use another out_dir (or delete the folder) so clips from different settings are not mixed"
                    )
    atomic_write_bytes(path, (json.dumps(settings, indent=2) + "\n").encode("utf-8"))


def metadata_row(caption_row: dict[str, Any], clip_index: int, seed: int, model: str) -> dict[str, Any]:
    cid = clip_id(caption_row["caption_id"], clip_index)
    return {
        "file_name": f"{CLIP_DIR}/{cid}.wav",
        "clip_id": cid,
        "caption": caption_row["caption"],
        "caption_id": int(caption_row["caption_id"]),
        "clip_index": int(clip_index),
        "task": caption_row["task"],
        "labels": list(caption_row["labels"]),
        "seed": clip_seed(seed, caption_row["caption_id"], clip_index),
        "model": model,
        # optional, where its caption has them: lyrics (a model conditioned on them), the reference clip (evaluation)
        **{key: caption_row[key] for key in ("lyrics", "reference") if caption_row.get(key)},
    }


GENERATION_KEYS = ("file_name", "clip_id", "caption", "task", "labels", "caption_id", "clip_index")


def read_generations(folder: str | Path) -> list[dict[str, Any]]:
    """The rows of `folder/metadata.jsonl`, checked against the generations contract; errors name
    the file and line. Every stage that reads generated clips reads them through this."""
    metadata = Path(folder) / METADATA
    if not metadata.is_file():
        raise GenerationError(f"{metadata}: not found (run the generate stage first)")
    rows = []
    for number, row in read_jsonl(metadata, "generations metadata"):
        for key in GENERATION_KEYS:
            if key not in row:
                raise GenerationError(f"{metadata}: line {number} lacks the key '{key}'")
        file_name = Path(str(row["file_name"]))
        if file_name.is_absolute() or ".." in file_name.parts:
            raise GenerationError(f"{metadata}: line {number}: file_name {str(file_name)!r} must be relative to the generations folder")
        rows.append(row)
    return rows


def rebuild_metadata(out_dir: Path, captions: list[dict[str, Any]], seed: int, model: str) -> set[str]:
    """Rewrite metadata.jsonl from the complete wav files; returns the clip ids that are done.

    Wavs are written atomically, so a wav on disk is complete; a row appended after a wav may be
    missing or half-written after a kill, and is rebuilt here. Leftover temporary files are removed."""
    clips = out_dir / CLIP_DIR
    by_id = {int(row["caption_id"]): row for row in captions}
    rows = []
    if clips.is_dir():
        for tmp in clips.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        for wav in sorted(clips.iterdir()):
            match = CLIP_NAME.match(wav.name)
            if match and int(match.group(1)) in by_id:
                rows.append(metadata_row(by_id[int(match.group(1))], int(match.group(2)), seed, model))
    rows.sort(key=lambda r: (r["caption_id"], r["clip_index"]))
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    atomic_write_bytes(out_dir / METADATA, data.encode("utf-8"))
    return {r["clip_id"] for r in rows}


def append_row(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
