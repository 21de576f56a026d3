"""What the BATON trainer needs from a text-to-audio latent diffusion model.

A new model is one file that subclasses `TextToAudioBackend` and implements the methods below.
The trainer only ever touches a backend through them:

    latents = backend.encode_audio(waveforms)          # (B, samples) at backend.sample_rate
    cond = backend.encode_text(captions)               # TextConditioning
    pred = backend.unet(noisy_latents, t, **cond.unet_kwargs()).sample
    backend.noise_scheduler.add_noise(...)             # a diffusers DDPMScheduler
    backend.save_trained(folder, mode) / backend.load_trained(folder)
    clips = backend.generate(captions, seeds, ...)     # (B, samples) float32 numpy, through backend.pipe

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
    duration_s: float  # the clip length it makes and trains on by default
    unet: torch.nn.Module
    noise_scheduler: object  # diffusers DDPMScheduler (training noise schedule)
    pipe: object  # the diffusers pipeline whose components these are

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
    # The export is what a diffusers user loads on the base pipeline: a LoRA adapter in diffusers'
    # format (`pipe.load_lora_weights(FOLDER)`), or the full UNet (`unet/`, passed to
    # `from_pretrained(BASE, unet=...)`), with `baton_export.json` naming the mode and the base.

    def save_trained(self, folder: str | Path, mode: str, base: str | None = None) -> None:
        """Export what was trained: a LoRA adapter (`mode="lora"`) or the full UNet (`"full"`)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if mode == "lora":
            from diffusers.utils import convert_state_dict_to_diffusers
            from peft.utils import get_peft_model_state_dict

            layers = convert_state_dict_to_diffusers({k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(self.unet).items()})
            type(self.pipe).save_lora_weights(folder, unet_lora_layers=layers, unet_lora_adapter_metadata=self.unet.peft_config["default"].to_dict())
        elif mode == "full":
            self.unet.save_pretrained(str(folder / "unet"), safe_serialization=True)
        else:
            raise ValueError(f"unknown export mode '{mode}' (expected lora or full)")
        (folder / EXPORT_FILE).write_text(json.dumps({"mode": mode, "base": base}, indent=2))

    def _export_mode(self, folder: Path) -> str:
        from ..checkpoints import load_pretrained

        info_file = folder / EXPORT_FILE
        if not info_file.is_file():
            raise FileNotFoundError(f"{folder}: not a trained export (no {EXPORT_FILE})")
        mode = load_pretrained(lambda f: json.loads(Path(f).read_text(encoding="utf-8"))["mode"], info_file, "an export description")
        if mode not in ("lora", "full"):
            raise ValueError(f"{info_file}: unknown export mode '{mode}'")
        return mode

    def load_trained(self, folder: str | Path) -> None:
        """Apply an export written by `save_trained` (a folder or Hub id) on top of this (base) model."""
        from ..checkpoints import load_pretrained
        from ..hub import resolve_folder

        folder = resolve_folder(folder, "trained export")
        if self._export_mode(folder) == "lora":
            load_pretrained(lambda f: self.pipe.load_lora_weights(f, adapter_name="default"), folder, "a LoRA adapter")
        else:
            from diffusers import UNet2DConditionModel

            device, dtype = self.device, next(self.unet.parameters()).dtype
            self.unet = load_pretrained(UNet2DConditionModel.from_pretrained, folder / "unet", "a UNet2DConditionModel").to(device=device, dtype=dtype)

    def restore_trained(self, unet: torch.nn.Module, folder: str | Path) -> None:
        """Load a checkpoint's trained part into `unet` in place (resuming: the adapter or the
        weights go into the module the optimiser holds)."""
        from ..checkpoints import load_state_dict_file

        folder = Path(folder)
        if self._export_mode(folder) == "lora":
            from diffusers.utils import convert_unet_state_dict_to_peft
            from peft.utils import set_peft_model_state_dict

            state = type(self.pipe).lora_state_dict(str(folder))[0]
            state = convert_unet_state_dict_to_peft({k.removeprefix("unet."): v for k, v in state.items() if k.startswith("unet.")})
            result = set_peft_model_state_dict(unet, state, adapter_name="default")
            if getattr(result, "unexpected_keys", None):
                raise RuntimeError(f"{folder}: adapter keys not found in the UNet: {result.unexpected_keys[:5]}")
        else:
            unet.load_state_dict(load_state_dict_file(next((folder / "unet").glob("*.safetensors")), "UNet"))
