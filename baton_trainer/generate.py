"""The `generate` stage: k clips per caption -> RUN/generations/ (wav files + metadata.jsonl).

    python -m baton_trainer generate --run_dir RUN --model declare-lab/tango-full-ft-audiocaps

Every clip has its own recorded seed, derived from (seed, caption_id, clip_index) alone, so any
clip can be regenerated on its own and a clip does not depend on its batch neighbours. The stage
resumes after a kill: a wav is written atomically before its metadata row is appended; on restart
metadata.jsonl is rebuilt from the complete wav files, and only the missing clips are made.

Output (the contract other stages read):

    generations/metadata.jsonl   one row per clip: file_name, clip_id, caption, caption_id,
                                 clip_index, task, labels, seed, model
    generations/clips/00012_3.wav   16-bit PCM, mono, at the model's sample rate (16 kHz for TANGO)
    generations/generation_config.json   the settings, checked on resume (clips are never mixed
                                         from different models or sampling settings)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .audio import atomic_write_bytes, save_wav
from .config import config_to_dict

METADATA = "metadata.jsonl"
SETTINGS_FILE = "generation_config.json"
CLIP_DIR = "clips"
CLIP_NAME = re.compile(r"^(\d+)_(\d+)\.wav$")
# Settings that change what a clip sounds like: a resumed run must use the same ones.
CONTENT_KEYS = ("model", "export", "num_inference_steps", "guidance_scale", "duration_s", "sampler", "seed", "dtype")


class GenerationError(ValueError):
    """A captions file, output folder or setting that cannot be used; the message names it."""


@dataclass
class GenerateConfig:
    run_dir: str = field(default="run", metadata={"help": "run folder: reads RUN/captions.jsonl, writes RUN/generations/"})
    model: str = field(default="declare-lab/tango-full-ft-audiocaps", metadata={"help": "model folder or Hub id (baton-trainer folder or original TANGO layout)"})
    export: str | None = field(default=None, metadata={"help": "trained export (LoRA adapter or full UNet) applied on top of the model, e.g. RUN/aligned"})
    captions_file: str | None = field(default=None, metadata={"help": "captions JSONL (the prompts stage's format) or a plain text file, one caption per line; default RUN/captions.jsonl"})
    out_dir: str | None = field(default=None, metadata={"help": "output folder; default RUN/generations"})
    split: Literal["train", "heldout", "all"] = field(default="train", metadata={"help": "which captions to generate for (plain text captions count as train)"})
    clips_per_caption: int = field(default=5, metadata={"help": "clips per caption (the paper: 5)"})
    num_inference_steps: int = field(default=200, metadata={"help": "sampling steps (the paper: 200)"})
    guidance_scale: float = field(default=3.0, metadata={"help": "classifier-free guidance scale (the paper: 3; 1 = no guidance)"})
    duration_s: float | None = field(default=None, metadata={"help": "clip length in seconds; default the model's own (TANGO: 10, the paper's)"})
    sampler: Literal["ddpm", "ddim"] | None = field(default=None, metadata={"help": "sampler; default the model's own (TANGO: ddpm)"})
    batch_size: int = field(default=8, metadata={"help": "clips per sampling batch (does not change any clip)"})
    seed: int = field(default=0, metadata={"help": "base seed; each clip's seed derives from (seed, caption_id, clip_index)"})
    device: str | None = field(default=None, metadata={"help": "torch device; default cuda if available, else cpu"})
    dtype: Literal["fp32", "bf16", "fp16"] = field(default="fp32", metadata={"help": "weights dtype for sampling"})
    max_captions: int | None = field(default=None, metadata={"help": "only the first N selected captions (smoke runs)"})


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
    from .prompts import CaptionError, read_captions

    path = Path(path)
    if not path.is_file():
        raise GenerationError(f"captions file not found: {path}")
    lines = path.read_text(encoding="utf-8").splitlines()
    first = next((line.strip() for line in lines if line.strip()), None)
    if first is None:
        raise GenerationError(f"{path}: no captions (the file is empty)")
    if path.suffix in (".jsonl", ".json") or first.startswith("{"):
        try:
            rows = read_captions(path)
        except CaptionError as exc:
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


def _check_settings(out_dir: Path, settings: dict[str, Any]) -> None:
    path = out_dir / SETTINGS_FILE
    if path.is_file():
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
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
    }


GENERATION_KEYS = ("file_name", "clip_id", "caption", "task", "labels", "caption_id", "clip_index")


def read_generations(folder: str | Path) -> list[dict[str, Any]]:
    """The rows of `folder/metadata.jsonl`, checked against the generations contract; errors name
    the file and line. Every stage that reads generated clips reads them through this."""
    metadata = Path(folder) / METADATA
    if not metadata.is_file():
        raise GenerationError(f"{metadata}: not found (run the generate stage first)")
    rows = []
    for number, line in enumerate(metadata.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise GenerationError(f"{metadata}: line {number} is not valid JSON ({exc.msg})") from None
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


def _append_row(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _select_device(name: str | None):
    import torch

    return torch.device(name) if name else torch.device("cuda" if torch.cuda.is_available() else "cpu")


DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def load_backend(config: GenerateConfig):
    import torch

    from .backends.tango import TangoModel

    device = _select_device(config.device)
    return TangoModel.from_pretrained(config.model, export=config.export, device=device, torch_dtype=getattr(torch, DTYPES[config.dtype]))


def generate(config: GenerateConfig, backend=None) -> Path:
    """Run the `generate` stage; returns the output folder. `backend` skips loading `config.model`."""
    from tqdm.auto import tqdm

    for key in ("clips_per_caption", "num_inference_steps", "batch_size"):
        if getattr(config, key) < 1:
            raise GenerationError(f"config key '{key}' must be at least 1, got {getattr(config, key)}")
    if config.duration_s is not None and config.duration_s <= 0:
        raise GenerationError(f"config key 'duration_s' must be positive, got {config.duration_s}")
    run_dir = Path(config.run_dir)
    captions_path = Path(config.captions_file) if config.captions_file else run_dir / "captions.jsonl"
    captions = read_caption_rows(captions_path)
    selected = [r for r in captions if config.split == "all" or r["split"] == config.split]
    if config.max_captions is not None:
        selected = selected[: config.max_captions]
    if not selected:
        raise GenerationError(f"{captions_path}: no captions in split '{config.split}'")
    out_dir = Path(config.out_dir) if config.out_dir else run_dir / "generations"
    (out_dir / CLIP_DIR).mkdir(parents=True, exist_ok=True)

    model_name = config.model if not config.export else f"{config.model} + {config.export}"
    settings = {**config_to_dict(config), "captions_file": str(captions_path), "model": config.model}
    _check_settings(out_dir, settings)
    done = rebuild_metadata(out_dir, captions, config.seed, model_name)
    todo = [(row, k) for row in selected for k in range(config.clips_per_caption) if clip_id(row["caption_id"], k) not in done]
    total = len(selected) * config.clips_per_caption
    if not todo:
        print(f"all {total} clips already in {out_dir}")
        return out_dir

    if backend is None:
        backend = load_backend(config)
    progress = tqdm(total=total, initial=total - len(todo), desc="generating clips", unit="clip")
    metadata_path = out_dir / METADATA
    try:
        for start in range(0, len(todo), config.batch_size):
            batch = todo[start : start + config.batch_size]
            rows = [metadata_row(row, k, config.seed, model_name) for row, k in batch]
            audio = backend.generate(
                [r["caption"] for r in rows],
                [r["seed"] for r in rows],
                num_inference_steps=config.num_inference_steps,
                guidance_scale=config.guidance_scale,
                duration_s=config.duration_s,
                **({"sampler": config.sampler} if config.sampler else {}),
            )
            for row, wav in zip(rows, audio):
                save_wav(out_dir / row["file_name"], wav, backend.sample_rate)  # atomic: complete or absent
                _append_row(metadata_path, row)
                progress.update(1)
    finally:
        progress.close()
    print(f"wrote {total} clips ({len(todo)} new) to {out_dir}")
    return out_dir


__all__ = ["GenerateConfig", "GenerationError", "clip_id", "clip_seed", "generate", "read_caption_rows", "rebuild_metadata"]
