"""TANGO's mel front end and a Griffin-Lim vocoder that inverts it, as torch modules.

TANGO (through AudioLDM's `TacotronSTFT`) takes the magnitude of a centred, reflect-padded Hann
STFT (n_fft 1024, hop 160, win 1024 at 16 kHz), projects it on 64 Slaney mel filters between 0
and 8 kHz (librosa's default filter bank), and compresses with `log(clamp(x, 1e-5))`. The toy
world uses the same front end so that the toy model sees mels shaped like the real one's.

`GriffinLimVocoder` maps such log-mels back to audio: mel -> linear magnitude with the
(non-negative) pseudo-inverse of the filter bank, then fast Griffin-Lim (Perraudin et al. 2013,
momentum 0.99) from a fixed initial phase, so the same mel always gives the same waveform. It is
the toy model's stand-in for TANGO's HiFi-GAN: no weights, no training, deterministic.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..audio import slaney_mel_filters

LOG_MEL_FLOOR = 1e-5  # TANGO's dynamic-range compression clamps magnitudes here before the log


@dataclass(frozen=True)
class MelConfig:
    """TANGO's `stft_config.json`, plus the Griffin-Lim settings of the toy vocoder."""

    sample_rate: int = field(default=16000, metadata={"help": "audio sample rate in Hz"})
    n_fft: int = field(default=1024, metadata={"help": "STFT size (TANGO: filter_length 1024)"})
    hop_length: int = field(default=160, metadata={"help": "STFT hop in samples (10 ms at 16 kHz)"})
    win_length: int = field(default=1024, metadata={"help": "Hann window length in samples"})
    n_mels: int = field(default=64, metadata={"help": "number of mel bins"})
    f_min: float = field(default=0.0, metadata={"help": "lowest mel filter edge in Hz"})
    f_max: float = field(default=8000.0, metadata={"help": "highest mel filter edge in Hz"})
    n_iter: int = field(default=32, metadata={"help": "Griffin-Lim iterations"})
    momentum: float = field(default=0.99, metadata={"help": "fast Griffin-Lim momentum (0 = plain Griffin-Lim)"})

    def __post_init__(self) -> None:
        if self.win_length > self.n_fft:
            raise ValueError(f"MelConfig: win_length {self.win_length} exceeds n_fft {self.n_fft}")
        if not 0 <= self.f_min < self.f_max <= self.sample_rate / 2:
            raise ValueError(
                f"MelConfig: need 0 <= f_min < f_max <= sample_rate/2, got f_min {self.f_min}, "
                f"f_max {self.f_max}, sample_rate {self.sample_rate}"
            )
        if self.n_iter < 0 or not 0 <= self.momentum < 1:
            raise ValueError(f"MelConfig: n_iter must be >= 0 and momentum in [0, 1), got {self.n_iter}, {self.momentum}")

    def to_dict(self) -> dict:
        return asdict(self)


def mel_filters(config: MelConfig) -> np.ndarray:
    """The (n_mels, n_fft // 2 + 1) Slaney filter bank librosa builds by default (TANGO's)."""
    return slaney_mel_filters(config.sample_rate, config.n_fft, config.n_mels, config.f_min, config.f_max)


