"""The toy TANGO's vocoder: TANGO log-mels (B, frames, n_mels) -> waveforms, by fast Griffin-Lim.

A diffusers component (`ModelMixin`, `ConfigMixin`) with no weights, so a toy pipeline saves and
loads it like any other part; this file is saved beside its config (`vocoder/griffin_lim_vocoder.py`)
and imports only torch, numpy, transformers and diffusers, so the saved pipeline also loads with
`DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)` and nothing else installed.

mel -> linear magnitude with the (non-negative) pseudo-inverse of the Slaney filter bank, then fast
Griffin-Lim (Perraudin et al. 2013, momentum 0.99) from a fixed initial phase, so the same mel
always gives the same waveform. Each clip is inverted on its own: fast Griffin-Lim amplifies the
FFT's rounding, which differs with the batch shape and the CPU (batched and single runs of one clip
differed by up to 0.055 on an AVX-512 machine), and a clip must not depend on its batch neighbours.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from transformers.audio_utils import mel_filter_bank

LOG_MEL_FLOOR = 1e-5  # TANGO's dynamic-range compression clamps magnitudes here before the log


class GriffinLimVocoder(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(
        self,
        sample_rate: int = 16000,
        n_fft: int = 1024,
        hop_length: int = 160,
        win_length: int = 1024,
        n_mels: int = 64,
        fmin: float = 0.0,
        fmax: float = 8000.0,
        n_iter: int = 32,
        momentum: float = 0.99,
    ):
        super().__init__()
        if n_iter < 0 or not 0 <= momentum < 1:
            raise ValueError(f"GriffinLimVocoder: n_iter must be >= 0 and momentum in [0, 1), got {n_iter}, {momentum}")
        bank = mel_filter_bank(
            num_frequency_bins=n_fft // 2 + 1,
            num_mel_filters=n_mels,
            min_frequency=fmin,
            max_frequency=fmax,
            sampling_rate=sample_rate,
            norm="slaney",
            mel_scale="slaney",
        )
        basis = np.ascontiguousarray(bank.T, dtype=np.float32)  # (n_mels, n_fft // 2 + 1), TANGO's bank
        self.register_buffer("window", torch.hann_window(win_length), persistent=False)
        self.register_buffer("mel_pinv", torch.from_numpy(np.linalg.pinv(basis).astype(np.float32)), persistent=False)
        self._plans: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, subfolder: str | None = None, **kwargs) -> "GriffinLimVocoder":
        """The vocoder of a saved config.json (it has no weights; the loading options a pipeline
        passes, such as torch_dtype, do not apply)."""
        return cls.from_config(cls.load_config(pretrained_model_name_or_path, subfolder=subfolder))

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    def mel_to_magnitude(self, log_mel: torch.Tensor) -> torch.Tensor:
        """Linear STFT magnitude (B, n_fft//2+1, T) whose mel projection is closest to `log_mel` (B, n_mels, T)."""
        mel = torch.exp(log_mel.float())
        # Values at the floor are silence, not a magnitude of 1e-5 to reproduce.
        mel = torch.where(log_mel <= math.log(LOG_MEL_FLOOR) + 1e-4, torch.zeros_like(mel), mel)
        return torch.clamp(torch.matmul(self.mel_pinv, mel), min=0.0)

    def _stft(self, wav: torch.Tensor) -> torch.Tensor:
        c = self.config
        return torch.stft(wav, c.n_fft, c.hop_length, c.win_length, self.window, center=True, pad_mode="reflect", return_complex=True)

    def _istft(self, spec: torch.Tensor, length: int) -> torch.Tensor:
        """Inverse of the centred STFT by windowed overlap-add (what torch.istft computes).

        Written out because torch.istft rebuilds its window envelope on every call, which made it
        the slowest step of Griffin-Lim; here the envelope is built once per frame count.
        """
        c = self.config
        batch, _, frames = spec.shape
        window = self._padded_window()
        chunks = torch.fft.irfft(spec, n=c.n_fft, dim=1) * window[None, :, None]  # (B, n_fft, T)
        positions, envelope = self._overlap_add_plan(frames)
        out = torch.zeros(batch, envelope.shape[0], dtype=chunks.dtype, device=chunks.device)
        out.index_add_(1, positions, chunks.transpose(1, 2).reshape(batch, -1))
        out = out / envelope.clamp(min=1e-11)
        out = out[:, c.n_fft // 2 :]
        if out.shape[1] < length:
            out = torch.nn.functional.pad(out, (0, length - out.shape[1]))
        return out[:, :length]

    def _padded_window(self) -> torch.Tensor:
        pad = self.config.n_fft - self.config.win_length
        return torch.nn.functional.pad(self.window, (pad // 2, pad - pad // 2))

    def _overlap_add_plan(self, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        key = (frames, self.window.device)
        if key not in self._plans:
            c = self.config
            starts = torch.arange(frames, device=self.window.device) * c.hop_length
            positions = (starts[:, None] + torch.arange(c.n_fft, device=self.window.device)[None, :]).reshape(-1)
            total = c.n_fft + c.hop_length * (frames - 1)
            squared = (self._padded_window() ** 2).repeat(frames)
            envelope = torch.zeros(total, device=self.window.device).index_add_(0, positions, squared)
            self._plans[key] = (positions, envelope)
        return self._plans[key]

    @torch.no_grad()
    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """TANGO log-mels (B, frames, n_mels), as a TANGO pipeline passes them -> waveforms (B, frames * hop)."""
        if mel.dim() != 3 or mel.shape[-1] != self.config.n_mels:
            raise ValueError(f"GriffinLimVocoder expects log-mels (B, frames, {self.config.n_mels}), got {tuple(mel.shape)}")
        clips = mel.float().transpose(1, 2).split(1)
        # One clip at a time: batch-invariant, and no slower (32 toy clips: 1.03 s one by one,
        # 1.18-1.38 s in chunks of 4, on the 2-core build machine). Its small FFTs hardly use a
        # second thread (1.72 s on one, 1.47 s on two), so the clips go one per core, each on one
        # thread: the same arithmetic as a clip alone (bitwise), 1.10 s for 32 toy clips on 2 cores.
        cores = torch.get_num_threads()
        if cores == 1 or len(clips) == 1:
            return torch.cat([self._griffin_lim(clip) for clip in clips])
        with ThreadPoolExecutor(min(cores, len(clips)), initializer=torch.set_num_threads, initargs=(1,)) as pool:
            return torch.cat(list(pool.map(self._griffin_lim, clips)))

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
