"""The one mel front end of the project: waveform -> log-mel, as TANGO and AudioLDM compute it,
with its framing a saved setting of each model.

TANGO (through AudioLDM's `TacotronSTFT` and `read_wav_file`) removes the mean, scales the peak to
0.5, cuts or zero-pads to the clip length, scales the peak to 0.5 again, takes the magnitude of a
centred STFT (reflect-pad n_fft/2, periodic Hann, n_fft 1024, hop 160 at 16 kHz), projects it on
64 Slaney mel filters (0-8 kHz, librosa's default bank) and compresses with log(clamp(x, 1e-5)).
That is `framing="tango"`: frame k is centred on sample k * hop, and the frames are cut to the
clip length (`_pad_spec`).

`framing="half_hop"` is AudioLDM's training front end (`mel_spectrogram_train` in its authors'
AudioLDM-training-finetuning code, which AudioLDM 2 shares): reflect-pad (n_fft - hop) / 2 and an
STFT without centring, so frame k is centred half a hop later, and the peak is scaled once. AudioLDM
2 checkpoints use it; so do the shipped toy models, which were trained with it; real TANGO
checkpoints use "tango".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ..audio import slaney_mel_filters

Framing = Literal["tango", "half_hop"]
LOG_FLOOR = 1e-5  # TANGO's dynamic-range compression clamps magnitudes here before the log


@dataclass(frozen=True)
class MelConfig:
    """TANGO's stft_config.json (16 kHz, 1024/160/1024, 64 mels, 0-8 kHz) and the framing."""

    sample_rate: int = 16_000
    n_fft: int = 1024
    hop_length: int = 160
    win_length: int = 1024
    n_mels: int = 64
    fmin: float = 0.0
    fmax: float = 8000.0
    framing: Framing = "tango"

    def __post_init__(self) -> None:
        if self.framing not in ("tango", "half_hop"):
            raise ValueError(f"mel framing must be 'tango' or 'half_hop', got {self.framing!r}")
        if self.win_length > self.n_fft:
            raise ValueError(f"MelConfig: win_length {self.win_length} exceeds n_fft {self.n_fft}")
        if not 0 <= self.fmin < self.fmax <= self.sample_rate / 2:
            raise ValueError(f"MelConfig: need 0 <= fmin < fmax <= sample_rate/2, got {self.fmin}, {self.fmax}, {self.sample_rate}")

    def to_dict(self) -> dict:
        return asdict(self)


def peak_normalize(waveforms: torch.Tensor) -> torch.Tensor:
    """TANGO's `normalize_wav`: zero mean, peak 0.5."""
    x = waveforms - waveforms.mean(dim=-1, keepdim=True)
    return 0.5 * x / (x.abs().amax(dim=-1, keepdim=True) + 1e-8)


class MelFrontEnd(torch.nn.Module):
    """Waveforms (B, samples) -> log-mels (B, frames, n_mels) in float32.

    `forward` frames every sample it is given (tango: samples // hop + 1 frames; half_hop:
    samples // hop); `waveform_to_mel` prepares clips the way the model was trained and cuts the
    frames to the clip length."""

    def __init__(self, config: MelConfig | None = None):
        super().__init__()

        self.config = config = config or MelConfig()
        basis = slaney_mel_filters(config.sample_rate, config.n_fft, config.n_mels, config.fmin, config.fmax)
        self.register_buffer("mel_basis", torch.from_numpy(basis), persistent=False)
        self.register_buffer("window", torch.hann_window(config.win_length), persistent=False)

    def magnitude(self, waveforms: torch.Tensor) -> torch.Tensor:
        """|STFT| (B, n_fft // 2 + 1, frames)."""
        c = self.config
        x = waveforms.float()
        if c.framing == "tango":
            spec = torch.stft(x, c.n_fft, c.hop_length, c.win_length, self.window, center=True, pad_mode="reflect", return_complex=True)
        else:
            pad = (c.n_fft - c.hop_length) // 2
            x = F.pad(x.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
            spec = torch.stft(x, c.n_fft, c.hop_length, c.win_length, self.window, center=False, return_complex=True)
        return spec.abs()

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        mel = torch.matmul(self.mel_basis, self.magnitude(waveforms))
        return torch.log(torch.clamp(mel, min=LOG_FLOOR)).transpose(1, 2)

    @torch.no_grad()
    def waveform_to_mel(self, waveforms: torch.Tensor, num_frames: int) -> torch.Tensor:
        """(B, samples) -> (B, num_frames, n_mels): normalised, cut or zero-padded to num_frames hops,
        framed, and cut to num_frames, as the model's training code prepared its clips."""
        hop = self.config.hop_length
        x = peak_normalize(waveforms.float().to(self.mel_basis.device))
        target = num_frames * hop
        x = F.pad(x, (0, max(0, target - x.shape[-1])))[..., :target]
        if self.config.framing == "tango":  # read_wav_file scales the peak again after the cut
            x = 0.5 * x / (x.abs().amax(dim=-1, keepdim=True) + 1e-12)
        return self(x)[:, :num_frames]


class MelLatents:
    """Audio -> latents for models whose VAE encodes log-mels (TANGO, AudioLDM 2): the backend
    holds `mel` (a `MelFrontEnd` with the model's settings), `vae`, `sample_rate` and `num_frames`."""

    @torch.no_grad()
    def waveform_to_mel(self, waveforms: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:
        """(B, samples) -> (B, 1, frames, n_mels), prepared the way the model was trained."""
        num_frames = num_frames or self.num_frames(waveforms.shape[-1] / self.sample_rate)
        return self.mel.waveform_to_mel(waveforms, num_frames).unsqueeze(1)

    @torch.no_grad()
    def encode_audio(self, waveforms: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:
        """Waveforms -> scaled latents. Uses the posterior mean, so cached latents are deterministic."""
        mel = self.waveform_to_mel(waveforms, num_frames).to(dtype=self.vae.dtype)
        posterior = self.vae.encode(mel).latent_dist
        return posterior.mean * self.vae.config.scaling_factor