def mel_center_frequencies(config: MelConfig) -> np.ndarray:
    """Centre frequency (Hz) of each mel filter: where its triangle peaks."""
    bank = mel_filters(config)
    freqs = np.linspace(0.0, config.sample_rate / 2, config.n_fft // 2 + 1)
    return freqs[bank.argmax(axis=1)]


class LogMelSpectrogram(torch.nn.Module):
    """Waveforms (B, samples) or (samples,) -> TANGO log-mels (B, n_mels, frames) in float32.

    frames = samples // hop + 1 (centred STFT); values are `log(clamp(mel magnitude, 1e-5))`.
    """

    def __init__(self, config: MelConfig | None = None):
        super().__init__()
        self.config = config or MelConfig()
        self.register_buffer("window", torch.hann_window(self.config.win_length), persistent=False)
        self.register_buffer("mel_basis", torch.from_numpy(mel_filters(self.config)), persistent=False)

    def magnitude(self, waveforms: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        spec = torch.stft(
            waveforms.float(),
            n_fft=cfg.n_fft,
            hop_length=cfg.hop_length,
            win_length=cfg.win_length,
            window=self.window,
            center=True,
            pad_mode="reflect",
            return_complex=True,
        )
        return spec.abs()

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        squeeze = waveforms.dim() == 1
        if squeeze:
            waveforms = waveforms.unsqueeze(0)
        mel = torch.matmul(self.mel_basis, self.magnitude(waveforms))
        log_mel = torch.log(torch.clamp(mel, min=LOG_MEL_FLOOR))
        return log_mel[0] if squeeze else log_mel


def log_mel_spectrogram(wav: np.ndarray, config: MelConfig | None = None) -> np.ndarray:
    """numpy convenience: (samples,) or (B, samples) -> (n_mels, frames) or (B, n_mels, frames)."""
    module = _cached_front_end(config or MelConfig())
    with torch.no_grad():
        return module(torch.as_tensor(np.asarray(wav, dtype=np.float32))).numpy()


_FRONT_ENDS: dict[MelConfig, LogMelSpectrogram] = {}


def _cached_front_end(config: MelConfig) -> LogMelSpectrogram:
    if config not in _FRONT_ENDS:
        _FRONT_ENDS[config] = LogMelSpectrogram(config)
    return _FRONT_ENDS[config]


class GriffinLimVocoder(torch.nn.Module):
    """TANGO log-mels (B, n_mels, T) -> waveforms (B, T * hop) by fast Griffin-Lim.

    Deterministic: the initial phase is fixed (zero), so equal mels give equal audio. Batch-invariant:
    each clip is inverted on its own, because fast Griffin-Lim (momentum 0.99) amplifies the FFT's
    rounding, which differs with the batch shape and the CPU (batched and single runs of one clip
    differed by up to 0.055 on an AVX-512 machine), and a clip must not depend on its batch
    neighbours. Accepts (n_mels, T) too and then returns (samples,). The output keeps the module's
    device and float32.
    """

    def __init__(self, config: MelConfig | None = None):
        super().__init__()
        self.config = config or MelConfig()
        basis = mel_filters(self.config)
        self.register_buffer("window", torch.hann_window(self.config.win_length), persistent=False)
        self.register_buffer("mel_pinv", torch.from_numpy(np.linalg.pinv(basis).astype(np.float32)), persistent=False)
        self._plans: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    def mel_to_magnitude(self, log_mel: torch.Tensor) -> torch.Tensor:
        """Linear STFT magnitude (B, n_fft//2+1, T) whose mel projection is closest to `log_mel`."""
        mel = torch.exp(log_mel.float())
        # Values at the floor are silence, not a magnitude of 1e-5 to reproduce.
        mel = torch.where(log_mel <= math.log(LOG_MEL_FLOOR) + 1e-4, torch.zeros_like(mel), mel)
        return torch.clamp(torch.matmul(self.mel_pinv, mel), min=0.0)

    def _stft(self, wav: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        return torch.stft(
            wav, cfg.n_fft, cfg.hop_length, cfg.win_length, self.window,
            center=True, pad_mode="reflect", return_complex=True,
        )

    def _istft(self, spec: torch.Tensor, length: int) -> torch.Tensor:
        """Inverse of the centred STFT by windowed overlap-add (what torch.istft computes).

        Written out because torch.istft rebuilds its window envelope on every call, which made it
        the slowest step of Griffin-Lim; here the envelope is built once per frame count.
        """
        cfg = self.config
        batch, _, frames = spec.shape
        window = self._padded_window()
        chunks = torch.fft.irfft(spec, n=cfg.n_fft, dim=1) * window[None, :, None]  # (B, n_fft, T)
        positions, envelope = self._overlap_add_plan(frames)
        total = envelope.shape[0]
        out = torch.zeros(batch, total, dtype=chunks.dtype, device=chunks.device)
        out.index_add_(1, positions, chunks.transpose(1, 2).reshape(batch, -1))
        out = out / envelope.clamp(min=1e-11)
        out = out[:, cfg.n_fft // 2 :]
        if out.shape[1] < length:
            out = torch.nn.functional.pad(out, (0, length - out.shape[1]))
        return out[:, :length]

    def _padded_window(self) -> torch.Tensor:
        pad = self.config.n_fft - self.config.win_length
        return torch.nn.functional.pad(self.window, (pad // 2, pad - pad // 2))

    def _overlap_add_plan(self, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        key = (frames, self.window.device)
        if key not in self._plans:
            cfg = self.config
            starts = torch.arange(frames, device=self.window.device) * cfg.hop_length
            positions = (starts[:, None] + torch.arange(cfg.n_fft, device=self.window.device)[None, :]).reshape(-1)
            total = cfg.n_fft + cfg.hop_length * (frames - 1)
            squared = (self._padded_window() ** 2).repeat(frames)
            envelope = torch.zeros(total, device=self.window.device).index_add_(0, positions, squared)
            self._plans[key] = (positions, envelope)
        return self._plans[key]

    @torch.no_grad()
    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        squeeze = log_mel.dim() == 2
        if squeeze:
            log_mel = log_mel.unsqueeze(0)
        if log_mel.dim() != 3 or log_mel.shape[1] != self.config.n_mels:
            raise ValueError(
                f"GriffinLimVocoder expects log-mels of shape (B, {self.config.n_mels}, T), got {tuple(log_mel.shape)}"
            )
        # One clip at a time: batch-invariant, and no slower (32 toy clips: 1.03 s one by one,
        # 1.18-1.38 s in chunks of 4, on the 2-core build machine).
        wav = torch.cat([self._griffin_lim(clip) for clip in log_mel.split(1)])
        return wav[0] if squeeze else wav

    def _griffin_lim(self, log_mel: torch.Tensor) -> torch.Tensor:
        magnitude = self.mel_to_magnitude(log_mel)
        frames = magnitude.shape[-1]
        # istft of T centred frames spans (T - 1) * hop samples; ask for T * hop as TANGO's
        # vocoder gives about that many.
        length = frames * self.config.hop_length
        angles = torch.ones_like(magnitude, dtype=torch.complex64)
        previous = torch.zeros_like(angles)
        for _ in range(self.config.n_iter):
            rebuilt = self._stft(self._istft(magnitude * angles, length))[..., :frames]
            accelerated = rebuilt - (self.config.momentum / (1 + self.config.momentum)) * previous
            angles = accelerated / (accelerated.abs() + 1e-16)
            previous = rebuilt
        return self._istft(magnitude * angles, length)
