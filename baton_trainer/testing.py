"""Tiny models made of the real classes, and synthetic data, for tests and benchmarks (no downloads).

- `TINY_BACKENDS`: every backend's tiny model (its `tiny` classmethod, in its own file: a few thousand
  parameters per component of every real class), saved as a pipeline folder; `tiny_tango()`,
  `save_tiny_tango(folder)` and the like name them for the backends the tests name most.
- `save_tiny_clap()`: a tiny random `ClapModel` + `ClapProcessor` (a real byte-level BPE tokenizer
  and the real feature extractor) that takes 10 s clips at 48 kHz.
- `synthetic_rating_rows()` and friends: rating data for the reward stages. Clips are a low tone
  (~300 Hz) or high band noise (~5 kHz); captions say "low ..." or "high ...". Rule "match" rates a
  clip aligned when its sound matches its caption's word; rule "audio" when it is the tone. A
  random tiny CLAP's text encoder does not generalise "low"/"high" to unseen captions, so tests of
  held-out accuracy use rule "audio"; "match" is for a trained CLAP.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import numpy as np
import torch
from transformers import (
    ClapModel,
    ClapProcessor,
)

from .audio import save_wav, wav_bytes
from .backends import BACKENDS, backend_class
from .clap import clap_feature_extractor, train_clap_tokenizer
from .tiny_parts import TINY_CLAP_CORPUS, tiny_clap_config


def tiny_backend(module: str, seed: int = 0):
    """The tiny model of the backend in `baton_trainer/backends/<module>.py` (its `tiny`)."""
    return backend_class(_PIPELINE_OF[module]).tiny(seed)


def save_tiny_backend(module: str, folder: str | Path | None = None, seed: int = 0) -> Path:
    """That tiny model saved as its pipeline folder (its `save_tiny`)."""
    return backend_class(_PIPELINE_OF[module]).save_tiny(folder, seed)


# Every backend's tiny model, by its module's name: what the tests run each backend's checks on. A
# backend added to BACKENDS is here with nothing else to edit.
_PIPELINE_OF = {target.split(":")[0].rsplit(".", 1)[1]: pipeline for pipeline, target in BACKENDS.items()}
TINY_BACKENDS = {module: functools.partial(save_tiny_backend, module) for module in _PIPELINE_OF}

# Shorthands for the backends the tests name most
tiny_tango, save_tiny_tango = functools.partial(tiny_backend, "tango"), functools.partial(save_tiny_backend, "tango")
tiny_audioldm2, save_tiny_audioldm2 = functools.partial(tiny_backend, "audioldm2"), functools.partial(save_tiny_backend, "audioldm2")
tiny_stable_audio, save_tiny_stable_audio = functools.partial(tiny_backend, "stable_audio"), functools.partial(save_tiny_backend, "stable_audio")
tiny_stable_audio_3, save_tiny_stable_audio_3 = functools.partial(tiny_backend, "stable_audio_3"), functools.partial(save_tiny_backend, "stable_audio_3")
tiny_longcat_audio_dit = functools.partial(tiny_backend, "longcat_audio_dit")
save_tiny_longcat_audio_dit = functools.partial(save_tiny_backend, "longcat_audio_dit")
tiny_ace_step, save_tiny_ace_step = functools.partial(tiny_backend, "ace_step"), functools.partial(save_tiny_backend, "ace_step")


# ----------------------------------------------------------------------------------------------
# Tiny CLAP


def save_tiny_clap(path: str | os.PathLike, seed: int = 0, projection_dim: int = 32) -> Path:
    """Write a tiny random `ClapModel` + `ClapProcessor` to `path` (save_pretrained) for tests."""

    path = Path(path)
    tokenizer = train_clap_tokenizer([line for line in TINY_CLAP_CORPUS.splitlines() if line.strip()], vocab_size=600, model_max_length=77)
    torch.manual_seed(seed)
    model = ClapModel(tiny_clap_config(projection_dim=projection_dim, vocab_size=len(tokenizer))).eval()
    processor = ClapProcessor(feature_extractor=clap_feature_extractor(), tokenizer=tokenizer)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


# ----------------------------------------------------------------------------------------------
# Synthetic ratings

# Clips fill CLAP's whole 10 s window: a short clip padded with silence is mostly silence to a
# random tiny CLAP, and every clip then gets nearly the same embedding.
SAMPLE_RATE = 16_000
_SUBJECTS = ["hum", "drone", "buzz", "whistle", "tone", "rumble", "hiss", "signal", "noise", "sound", "beep", "chime"]
_PLACES = ["in a room", "outside", "far away", "nearby", "in a hall", "on a street", "at night", "in the rain"]


def synthetic_clip(kind: str, seed: int, seconds: float = 10.0, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    if kind == "low":
        freq = rng.uniform(200, 400)
        wav = 0.5 * np.sin(2 * np.pi * freq * t)
    elif kind == "high":
        # Band-limited noise around 5 kHz: white noise times a 5 kHz carrier.
        wav = 0.3 * rng.standard_normal(t.size) * np.sin(2 * np.pi * rng.uniform(4500, 5500) * t)
    else:
        raise ValueError(f"unknown clip kind {kind!r}")
    return (wav + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def synthetic_rating_rows(n_captions: int = 24, clips_per_caption: int = 4, seed: int = 0, rule: str = "match") -> dict[str, list]:
    """Columns of a preference dataset (PREFERENCE_FEATURES).

    rule "match": aligned when the clip's sound matches the caption's low/high word (needs a text
    encoder that generalises across captions: a trained CLAP). rule "audio": aligned when the clip
    is the low tone, whatever the caption; separable for a random tiny CLAP too."""
    rng = np.random.default_rng(seed)
    columns: dict[str, list] = {k: [] for k in ("caption", "audio", "feedback", "reward", "source", "task", "labels", "caption_id", "clip_index", "annotator")}
    for caption_id in range(n_captions):
        word = ("low", "high")[caption_id % 2]
        caption = f"a {word} {_SUBJECTS[caption_id // 2 % len(_SUBJECTS)]} {_PLACES[caption_id % len(_PLACES)]}"
        for clip_index in range(clips_per_caption):
            kind = ("low", "high")[int(rng.integers(2))]
            wav = synthetic_clip(kind, seed=seed * 100_000 + caption_id * 100 + clip_index)
            label = int(kind == word) if rule == "match" else int(kind == "low")
            columns["caption"].append(caption)
            columns["audio"].append({"bytes": wav_bytes(wav, SAMPLE_RATE), "path": f"{caption_id:05d}_{clip_index}.wav"})
            columns["feedback"].append(label)
            columns["reward"].append(float(label))
            columns["source"].append("human")
            columns["task"].append(("integrity", "temporal")[caption_id % 3 == 0])
            columns["labels"].append([word])
            columns["caption_id"].append(caption_id)
            columns["clip_index"].append(clip_index)
            columns["annotator"].append("synthetic")
    return columns


def save_synthetic_ratings(path: str | os.PathLike, **kwargs) -> Path:
    """A preference dataset folder (save_to_disk) of synthetic human ratings."""
    from .data import build_dataset  # lazy: toyworld.models (and so the Space) imports this module and needs no `datasets`

    path = Path(path)
    build_dataset(synthetic_rating_rows(**kwargs)).save_to_disk(str(path))
    return path


def save_synthetic_generations(folder: str | os.PathLike, n_captions: int = 4, clips_per_caption: int = 3, seed: int = 1) -> Path:
    """A RUN/generations/ folder (metadata.jsonl + clips/*.wav) following the generations contract."""

    folder = Path(folder)
    rows = []
    for caption_id in range(n_captions):
        word = ("low", "high")[caption_id % 2]
        caption = f"a {word} {_SUBJECTS[caption_id % len(_SUBJECTS)]} {_PLACES[caption_id % len(_PLACES)]}"
        for clip_index in range(clips_per_caption):
            clip_id = f"{caption_id:05d}_{clip_index}"
            kind = ("low", "high")[(caption_id + clip_index) % 2]
            save_wav(folder / "clips" / f"{clip_id}.wav", synthetic_clip(kind, seed * 1000 + caption_id * 10 + clip_index), SAMPLE_RATE)
            rows.append(
                {
                    "file_name": f"clips/{clip_id}.wav",
                    "clip_id": clip_id,
                    "caption": caption,
                    "caption_id": caption_id,
                    "clip_index": clip_index,
                    "task": "integrity",
                    "labels": [word],
                    "seed": clip_index,
                    "model": "synthetic",
                }
            )
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return folder
