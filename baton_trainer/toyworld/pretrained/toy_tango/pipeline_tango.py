"""TANGO (Ghosal et al. 2023, arXiv 2304.13731) as a diffusers pipeline.

    caption --T5 tokenizer + T5EncoderModel--> hidden states --cross-attention--> UNet2DConditionModel
    noise --scheduler, classifier-free guidance--> latents (B, 8, frames/4, 16)
    latents --AutoencoderKL.decode--> log-mel (B, 1, frames, 64) --vocoder (HiFi-GAN)--> waveform

No official diffusers TANGO pipeline exists; this file is one, readable top to bottom, in the shape
of diffusers' `AudioLDM2Pipeline`. It imports only torch, numpy, diffusers and transformers, and it
is saved beside the components (`pipeline_tango.py`, named in `model_index.json`), so a saved
folder loads in plain diffusers:

    pipe = DiffusionPipeline.from_pretrained(FOLDER_OR_HUB_ID, trust_remote_code=True)
    audio = pipe("A dog barks, then a bell rings", num_inference_steps=200, guidance_scale=3.0,
                 generator=[torch.Generator().manual_seed(0)]).audios[0]

and `TangoPipeline.from_pretrained(FOLDER_OR_HUB_ID)` loads it with this class, running no code
from the folder. LoRA adapters in diffusers' format load with `pipe.load_lora_weights(...)`.

The pipeline's config records the mel front end the model was trained on (sample rate, STFT,
mels, `mel_framing`), the default clip length and the text length; `baton_trainer.backends.mel`
computes that front end for training.
"""

from __future__ import annotations

import importlib
import inspect
import math
import os
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    UNet2DConditionModel,
    UniPCMultistepScheduler,
)
from diffusers.loaders import StableDiffusionLoraLoaderMixin
from diffusers.pipelines.pipeline_utils import AudioPipelineOutput
from diffusers.utils.torch_utils import randn_tensor
from transformers import T5EncoderModel

# Solvers a call may sample with instead of the pipeline's own scheduler, built from its config.
SAMPLERS = {
    "ddpm": DDPMScheduler,  # TANGO's own (the paper: 200 steps)
    "ddim": DDIMScheduler,
    "dpmsolver++": DPMSolverMultistepScheduler,
    "unipc": UniPCMultistepScheduler,
}


