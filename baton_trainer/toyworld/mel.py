"""The toy world's view of audio: TANGO's log-mel (`baton_trainer.backends.mel`, centred frames),
as the oracle reads clips and the renderer places events, in (B, n_mels, frames) layout."""

from __future__ import annotations

import numpy as np
import torch

from ..audio import slaney_mel_filters
from ..backends.mel import MelConfig, MelFrontEnd


def mel_filters(config: MelConfig) -> np.ndarray:
    """The (n_mels, n_fft // 2 + 1) Slaney filter bank librosa builds by default (TANGO's)."""
    return slaney_mel_filters(config.sample_rate, config.n_fft, config.n_mels, config.fmin, config.fmax)


def mel_center_frequencies(config: MelConfig) -> np.ndarray:
    """Centre frequency (Hz) of each mel filter: where its triangle peaks."""
    freqs = np.linspace(0.0, config.sample_rate / 2, config.n_fft // 2 + 1)
    return freqs[mel_filters(config).argmax(axis=1)]


class LogMelSpectrogram(MelFrontEnd):
    """Waveforms (B, samples) or (samples,) -> TANGO log-mels (B, n_mels, frames) in float32, every
    sample framed (frames = samples // hop + 1); values are `log(clamp(mel magnitude, 1e-5))`."""

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        squeeze = waveforms.dim() == 1
        log_mel = super().forward(waveforms.unsqueeze(0) if squeeze else waveforms).transpose(1, 2)
        return log_mel[0] if squeeze else log_mel


_FRONT_ENDS: dict[MelConfig, LogMelSpectrogram] = {}


def cached_front_end(config: MelConfig) -> LogMelSpectrogram:
    """One front end per config, shared: it is stateless and costly to build."""
    if config not in _FRONT_ENDS:
        _FRONT_ENDS[config] = LogMelSpectrogram(config)
    return _FRONT_ENDS[config]


def log_mel_spectrogram(wav: np.ndarray, config: MelConfig | None = None) -> np.ndarray:
    """numpy convenience: (samples,) or (B, samples) -> (n_mels, frames) or (B, n_mels, frames)."""
    with torch.no_grad():
        return cached_front_end(config or MelConfig()).forward(torch.as_tensor(np.asarray(wav, dtype=np.float32))).numpy()
