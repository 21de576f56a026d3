"""TANGO (Ghosal et al. 2023) assembled from diffusers and transformers classes.

    waveform --mel front end--> log-mel (B, 1, T, 64) --AutoencoderKL--> latents (B, 8, T/4, 16)
    caption --T5 tokenizer + T5EncoderModel--> hidden states --cross-attention--> UNet2DConditionModel
    latents --AutoencoderKL.decode--> log-mel --vocoder (SpeechT5HifiGan)--> waveform

No official diffusers TANGO exists, so this file is the model, readable top to bottom. The same
class runs the toy TANGO of `baton_trainer.toyworld` (tiny configs, a Griffin-Lim vocoder).

Saved layout (`save_pretrained`, diffusers-style, every weight in safetensors):

    baton_model.json   model type, mel front end, vocoder class, default duration and sampler
    unet/  vae/  text_encoder/  tokenizer/  vocoder/  scheduler/
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from transformers import AutoTokenizer, T5EncoderModel

from .base import TextConditioning, TextToAudioBackend

MODEL_FILE = "baton_model.json"

# Vocoder classes a saved model may name. Only these are imported: a model folder never makes
# this code import an arbitrary module.
VOCODER_CLASSES = {
    "SpeechT5HifiGan": "transformers",
    "GriffinLimVocoder": "baton_trainer.toyworld.vocoder",
    "ToyGriffinLimVocoder": "baton_trainer.toyworld.models",
}


@dataclass
class MelConfig:
    """TANGO's STFT front end (its stft_config.json): 16 kHz, 1024/160/1024, 64 mels, 0-8 kHz."""

    sample_rate: int = 16_000
    n_fft: int = 1024
    hop_length: int = 160
    win_length: int = 1024
    n_mels: int = 64
    fmin: float = 0.0
    fmax: float = 8000.0


