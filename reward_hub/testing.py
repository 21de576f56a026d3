"""Synthetic rating data for tests and benchmarks of the reward stages (no downloads).

Clips are either a low tone (~300 Hz) or high band noise (~5 kHz); captions say "low ..." or
"high ...". Rule "match" rates a clip aligned when its sound matches its caption's word; rule
"audio" when it is the tone. A random tiny CLAP's text encoder does not generalise "low"/"high"
to unseen captions (every filler word moves the embedding as much), so tests of held-out
accuracy use rule "audio"; "match" is for a trained CLAP.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from baton_trainer.audio import save_wav, wav_bytes

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


def synthetic_rating_rows(
    n_captions: int = 24, clips_per_caption: int = 4, seed: int = 0, rule: str = "match"
) -> dict[str, list]:
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
    from baton_trainer.data import build_dataset

    path = Path(path)
    build_dataset(synthetic_rating_rows(**kwargs)).save_to_disk(str(path))
    return path


def save_synthetic_generations(folder: str | os.PathLike, n_captions: int = 4, clips_per_caption: int = 3, seed: int = 1) -> Path:
    """A RUN/generations/ folder (metadata.jsonl + clips/*.wav) following the generations contract."""
    import json

    folder = Path(folder)
    rows = []
    for caption_id in range(n_captions):
        word = ("low", "high")[caption_id % 2]
        caption = f"a {word} {_SUBJECTS[caption_id % len(_SUBJECTS)]} {_PLACES[caption_id % len(_PLACES)]}"
        for clip_index in range(clips_per_caption):
            clip_id = f"{caption_id:05d}_{clip_index}"
            kind = ("low", "high")[(caption_id + clip_index) % 2]
            save_wav(folder / "clips" / f"{clip_id}.wav", synthetic_clip(kind, seed * 1000 + caption_id * 10 + clip_index), SAMPLE_RATE)
            rows.append({
                "file_name": f"clips/{clip_id}.wav", "clip_id": clip_id, "caption": caption, "caption_id": caption_id,
                "clip_index": clip_index, "task": "integrity", "labels": [word], "seed": clip_index, "model": "synthetic",
            })
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return folder
