"""The `generate` stage: k clips per caption -> RUN/generations/ (wav files + metadata.jsonl).

    python -m baton_trainer generate --run_dir RUN --model declare-lab/tango-full-ft-audiocaps

Every clip has its own recorded seed, derived from (seed, caption_id, clip_index) alone, so any
clip can be regenerated on its own (its batch neighbours change it only by float rounding). The stage
resumes after a kill: a wav is written atomically before its metadata row is appended; on restart
metadata.jsonl is rebuilt from the complete wav files, and only the missing clips are made.

Under `accelerate launch --num_processes N` (or torchrun, several nodes included) the missing
clips are split between the processes, each made once under its recorded seed; the main process
waits for every rank (naming any that is late, `rank_timeout_s`) and writes metadata.jsonl from the
complete wavs, the same bytes as a one-process run. The folder's contract (file names, metadata
keys, settings checked on resume) is in `baton_trainer.generations`.

Imports inside the functions keep `python -m baton_trainer --help` fast: the CLI imports every
stage module at start.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..config import config_to_dict
from ..layout import RunLayout

RANK_MARKERS = ".ranks"  # inside the output folder: each process's progress and finish line


@dataclass
class GenerateConfig:
    run_dir: str = field(default="run", metadata={"help": "run folder: reads RUN/captions.jsonl, writes RUN/generations/"})
    model: str = field(
        default="declare-lab/tango-full-ft-audiocaps", metadata={"help": "model folder or Hub id (baton-trainer folder or original TANGO layout)"}
    )
    export: str | None = field(
        default=None, metadata={"help": "trained export (LoRA adapter or full UNet, a folder or Hub id) applied on top of the model, e.g. RUN/aligned"}
    )
    captions_file: str | None = field(
        default=None, metadata={"help": "captions JSONL (the prompts stage's format) or a plain text file, one caption per line; default RUN/captions.jsonl"}
    )
    out_dir: str | None = field(default=None, metadata={"help": "output folder; default RUN/generations"})
    split: Literal["train", "heldout", "all"] = field(default="train", metadata={"help": "which captions to generate for (plain text captions count as train)"})
    clips_per_caption: int = field(default=5, metadata={"help": "clips per caption (the paper: 5)"})
    num_inference_steps: int = field(default=200, metadata={"help": "sampling steps (the paper: 200)"})
    guidance_scale: float = field(default=3.0, metadata={"help": "classifier-free guidance scale (the paper: 3; 1 = no guidance)"})
    duration_s: float | None = field(default=None, metadata={"help": "clip length in seconds; default the model's own (TANGO: 10, the paper's)"})
    sampler: Literal["ddpm", "ddim", "dpmsolver++", "unipc"] | None = field(
        default=None, metadata={"help": "solver built from the model's scheduler config; default the model's own scheduler (TANGO: ddpm, the paper's)"}
    )
    batch_size: int = field(
        default=8, metadata={"help": "clips per sampling batch (changes a clip only by float rounding: batched kernels round by batch shape)"}
    )
    seed: int = field(default=0, metadata={"help": "base seed; each clip's seed derives from (seed, caption_id, clip_index)"})
    device: str | None = field(default=None, metadata={"help": "torch device; default cuda if available, else cpu"})
    dtype: Literal["fp32", "bf16", "fp16"] = field(default="fp32", metadata={"help": "weights dtype for sampling"})
    max_captions: int | None = field(default=None, metadata={"help": "only the first N selected captions (smoke runs)"})
    rank_timeout_s: float = field(
        default=3600.0, metadata={"help": "several processes: how long the main process waits for the others to finish before naming them"}
    )


def generate(config: GenerateConfig, backend=None) -> Path:
    """Make the missing clips; returns the output folder. `backend` skips loading `config.model`."""
    from tqdm.auto import tqdm

    from ..audio import save_wav
    from ..generations import (
        CLIP_DIR,
        METADATA,
        GenerationError,
        append_row,
        check_settings,
        clip_id,
        metadata_row,
        read_caption_rows,
        read_generations,
        rebuild_metadata,
    )
    from ..runtime import Ranks

    for key in ("clips_per_caption", "num_inference_steps", "batch_size"):
        if getattr(config, key) < 1:
            raise GenerationError(f"config key '{key}' must be at least 1, got {getattr(config, key)}")
    if not math.isfinite(config.guidance_scale):
        raise GenerationError(f"config key 'guidance_scale' must be a finite number, got {config.guidance_scale}")
    if config.duration_s is not None and not (math.isfinite(config.duration_s) and config.duration_s > 0):
        raise GenerationError(f"config key 'duration_s' must be a positive number, got {config.duration_s}")
    layout = RunLayout.of(config.run_dir, captions=config.captions_file, generations=config.out_dir)
    captions_path, out_dir = layout.captions, layout.generations
    captions = read_caption_rows(captions_path)
    selected = [r for r in captions if config.split == "all" or r["split"] == config.split]
    if config.max_captions is not None:
        selected = selected[: config.max_captions]
    if not selected:
        raise GenerationError(f"{captions_path}: no captions in split '{config.split}'")
    (out_dir / CLIP_DIR).mkdir(parents=True, exist_ok=True)

    model_name = config.model if not config.export else f"{config.model} + {config.export}"
    settings = {**config_to_dict(config), "captions_file": str(captions_path), "model": config.model}
    ranks = Ranks.current()
    if ranks.is_main:
        settings.pop("rank_timeout_s", None)
        check_settings(out_dir, settings)
        rebuild_metadata(out_dir, captions, config.seed, model_name)
        ranks.clear(out_dir / RANK_MARKERS)
    ranks.barrier()  # every rank now reads the same list of finished clips, and nobody has written yet
    done = {r["clip_id"] for r in read_generations(out_dir)}
    todo = [(row, k) for row in selected for k in range(config.clips_per_caption) if clip_id(row["caption_id"], k) not in done]
    total = len(selected) * config.clips_per_caption
    if not todo:
        if ranks.is_main:
            print(f"all {total} clips already in {out_dir}")
        return out_dir
    batches = ranks.shard_batches(todo, config.batch_size)
    mine = [clip for batch in batches for clip in batch]  # each missing clip is made by exactly one rank

    if backend is None and mine:
        from ..backends import load_backend
        from ..runtime import torch_dtype

        backend = load_backend(config.model, export=config.export, device=ranks.device_for(config.device), torch_dtype=torch_dtype(config.dtype))
    progress = tqdm(total=total, initial=total - len(todo), desc="generating clips", unit="clip", disable=not ranks.is_main)
    metadata_path = out_dir / METADATA
    try:
        done_here = 0
        for batch in batches:
            rows = [metadata_row(row, k, config.seed, model_name) for row, k in batch]
            lyrics = [r.get("lyrics", "") for r in rows]
            audio = backend.generate(
                [r["caption"] for r in rows],
                [r["seed"] for r in rows],
                num_inference_steps=config.num_inference_steps,
                guidance_scale=config.guidance_scale,
                duration_s=config.duration_s,
                **({"sampler": config.sampler} if config.sampler else {}),
                **({"lyrics": lyrics} if any(lyrics) else {}),
            )
            for row, wav in zip(rows, audio):
                save_wav(out_dir / row["file_name"], wav, backend.sample_rate)  # atomic: complete or absent
                if ranks.count == 1:  # several ranks: the main process lists the wavs at the end
                    append_row(metadata_path, row)
            progress.update(len(batch) * ranks.count)
            done_here += len(batch)
            ranks.progress(out_dir / RANK_MARKERS, done_here, len(mine))
    finally:
        progress.close()
    ranks.finish(out_dir / RANK_MARKERS, len(mine), len(mine), f"generate {out_dir}", config.rank_timeout_s)
    if ranks.is_main:
        # One listing of the complete wavs, sorted: byte for byte the same metadata for any number of processes.
        rebuild_metadata(out_dir, captions, config.seed, model_name)
        ranks.clear(out_dir / RANK_MARKERS)
        print(f"wrote {total} clips ({len(todo)} new) to {out_dir}")
    return out_dir