class MelFrontEnd(torch.nn.Module):
    """Waveform -> TANGO's log-mel: reflect-pad (n_fft - hop)/2, |STFT| (Hann, no centring),
    slaney mel filters, log(clamp(x, 1e-5)). Output (B, frames, n_mels), frames = samples / hop."""

    def __init__(self, config: MelConfig):
        super().__init__()
        from ..audio import slaney_mel_filters

        self.config = config
        basis = slaney_mel_filters(config.sample_rate, config.n_fft, config.n_mels, config.fmin, config.fmax)
        self.register_buffer("mel_basis", torch.from_numpy(basis), persistent=False)
        self.register_buffer("window", torch.hann_window(config.win_length), persistent=False)

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        c = self.config
        pad = (c.n_fft - c.hop_length) // 2
        x = F.pad(waveforms.float().unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
        spec = torch.stft(x, c.n_fft, c.hop_length, c.win_length, self.window, center=False, return_complex=True)
        mel = torch.matmul(self.mel_basis, spec.abs())
        return torch.log(torch.clamp(mel, min=1e-5)).transpose(1, 2)

    @staticmethod
    def normalize_waveform(waveforms: torch.Tensor) -> torch.Tensor:
        """TANGO's loudness normalisation before the mel: zero mean, peak 0.5."""
        x = waveforms - waveforms.mean(dim=-1, keepdim=True)
        return 0.5 * x / (x.abs().amax(dim=-1, keepdim=True) + 1e-8)


def _load_vocoder_class(name: str):
    if name not in VOCODER_CLASSES:
        raise ValueError(f"unknown vocoder class '{name}' (known: {', '.join(VOCODER_CLASSES)})")
    return getattr(importlib.import_module(VOCODER_CLASSES[name]), name)


@dataclass
class TangoSettings:
    """What `baton_model.json` holds besides the component folders."""

    model_type: str = "tango"
    mel: MelConfig = field(default_factory=MelConfig)
    vocoder_class: str = "SpeechT5HifiGan"
    duration_s: float = 10.0  # TANGO generates 10.24 s (1024 frames); clips are cut to this
    sampler: Literal["ddpm", "ddim"] = "ddpm"
    text_max_length: int | None = None  # None: the tokenizer's model_max_length

    @classmethod
    def from_dict(cls, data: dict) -> "TangoSettings":
        data = dict(data)
        data["mel"] = MelConfig(**data.get("mel", {}))
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


class TangoModel(TextToAudioBackend):
    def __init__(self, unet, vae, text_encoder, tokenizer, vocoder, scheduler, settings: TangoSettings | None = None):
        self.unet: UNet2DConditionModel = unet
        self.vae: AutoencoderKL = vae
        self.text_encoder: T5EncoderModel = text_encoder
        self.tokenizer = tokenizer
        self.vocoder = vocoder
        self.noise_scheduler: DDPMScheduler = scheduler
        self.settings = settings or TangoSettings()
        self.mel = MelFrontEnd(self.settings.mel)
        self.sample_rate = self.settings.mel.sample_rate
        self.name_or_path = ""

    # -- loading and saving ----------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        export: str | Path | None = None,
        device: str | torch.device | None = None,
        torch_dtype: torch.dtype | None = None,
        revision: str | None = None,
    ) -> "TangoModel":
        """Load a folder written by `save_pretrained` (or a Hub id of one), then apply a trained
        export (LoRA adapter or full UNet, a folder or Hub id) when given. TANGO's original Hub
        layout loads through `baton_trainer.backends.load_backend`."""
        from ..checkpoints import load_pretrained
        from ..hub import resolve_folder

        folder = resolve_folder(name_or_path, "model", revision)
        if not (folder / MODEL_FILE).is_file():
            raise FileNotFoundError(f"{folder}: not a baton-trainer TANGO folder (no {MODEL_FILE})")
        settings = load_pretrained(lambda f: TangoSettings.from_dict(json.loads(Path(f).read_text(encoding="utf-8"))), folder / MODEL_FILE, "model settings")
        vocoder_cls = _load_vocoder_class(settings.vocoder_class)
        model = cls(
            unet=load_pretrained(UNet2DConditionModel.from_pretrained, folder / "unet", "a UNet2DConditionModel"),
            vae=load_pretrained(AutoencoderKL.from_pretrained, folder / "vae", "an AutoencoderKL"),
            text_encoder=load_pretrained(T5EncoderModel.from_pretrained, folder / "text_encoder", "a T5EncoderModel"),
            tokenizer=load_pretrained(AutoTokenizer.from_pretrained, folder / "tokenizer", "a tokenizer"),
            vocoder=load_pretrained(vocoder_cls.from_pretrained, folder / "vocoder", f"a {settings.vocoder_class}"),
            scheduler=load_pretrained(DDPMScheduler.from_pretrained, folder / "scheduler", "a DDPMScheduler"),
            settings=settings,
        )
        model.name_or_path = str(name_or_path)
        return model.prepare(export, device, torch_dtype)

    def prepare(self, export: str | Path | None = None, device=None, torch_dtype=None) -> "TangoModel":
        """Eval mode, device and dtype, then the trained export (a folder or Hub id) on top."""
        self.eval()
        if device is not None or torch_dtype is not None:
            self.to(device=device, dtype=torch_dtype)
        if export is not None:
            self.load_trained(export)
        return self

    def save_pretrained(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        unet = self.unet
        if getattr(unet, "peft_config", None):
            raise ValueError("save_pretrained on a model with a LoRA adapter: use save_trained(folder, 'lora') for the adapter")
        unet.save_pretrained(str(folder / "unet"), safe_serialization=True)
        self.vae.save_pretrained(str(folder / "vae"), safe_serialization=True)
        self.text_encoder.save_pretrained(str(folder / "text_encoder"), safe_serialization=True)
        self.tokenizer.save_pretrained(str(folder / "tokenizer"))
        self.vocoder.save_pretrained(str(folder / "vocoder"), safe_serialization=True)
        self.noise_scheduler.save_pretrained(str(folder / "scheduler"))
        settings = asdict(self.settings)
        settings["vocoder_class"] = type(self.vocoder).__name__
        (folder / MODEL_FILE).write_text(json.dumps(settings, indent=2))

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"unet": self.unet, "vae": self.vae, "text_encoder": self.text_encoder, "vocoder": self.vocoder, "mel": self.mel}

    def to(self, device=None, dtype=None) -> "TangoModel":
        for name, module in self.modules().items():
            kwargs = {"device": device} if device is not None else {}
            if dtype is not None and name != "mel":
                kwargs["dtype"] = dtype
            if kwargs:
                module.to(**kwargs)
        return self

    def eval(self) -> "TangoModel":
        for module in self.modules().values():
            module.eval()
        return self

    def frozen_modules(self) -> list[torch.nn.Module]:
        return [self.vae, self.text_encoder, self.vocoder]

    def fingerprint(self) -> str:
        payload = {
            "model": self.name_or_path,
            "vae": dict(self.vae.config),
            "text_encoder": self.text_encoder.config.to_dict(),
            "mel": asdict(self.settings.mel),
            "text_max_length": self.settings.text_max_length,
            "vae_dtype": str(next(self.vae.parameters()).dtype),
            "text_dtype": str(next(self.text_encoder.parameters()).dtype),
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]

    # -- shapes ----------------------------------------------------------------------------------

    @property
    def vae_downsample(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def frame_multiple(self) -> int:
        """Mel frames must divide by the VAE's and the UNet's downsampling together."""
        return self.vae_downsample * 2 ** (len(self.unet.config.block_out_channels) - 1)

    def num_frames(self, duration_s: float) -> int:
        frames = math.ceil(duration_s * self.sample_rate / self.settings.mel.hop_length)
        return math.ceil(frames / self.frame_multiple) * self.frame_multiple

    # -- encoding --------------------------------------------------------------------------------

    @torch.no_grad()
    def waveform_to_mel(self, waveforms: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:
        """(B, samples) -> (B, 1, frames, n_mels), normalised and padded the way TANGO trains."""
        hop = self.settings.mel.hop_length
        num_frames = num_frames or self.num_frames(waveforms.shape[-1] / self.sample_rate)
        waveforms = MelFrontEnd.normalize_waveform(waveforms.float().to(self.mel.mel_basis.device))
        target = num_frames * hop
        waveforms = F.pad(waveforms, (0, max(0, target - waveforms.shape[-1])))[..., :target]
        return self.mel(waveforms)[:, :num_frames].unsqueeze(1)

    @torch.no_grad()
    def encode_audio(self, waveforms: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:
        """Waveforms -> scaled latents. Uses the posterior mean, so cached latents are deterministic."""
        mel = self.waveform_to_mel(waveforms, num_frames).to(dtype=self.vae.dtype)
        posterior = self.vae.encode(mel).latent_dist
        return posterior.mean * self.vae.config.scaling_factor

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> waveforms (B, samples), via the VAE decoder and the vocoder."""
        mel = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
        vocoder_dtype = next(iter(self.vocoder.parameters()), torch.zeros(())).dtype
        return self.vocoder(mel.squeeze(1).to(vocoder_dtype)).float()

    @torch.no_grad()
    def encode_text(self, captions: list[str], max_length: int | None = None) -> TextConditioning:
        max_length = max_length or self.settings.text_max_length or min(self.tokenizer.model_max_length, 512)
        batch = self.tokenizer(
            list(captions), max_length=max_length, padding=True, truncation=True, return_tensors="pt"
        ).to(self.text_encoder.device)
        hidden = self.text_encoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
        return TextConditioning(hidden, batch.attention_mask == 1)

    def _unconditional(self, batch: int, length: int) -> TextConditioning:
        tokens = self.tokenizer(
            [""] * batch, max_length=length, padding="max_length", truncation=True, return_tensors="pt"
        ).to(self.text_encoder.device)
        with torch.no_grad():
            hidden = self.text_encoder(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
        return TextConditioning(hidden, tokens.attention_mask == 1)

    # -- sampling --------------------------------------------------------------------------------

    def inference_scheduler(self, sampler: str | None = None):
        sampler = sampler or self.settings.sampler
        if sampler == "ddim":
            return DDIMScheduler.from_config(self.noise_scheduler.config)
        if sampler == "ddpm":
            return DDPMScheduler.from_config(self.noise_scheduler.config)
        raise ValueError(f"unknown sampler '{sampler}' (expected ddpm or ddim)")

    def predict_noise(self, latents, t, cond: TextConditioning, uncond: TextConditioning | None, guidance_scale: float):
        """One UNet call with classifier-free guidance; guidance 1 (or no uncond) is the conditional
        prediction alone."""
        if uncond is None or guidance_scale == 1.0:
            return self.unet(latents, t, **cond.unet_kwargs()).sample
        both = TextConditioning(
            torch.cat([uncond.hidden_states, cond.hidden_states]), torch.cat([uncond.attention_mask, cond.attention_mask])
        )
        pred_uncond, pred_cond = self.unet(torch.cat([latents, latents]), t, **both.unet_kwargs()).sample.chunk(2)
        return pred_uncond + guidance_scale * (pred_cond - pred_uncond)

    @torch.no_grad()
    def generate_latents(self, captions, seeds, num_inference_steps, guidance_scale, duration_s=None, sampler=None, progress=False):
        if len(captions) != len(seeds):
            raise ValueError(f"{len(captions)} captions but {len(seeds)} seeds")
        duration_s = duration_s or self.settings.duration_s
        frames = self.num_frames(duration_s)
        shape = (self.unet.config.in_channels, frames // self.vae_downsample, self.settings.mel.n_mels // self.vae_downsample)
        device, dtype = self.device, self.unet.dtype
        # One generator per clip: a clip depends on its seed only, not on its batch neighbours.
        generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
        latents = torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device=device, dtype=dtype)
        scheduler = self.inference_scheduler(sampler)
        scheduler.set_timesteps(num_inference_steps, device=device)
        latents = latents * scheduler.init_noise_sigma
        cond = self.encode_text(captions)
        uncond = self._unconditional(len(captions), cond.hidden_states.shape[1]) if guidance_scale != 1.0 else None
        cond, uncond = cond.to(dtype=dtype), (uncond.to(dtype=dtype) if uncond is not None else None)
        timesteps = scheduler.timesteps
        if progress:
            from tqdm.auto import tqdm

            timesteps = tqdm(timesteps, desc="sampling", leave=False)
        for t in timesteps:
            model_input = scheduler.scale_model_input(latents, t)
            noise_pred = self.predict_noise(model_input, t, cond, uncond, guidance_scale)
            step_kwargs = {"generator": generators} if isinstance(scheduler, DDPMScheduler) else {}
            latents = scheduler.step(noise_pred, t, latents, **step_kwargs).prev_sample
        return latents

    @torch.no_grad()
    def generate(self, captions, seeds, num_inference_steps=200, guidance_scale=3.0, duration_s=None, progress=False, sampler=None):
        duration_s = duration_s or self.settings.duration_s
        latents = self.generate_latents(captions, seeds, num_inference_steps, guidance_scale, duration_s, sampler, progress)
        audio = self.decode_latents(latents)
        samples = int(round(duration_s * self.sample_rate))
        audio = audio[:, :samples]
        if audio.shape[-1] < samples:
            audio = F.pad(audio, (0, samples - audio.shape[-1]))
        return audio.cpu().numpy().astype(np.float32)
