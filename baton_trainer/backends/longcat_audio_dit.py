"""LongCat-AudioDiT for the trainer: `LongCatAudioDiTModel` adapts diffusers' `LongCatAudioDiTPipeline`
(`meituan-longcat/LongCat-AudioDiT-1B`; 24 kHz mono, UMT5 text encoder, a waveform VAE with 2048
samples a latent frame, a DiT on (frames, 64) latents) to `TextToAudioBackend`.

    latents = model.encode_audio(waveforms)   # the VAE's posterior mean, (B, frames, 64) as the pipeline's latents
    cond = model.encode_text(captions)        # the pipeline's encode_prompt, one caption at a time

**Its flow runs the other way.** The pipeline samples from noise at t = 0 to the clip at t = 1
(`FlowMatchEulerDiscreteScheduler(invert_sigmas=True)`), x_t = (1 - t) eps + t z0, and the DiT
predicts z0 - eps. That is the trainer's "flow" objective (x_s = (1 - s) z0 + s eps, target
eps - z0) at s = 1 - t with the prediction negated, so `predict` hands the DiT 1 - s and negates
what it returns: the losses, the online samplers and the exported weights stay the model's own.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import LongCatAudioDiTPipeline

# the pipeline's own caption normalisation (lower case, quotes and runs of spaces removed), so a
# caption is encoded for training exactly as the pipeline encodes it for sampling
from diffusers.pipelines.longcat_audio_dit.pipeline_longcat_audio_dit import _normalize_text

from ..hub import resolve_folder
from ..weight_files import load_pretrained
from .base import TextConditioning, TextToAudioBackend, clips_by_key


class LongCatAudioDiTModel(TextToAudioBackend):
    """A LongCatAudioDiTPipeline as the trainer sees it; the denoiser is `pipe.transformer`."""

    denoiser_name = "transformer"
    pipeline_class = LongCatAudioDiTPipeline
    objective = "flow"  # through `predict`, which turns the model's reversed time and velocity into the trainer's
    default_snr_mode = "none"
    default_duration_s = 10.0
    lora_target_modules = ("to_q", "to_k", "to_v", "to_out.0")  # the DiT's self- and cross-attention projections
    # Its training code is not in diffusers: 10 % dropped captions, as the other DiTs here, with the
    # pipeline's own unconditional input (zeros) in their place.
    cfg_dropout = 0.1

    def __init__(self, pipe: LongCatAudioDiTPipeline):
        super().__init__(pipe)
        self.sample_rate = int(pipe.sample_rate)
        self.noise_scheduler = pipe.scheduler

    @property
    def duration_s(self) -> float:
        return self.default_duration_s

    @property
    def frame_samples(self) -> int:
        return int(self.pipe.vae_scale_factor)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, export: str | Path | None = None, device=None, torch_dtype=None, revision: str | None = None):
        """A LongCat-AudioDiT pipeline folder or Hub id, with a trained export on top."""
        folder = resolve_folder(name_or_path, "model", revision)
        pipe = load_pretrained(lambda f: LongCatAudioDiTPipeline.from_pretrained(f, torch_dtype=torch_dtype), folder, "a LongCatAudioDiTPipeline")
        model = cls(pipe)
        model.name_or_path = str(name_or_path)
        return model.prepare(export, device, torch_dtype)

    def frozen_modules(self) -> list[torch.nn.Module]:
        return [self.pipe.vae, self.pipe.text_encoder]

    def preprocessing(self) -> dict:
        return {"frame_samples": self.frame_samples, "latent_dim": int(self.pipe.latent_dim), "tokenizer_max_length": self.pipe.tokenizer.model_max_length}

    # -- training --------------------------------------------------------------------------------

    def draw_timesteps(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Uniform flow times (the trainer's s = 1 - t of the pipeline)."""
        return torch.rand(n, generator=generator).clamp(1e-4, 1 - 1e-4)

    def denoiser_timestep(self, timesteps: torch.Tensor) -> torch.Tensor:
        """The pipeline's time for the trainer's flow time s: t = 1 - s, in [0, 1]."""
        return 1 - timesteps

    def predict(self, denoiser: torch.nn.Module, noisy: torch.Tensor, timesteps: torch.Tensor, text: TextConditioning) -> torch.Tensor:
        """The trainer's flow velocity eps - z0: the DiT's prediction z0 - eps at t = 1 - s, negated,
        called as the pipeline calls it (every frame valid, no latent prompt)."""
        cond = text.as_kwargs()
        frames = torch.ones(noisy.shape[:2], dtype=torch.bool, device=noisy.device)
        out = denoiser(
            hidden_states=noisy,
            encoder_hidden_states=cond["encoder_hidden_states"],
            encoder_attention_mask=cond["encoder_attention_mask"],
            timestep=self.denoiser_timestep(timesteps).to(noisy.dtype),
            attention_mask=frames,
            latent_cond=torch.zeros_like(noisy),
        ).sample
        return -out

    @torch.no_grad()
    def encode_audio(self, waveforms: torch.Tensor) -> torch.Tensor:
        """Mono waveforms (B, samples) -> latents (B, frames, latent_dim): cut to whole latent frames
        (the pipeline rounds a duration down to them), the VAE's posterior mean."""
        vae = self.pipe.vae
        frames = max(1, waveforms.shape[-1] // self.frame_samples)
        x = torch.nn.functional.pad(waveforms.float(), (0, max(0, frames * self.frame_samples - waveforms.shape[-1])))[..., : frames * self.frame_samples]
        x = x[:, None].expand(-1, int(vae.config.in_channels), -1).to(device=vae.device, dtype=vae.dtype)
        return vae.encode(x, sample_posterior=False).latents.permute(0, 2, 1)

    @torch.no_grad()
    def encode_text(self, captions: list[str], duration_s: float | None = None, lyrics: list[str] | None = None) -> TextConditioning:
        """The pipeline's prompt encoding (normalised caption, UMT5's last and first hidden states,
        each layer-normed, summed) and its mask, one caption at a time so that a caption's states do
        not depend on the batch's longest. (In training a batch is padded to its longest caption with
        the mask off, as the pipeline pads a batch of prompts.)"""
        self.captions_only(lyrics)
        device = self.pipe.text_encoder.device
        rows = []
        for caption in captions:
            embeds, lengths = self.pipe.encode_prompt([_normalize_text(caption)], device)
            mask = torch.arange(embeds.shape[1], device=device)[None] < lengths[:, None]
            rows.append(TextConditioning(encoder_hidden_states=embeds, encoder_attention_mask=mask))
        return TextConditioning.cat(rows)

    def drop_captions(self, text: TextConditioning, dropped: torch.Tensor, null: TextConditioning) -> TextConditioning:
        """The pipeline's unconditional input: the caption's states zeroed, its mask kept (the DiT's
        text convolutions make zeros of another length another input)."""
        states = text.tensors["encoder_hidden_states"].clone()
        states[dropped] = 0
        return TextConditioning(encoder_hidden_states=states, encoder_attention_mask=text.tensors["encoder_attention_mask"])

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """The pipeline's decode, mixed down to mono."""
        vae = self.pipe.vae
        return vae.decode(latents.permute(0, 2, 1).to(device=vae.device, dtype=vae.dtype)).sample.float().mean(dim=1)

    # -- sampling --------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, captions, seeds, num_inference_steps=16, guidance_scale=4.0, duration_s=None, progress=False, sampler=None, lyrics=None):
        self.captions_only(lyrics)
        if sampler is not None:
            raise ValueError(f"sampler {sampler!r}: LongCat-AudioDiT samples with its own scheduler ({type(self.pipe.scheduler).__name__})")
        generators = self.clip_generators(captions, seeds, guidance_scale)
        duration = float(duration_s or self.duration_s)
        samples = int(round(duration * self.sample_rate))
        self.pipe.set_progress_bar_config(disable=not progress, desc="sampling", leave=False)
        # The DiT's text convolutions carry the batch's padding into the caption's states, so the
        # pipeline is called on captions of one token length at a time: none is padded, and a clip
        # is what the pipeline makes of its caption alone.
        lengths = [len(self.pipe.tokenizer(_normalize_text(c)).input_ids) for c in captions]
        return clips_by_key(
            lengths,
            samples,
            lambda rows: (
                self.pipe(
                    [captions[i] for i in rows],
                    audio_duration_s=duration,
                    num_inference_steps=num_inference_steps,
                    guidance_scale=guidance_scale,
                    generator=[generators[i] for i in rows],
                ).audios
            ),
        )

    # -- a tiny model for tests and benchmarks ---------------------------------------------------

    @classmethod
    def tiny(cls, seed: int = 0) -> "LongCatAudioDiTModel":
        """A randomly initialised LongCatAudioDiTModel: diffusers' LongCatAudioDiTPipeline with tiny
        components of every real class (UMT5's encoder, LongCatAudioDiTVae at 24 kHz with 8 samples a
        latent frame, LongCatAudioDiTTransformer) and the pipeline's own scheduler."""
        # lazy: the tiny model's classes and helpers load for tests and benchmarks only
        from diffusers import LongCatAudioDiTTransformer, LongCatAudioDiTVae
        from transformers import UMT5Config, UMT5EncoderModel

        from ..tiny_parts import tiny_t5_tokenizer

        torch.manual_seed(seed)
        tokenizer = tiny_t5_tokenizer(model_max_length=16)
        text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)).eval()
        vae = LongCatAudioDiTVae(channels=8, c_mults=[1, 2], strides=[2, 4], latent_dim=4, encoder_latent_dim=8, downsampling_ratio=8, sample_rate=24000)
        transformer = LongCatAudioDiTTransformer(dit_dim=16, dit_depth=1, dit_heads=2, dit_text_dim=16, latent_dim=4, ff_mult=2.0)
        # The DiT zero-initialises its output layers (adaLN and projection): give them random values, or
        # every prediction is zero and no test can tell two models apart.
        with torch.no_grad():
            for parameter in transformer.parameters():
                if parameter.ndim > 1 and not parameter.any():
                    parameter.normal_(0.0, 0.2)
        pipe = LongCatAudioDiTPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer)
        model = cls(pipe)
        model.name_or_path = f"tiny-longcat-audio-dit-seed{seed}"
        return model.eval()
