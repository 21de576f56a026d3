"""The degradations that validate the toy quality judge (`quality.py`): clicks, white noise, hard
clipping, dropouts (`quality.add_*`), and Griffin-Lim resynthesis through the toy vocoder, which
needs torch; so they live here, and the judge itself stays NumPy/SciPy only.

    degraded = degrade(clean, 16000, "griffin_lim", {"n_iter": 8})
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from ..toyworld import GriffinLimVocoder
from ..toyworld.mel import log_mel_spectrogram
from . import quality


def griffin_lim_resynthesis(clips: np.ndarray, n_iter: int) -> np.ndarray:
    """The clips' log-mels (the toy models' mel front end) inverted by the toy vocoder with `n_iter`
    Griffin-Lim iterations: the vocoder degradation of the validation."""
    mel = torch.from_numpy(log_mel_spectrogram(clips)).transpose(1, 2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # clip by clip; a second thread only contends on a busy 2-core machine
    try:
        return GriffinLimVocoder(n_iter=int(n_iter))(mel).numpy()[:, : clips.shape[1]].astype(np.float32)
    finally:
        torch.set_num_threads(threads)


def degrade(clips: np.ndarray, sample_rate: int, kind: str, setting: Mapping[str, float], seed: int = 0) -> np.ndarray:
    """One of the validation's degradations (`VALIDATION_LEVELS` lists them with their settings)."""
    if kind == "clicks":
        return quality.add_clicks(clips, sample_rate, setting["rate_hz"], setting["amplitude"], seed=seed)
    if kind == "noise":
        return quality.add_white_noise(clips, setting["snr_db"], seed=seed)
    if kind == "clipping":
        return quality.hard_clip(clips, setting["drive_db"])
    if kind == "griffin_lim":
        return griffin_lim_resynthesis(clips, setting["n_iter"])
    if kind == "dropouts":
        return quality.add_dropouts(clips, sample_rate, setting["fraction"], seed=seed)
    raise quality.QualityInputError(f"unknown degradation {kind!r}: one of clicks, noise, clipping, griffin_lim, dropouts")
