"""Small data makers shared by the tests (tiny wav clips and preference datasets)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from baton_trainer.audio import wav_bytes
from baton_trainer.data import PRETRAIN_FEATURES, build_dataset


def tone(freq: float, seconds: float = 0.32, sr: int = 16000, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    noise = np.random.default_rng(seed).normal(0, 0.01, t.shape)
    return (0.3 * np.sin(2 * np.pi * freq * t) + noise).astype(np.float32)


def preference_rows(n: int, seed: int = 0, seconds: float = 0.32) -> dict:
    rng = np.random.default_rng(seed)
    captions = [f"a dog barks then {w}" for w in ("beep", "hum", "hiss", "click", "chirp", "rumble", "siren", "music")]
    feedback = rng.integers(0, 2, n)
    return {
        "caption": [captions[i % len(captions)] for i in range(n)],
        "audio": [{"bytes": wav_bytes(tone(200 + 150 * i, seconds, seed=i), 16000), "path": f"clip{i}.wav"} for i in range(n)],
        "feedback": feedback.tolist(),
        "reward": feedback.astype(float).tolist(),
        "source": ["human"] * n,
        "task": ["temporal" if i % 2 else "integrity" for i in range(n)],
        "labels": [["dog", "beep"]] * n,
        "caption_id": list(range(n)),
        "clip_index": [0] * n,
        "annotator": ["tester"] * n,
    }


def save_preference(folder: Path, n: int = 8, seed: int = 0, **overrides) -> Path:
    rows = preference_rows(n, seed)
    rows.update(overrides)
    build_dataset(rows).save_to_disk(str(folder))
    return folder


def save_pretrain(folder: Path, n: int = 8) -> Path:
    rows = preference_rows(n, seed=99)
    build_dataset({"caption": rows["caption"], "audio": rows["audio"]}, PRETRAIN_FEATURES).save_to_disk(str(folder))
    return folder
