"""What the BATON trainer needs from a text-to-audio latent diffusion model.

A new model is one file that subclasses `TextToAudioBackend` and implements the methods below.
The trainer only ever touches a backend through them:

    latents = backend.encode_audio(waveforms)          # (B, samples) at backend.sample_rate
    cond = backend.encode_text(captions)               # TextConditioning
    pred = backend.unet(noisy_latents, t, **cond.unet_kwargs()).sample
    backend.noise_scheduler.add_noise(...)             # a diffusers DDPMScheduler
    backend.save_trained(folder, mode) / backend.load_trained(folder)
    clips = backend.generate(captions, seeds, ...)     # (B, samples) float32 numpy

`unet` is the module that is trained (fully or through a LoRA adapter); everything returned by
`frozen_modules()` stays frozen and may be cast to the training dtype.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

EXPORT_FILE = "baton_export.json"


@dataclass
class TextConditioning:
    """Encoder hidden states and their boolean padding mask, as the UNet's cross-attention takes them."""

    hidden_states: torch.Tensor  # (B, L, D)
    attention_mask: torch.Tensor  # (B, L) bool

    def unet_kwargs(self) -> dict[str, torch.Tensor]:
        return {"encoder_hidden_states": self.hidden_states, "encoder_attention_mask": self.attention_mask}

    def to(self, device=None, dtype=None) -> "TextConditioning":
        return TextConditioning(self.hidden_states.to(device=device, dtype=dtype), self.attention_mask.to(device))

    def __getitem__(self, index) -> "TextConditioning":
        return TextConditioning(self.hidden_states[index], self.attention_mask[index])


class TextToAudioBackend(ABC):
    sample_rate: int
    unet: torch.nn.Module
    noise_scheduler: object  # diffusers DDPMScheduler (training noise schedule)

    @abstractmethod
    def encode_audio(self, waveforms: torch.Tensor) -> torch.Tensor:
        """Waveforms (B, samples) at `sample_rate` -> scaled latents z0 for the UNet."""

    @abstractmethod
    def encode_text(self, captions: list[str]) -> TextConditioning:
        """Captions -> the UNet's cross-attention conditioning."""

    @abstractmethod
    def frozen_modules(self) -> list[torch.nn.Module]:
        """Modules that are never trained (VAE, text encoder, vocoder, ...)."""

    @abstractmethod
    def generate(
        self,
        captions: list[str],
        seeds: list[int],
        num_inference_steps: int,
        guidance_scale: float,
        duration_s: float | None = None,
        progress: bool = False,
    ) -> np.ndarray:
        """One clip per caption, each from its own seed, as float32 (B, samples)."""

    @abstractmethod
    def fingerprint(self) -> str:
        """Identifies the encoders and preprocessing, for cache keys of latents and text embeddings."""

    @abstractmethod
    def save_pretrained(self, folder: str | Path) -> None:
        """Write the whole model so that `from_pretrained(folder)` restores it."""

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    # -- the trained part ------------------------------------------------------------------------

    def save_trained(self, folder: str | Path, mode: str, base: str | None = None) -> None:
        """Export what was trained: a LoRA adapter (`mode="lora"`) or the full UNet (`"full"`)."""
        from peft.utils import get_peft_model_state_dict
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if mode == "lora":
            state = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(self.unet).items()}
            save_file(state, str(folder / "unet_lora.safetensors"))
            peft_config = self.unet.peft_config["default"].to_dict()
            peft_config["target_modules"] = sorted(peft_config["target_modules"])
            (folder / "unet_lora_config.json").write_text(json.dumps(peft_config, indent=2, default=str))
        elif mode == "full":
            self.unet.save_pretrained(str(folder / "unet"), safe_serialization=True)
        else:
            raise ValueError(f"unknown export mode '{mode}' (expected lora or full)")
        (folder / EXPORT_FILE).write_text(json.dumps({"mode": mode, "base": base}, indent=2))

    def load_trained(self, folder: str | Path) -> None:
        """Apply an export written by `save_trained` (a folder or Hub id) on top of this (base) model."""
        from peft import LoraConfig
        from peft.utils import set_peft_model_state_dict

        from ..checkpoints import load_pretrained, load_state_dict_file
        from ..hub import resolve_folder

        folder = resolve_folder(folder, "trained export")
        info_file = folder / EXPORT_FILE
        if not info_file.is_file():
            raise FileNotFoundError(f"{folder}: not a trained export (no {EXPORT_FILE})")
        mode = load_pretrained(lambda f: json.loads(Path(f).read_text(encoding="utf-8"))["mode"], info_file, "an export description")
        if mode == "lora":
            config = load_pretrained(lambda f: json.loads(Path(f).read_text(encoding="utf-8")), folder / "unet_lora_config.json", "a LoRA config")
            known = set(LoraConfig.__dataclass_fields__)
            lora = LoraConfig(**{k: v for k, v in config.items() if k in known and k not in ("peft_type", "task_type", "auto_mapping", "revision")})
            self.unet.add_adapter(lora)
            state = load_state_dict_file(folder / "unet_lora.safetensors", "LoRA adapter")
            result = set_peft_model_state_dict(self.unet, state)
            unexpected = getattr(result, "unexpected_keys", None)
            if unexpected:
                raise ValueError(f"{folder}: adapter keys not found in the UNet: {unexpected[:5]}")
        elif mode == "full":
            from diffusers import UNet2DConditionModel

            device, dtype = self.device, next(self.unet.parameters()).dtype
            self.unet = load_pretrained(UNet2DConditionModel.from_pretrained, folder / "unet", "a UNet2DConditionModel").to(device=device, dtype=dtype)
        else:
            raise ValueError(f"{info_file}: unknown export mode '{mode}'")
