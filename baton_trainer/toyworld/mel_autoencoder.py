"""The toy flow model's latent autoencoder: waveforms <-> (B, latent_dim, frames) latents, through
the toy TANGO's log-mel front end, AutoencoderKL and Griffin-Lim vocoder, behind the interface
Stable Audio 3's pipeline and backend call on their autoencoder (`encode(x).latents`,
`decode(z).sample`, `config.sampling_rate`, `config.audio_channels`, `config.latent_dim`,
`downsampling_ratio`).

    vae = ToyMelAutoencoder.from_toy_tango(TOY_TANGO_PATH)   # the toy TANGO's trained VAE, copied
    z = vae.encode(waveforms[:, None]).latents               # (B, 1, 40960) -> (B, 64, 16)
    audio = vae.decode(z).sample                             # (B, 1, 40960)

Why not Stable Audio 3's own AutoencoderSAME in a tiny config: a waveform autoencoder has to be
trained to reproduce tones from 30 Hz to 8 kHz sample by sample, and the toy CLAP the reward model
reads was trained on clips that passed through this VAE and vocoder (`docs/toy_models.md`). Reusing
them keeps the two toy models' sound the same, so a difference between them is the denoiser's and
the objective's, which is what the toy flow model is there to show. The DiT sees each latent time
frame as one token: the VAE's (channels, mel rows) at that frame flattened into `latent_dim`.

The toy world is mono: `encode` averages the channels it is given, `decode` returns one channel.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput

from ..backends.griffin_lim_vocoder import GriffinLimVocoder
from ..backends.mel import MelConfig, MelFrontEnd


@dataclass
class ToyMelAutoencoderOutput(BaseOutput):
    latents: torch.Tensor


class ToyMelAutoencoder(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(
        self,
        vae: dict | None = None,
        sampling_rate: int = 16000,
        audio_channels: int = 1,
        latent_dim: int | None = None,
        n_fft: int = 1024,
        hop_length: int = 320,
        win_length: int = 1024,
        n_mels: int = 64,
        fmin: float = 0.0,
        fmax: float = 8000.0,
        framing: str = "half_hop",
        n_iter: int = 32,
    ):
        super().__init__()
        self.autoencoder = AutoencoderKL(**(vae or {}))
        self.mel = MelFrontEnd(MelConfig(sampling_rate, n_fft, hop_length, win_length, n_mels, fmin, fmax, framing))
        self.vocoder = GriffinLimVocoder(sampling_rate, n_fft, hop_length, win_length, n_mels, fmin, fmax, n_iter)
        kl = self.autoencoder.config
        self.mel_downsample = 2 ** (len(kl.block_out_channels) - 1)
        derived = kl.latent_channels * n_mels // self.mel_downsample  # the DiT's channels: VAE channels x mel rows
        if n_mels % self.mel_downsample or latent_dim not in (None, derived):
            raise ValueError(
                f"ToyMelAutoencoder: latent_dim {latent_dim} must be the VAE's latent channels x mel rows "
                f"({kl.latent_channels} x {n_mels} / {self.mel_downsample})"
            )
        self.register_to_config(latent_dim=derived)  # the pipeline reads config.latent_dim

    @classmethod
    def from_toy_tango(cls, folder: str | Path, n_iter: int = 32) -> "ToyMelAutoencoder":
        """The toy TANGO's trained VAE (weights and scaling factor) and mel settings, copied."""

        folder = Path(folder)
        index = json.loads((folder / "model_index.json").read_text())
        kl = AutoencoderKL.from_pretrained(folder / "vae")
        config = {k: v for k, v in kl.config.items() if not k.startswith("_")}
        model = cls(
            vae=config,
            sampling_rate=index["sample_rate"],
            n_fft=index["n_fft"],
            hop_length=index["hop_length"],
            win_length=index["win_length"],
            n_mels=index["n_mels"],
            fmin=index["fmin"],
            fmax=index["fmax"],
            framing=index["mel_framing"],
            n_iter=n_iter,
        )
        model.autoencoder.load_state_dict(kl.state_dict())
        return model.eval()

    @property
    def downsampling_ratio(self) -> int:
        """Waveform samples per latent frame (hop x the VAE's time downsampling)."""
        return int(self.config.hop_length) * self.mel_downsample

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        """(B, channels, samples) -> scaled latents (B, latent_dim, samples / downsampling_ratio):
        the posterior mean, as every cached latent of the project is."""
        mono = x.float().mean(1)
        frames = mono.shape[-1] // int(self.config.hop_length)
        mel = self.mel.waveform_to_mel(mono, frames).unsqueeze(1).to(self.autoencoder.dtype)  # (B, 1, frames, n_mels)
        z = self.autoencoder.encode(mel).latent_dist.mean * self.autoencoder.config.scaling_factor  # (B, C, T, F)
        latents = z.permute(0, 1, 3, 2).flatten(1, 2)  # (B, C * F, T): one token per latent frame
        return ToyMelAutoencoderOutput(latents=latents) if return_dict else (latents,)

    def decode(self, z: torch.Tensor, return_dict: bool = True):
        """(B, latent_dim, T) -> waveforms (B, 1, T x downsampling_ratio)."""
        rows = int(self.config.n_mels) // self.mel_downsample
        z = z.unflatten(1, (-1, rows)).permute(0, 1, 3, 2)  # (B, C, T, F)
        mel = self.autoencoder.decode(z.to(self.autoencoder.dtype) / self.autoencoder.config.scaling_factor).sample
        audio = self.vocoder(mel.squeeze(1).float())[:, None]
        return DecoderOutput(sample=audio) if return_dict else (audio,)