class TangoPipeline(DiffusionPipeline, StableDiffusionLoraLoaderMixin):
    model_cpu_offload_seq = "text_encoder->unet->vae->vocoder"

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: T5EncoderModel,
        tokenizer,
        unet: UNet2DConditionModel,
        scheduler,
        vocoder,  # transformers' SpeechT5HifiGan (TANGO's HiFi-GAN), or any module taking log-mels (B, frames, n_mels)
        sample_rate: int = 16000,
        n_fft: int = 1024,
        hop_length: int = 160,
        win_length: int = 1024,
        n_mels: int = 64,
        fmin: float = 0.0,
        fmax: float = 8000.0,
        mel_framing: str = "tango",
        duration_s: float = 10.0,
        text_max_length: int | None = None,
    ):
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler, vocoder=vocoder)
        self.register_to_config(
            sample_rate=sample_rate,
            n_fft=n_fft,
            hop_length=hop_length,
            win_length=win_length,
            n_mels=n_mels,
            fmin=fmin,
            fmax=fmax,
            mel_framing=mel_framing,
            duration_s=duration_s,
            text_max_length=text_max_length,
        )

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, torch_dtype: torch.dtype | None = None, revision: str | None = None, **components: Any
    ) -> "TangoPipeline":
        """A saved TangoPipeline (a folder or Hub id) built with this class, running no code from the
        folder: diffusers and transformers components load from their subfolders; a component the
        folder keeps with its own module (the toy world's vocoder) must be passed in, or the folder
        loaded with `DiffusionPipeline.from_pretrained(..., trust_remote_code=True)`."""
        from diffusers.models.modeling_utils import ModelMixin
        from transformers import PreTrainedModel

        folder = str(pretrained_model_name_or_path)
        if not os.path.isdir(folder):
            from huggingface_hub import snapshot_download

            folder = snapshot_download(folder, revision=revision)
        index = cls.load_config(folder)
        for name in ("vae", "text_encoder", "tokenizer", "unet", "scheduler", "vocoder"):
            if name in components:
                continue
            library, class_name = index[name]
            if library not in ("diffusers", "transformers"):
                raise ValueError(
                    f"{folder}: the {name} is a {class_name} from {library}.py in the folder; pass {name}=... or load with "
                    "DiffusionPipeline.from_pretrained(..., trust_remote_code=True)"
                )
            component_class = getattr(importlib.import_module(library), class_name)
            kwargs = {"torch_dtype": torch_dtype} if torch_dtype is not None and issubclass(component_class, (ModelMixin, PreTrainedModel)) else {}
            components[name] = component_class.from_pretrained(os.path.join(folder, name), **kwargs)
        settings = {k: v for k, v in index.items() if not k.startswith("_") and k not in components}
        pipe = cls(**components, **settings)
        pipe.register_to_config(_name_or_path=str(pretrained_model_name_or_path))
        return pipe

    # -- shapes ------------------------------------------------------------------------------------

    @property
    def vae_downsample(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def num_frames(self, duration_s: float) -> int:
        """Mel frames of a clip: duration / hop, rounded up to what the VAE and the UNet divide."""
        multiple = self.vae_downsample * 2 ** (len(self.unet.config.block_out_channels) - 1)
        frames = math.ceil(duration_s * self.config.sample_rate / self.config.hop_length)
        return math.ceil(frames / multiple) * multiple

    # -- the parts of a call -------------------------------------------------------------------------

    def encode_prompt(self, prompts: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """T5 hidden states (B, L, D) and their boolean padding mask (B, L)."""
        max_length = self.config.text_max_length or min(self.tokenizer.model_max_length, 512)
        tokens = self.tokenizer(list(prompts), max_length=max_length, padding=True, truncation=True, return_tensors="pt").to(device)
        hidden = self.text_encoder(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
        return hidden, tokens.attention_mask == 1

    def encode_unconditional(self, batch: int, length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The empty caption's hidden states, padded to the prompts' length, for classifier-free guidance."""
        tokens = self.tokenizer([""] * batch, max_length=length, padding="max_length", truncation=True, return_tensors="pt").to(device)
        hidden = self.text_encoder(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
        return hidden, tokens.attention_mask == 1

    def prepare_latents(self, batch: int, duration_s: float, generator, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Noise (B, C, frames / 4, n_mels / 4), drawn in float32 on the generators' device: with one
        generator per clip, a clip depends on its seed only, not on its batch neighbours."""
        shape = (batch, self.unet.config.in_channels, self.num_frames(duration_s) // self.vae_downsample, self.config.n_mels // self.vae_downsample)
        return randn_tensor(shape, generator=generator, dtype=torch.float32).to(device=device, dtype=dtype)

    def denoise(self, latents, t, hidden, mask, uncond_hidden, uncond_mask, guidance_scale: float) -> torch.Tensor:
        """One UNet call; with guidance, the unconditional and conditional halves in one batch."""
        if uncond_hidden is None:
            return self.unet(latents, t, encoder_hidden_states=hidden, encoder_attention_mask=mask).sample
        pred_uncond, pred_cond = self.unet(
            torch.cat([latents, latents]),
            t,
            encoder_hidden_states=torch.cat([uncond_hidden, hidden]),
            encoder_attention_mask=torch.cat([uncond_mask, mask]),
        ).sample.chunk(2)
        return pred_uncond + guidance_scale * (pred_cond - pred_uncond)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> waveforms (B, samples), through the VAE decoder and the vocoder."""
        mel = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
        vocoder_dtype = next(iter(self.vocoder.parameters()), torch.zeros(())).dtype
        return self.vocoder(mel.squeeze(1).to(vocoder_dtype)).float()

    def sampler(self, name: str | None):
        """The pipeline's scheduler, or another solver of `SAMPLERS` built from its config."""
        if name is None:
            return self.scheduler
        if name not in SAMPLERS:
            raise ValueError(f"unknown sampler {name!r} (known: {', '.join(SAMPLERS)})")
        return SAMPLERS[name].from_config(self.scheduler.config)

    # -- the call --------------------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        num_inference_steps: int = 200,
        guidance_scale: float = 3.0,
        audio_length_in_s: float | None = None,
        num_waveforms_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        sampler: str | None = None,
        output_type: str = "np",
        return_dict: bool = True,
    ) -> AudioPipelineOutput | tuple:
        """Generate clips for `prompt`.

        - `num_inference_steps`, `guidance_scale`: the paper's 200 and 3 by default; guidance 1 is the
          conditional model alone.
        - `audio_length_in_s`: clip length (default the model's, 10 s for TANGO).
        - `generator`: one per clip makes each clip depend on its own seed only.
        - `sampler`: None samples with `self.scheduler`; a name of `SAMPLERS` ("ddpm", "ddim",
          "dpmsolver++", "unipc") builds that solver from its config for this call.
        - `output_type`: "np" (float32 numpy, (B, samples)), "pt" or "latent".
        """
        if not math.isfinite(guidance_scale):
            raise ValueError(f"guidance_scale must be a finite number, got {guidance_scale}")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        prompts = [p for p in prompts for _ in range(num_waveforms_per_prompt)]
        if isinstance(generator, list) and len(generator) != len(prompts):
            raise ValueError(f"{len(prompts)} clips but {len(generator)} generators")
        duration_s = audio_length_in_s or self.config.duration_s
        device, dtype = self._execution_device, self.unet.dtype
        scheduler = self.sampler(sampler)
        scheduler.set_timesteps(num_inference_steps, device=device)
        latents = self.prepare_latents(len(prompts), duration_s, generator, dtype, device) * scheduler.init_noise_sigma
        hidden, mask = self.encode_prompt(prompts, device)
        uncond_hidden = uncond_mask = None
        if guidance_scale != 1.0:
            uncond_hidden, uncond_mask = self.encode_unconditional(len(prompts), hidden.shape[1], device)
            uncond_hidden = uncond_hidden.to(dtype)
        hidden = hidden.to(dtype)
        step_takes_generator = "generator" in inspect.signature(scheduler.step).parameters
        for t in self.progress_bar(scheduler.timesteps):
            model_input = scheduler.scale_model_input(latents, t)
            noise_pred = self.denoise(model_input, t, hidden, mask, uncond_hidden, uncond_mask, guidance_scale)
            latents = scheduler.step(noise_pred, t, latents, **({"generator": generator} if step_takes_generator else {})).prev_sample
        if output_type == "latent":
            audio = latents
        else:
            audio = self.decode_latents(latents)
            samples = int(round(duration_s * self.config.sample_rate))
            audio = audio[:, :samples]
            if audio.shape[-1] < samples:
                audio = torch.nn.functional.pad(audio, (0, samples - audio.shape[-1]))
            if output_type == "np":
                audio = audio.cpu().numpy()
        self.maybe_free_model_hooks()
        return AudioPipelineOutput(audios=audio) if return_dict else (audio,)
