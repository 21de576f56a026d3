"""Stable Audio Open (Evans et al. 2024, arXiv 2407.14358) for the trainer: `StableAudioModel` is
the thin adapter from diffusers' own `StableAudioPipeline` to what the trainer needs.

    latents = model.encode_audio(waveforms)   # mono -> both channels, zero-padded to the model's window, Oobleck VAE
    cond = model.encode_text(captions, 10.0)  # the pipeline's T5 + projection, and its seconds_start/seconds_total
    model.pipe(...)                           # generation is diffusers' pipeline (its cosine DPM-Solver, v-prediction)

The DiT is trained as stable-audio-tools trains it (its "v" objective): t ~ U[0, 1], alpha =
cos(pi t / 2), sigma = sin(pi t / 2), x_t = alpha z0 + sigma eps, target v = alpha eps - sigma z0,
and the DiT is given t itself (`losses.noised_latents_and_target`, objective "v_cosine"). The
pipeline's `CosineDPMSolverMultistepScheduler` samples the same model: its timestep is
atan(sigma_edm) * 2 / pi = t, its input scaling 1 / sqrt(sigma_edm^2 + 1) = alpha, and its v
preconditioning returns z0 from the true target (`tests/test_backend_stable_audio.py`).

Like stable-audio-tools' training data, every clip fills the model's whole window (47.55 s for
Stable Audio Open 1.0): a 10 s clip is zero-padded after its end and conditioned on
seconds_total = 10, which is also how the pipeline generates it (the full window, cropped).

The project works in mono (ratings, reward model and metrics): mono training audio goes into both
channels, as stable-audio-tools does with mono files, and generated stereo is mixed down when it
leaves the backend. The pipeline's scheduler needs `torchsde` (`pip install baton-trainer[stable-audio]`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from diffusers import StableAudioPipeline
from diffusers.models.embeddings import get_1d_rotary_pos_embed

from ..hub import resolve_folder
from ..weight_files import load_pretrained
from .base import TextConditioning, TextToAudioBackend, mixed_to_mono, mono_into_channels


class StableAudioModel(TextToAudioBackend):
    """A StableAudioPipeline as the trainer sees it; every component stays the pipeline's."""

    denoiser_name = "transformer"
    pipeline_class = StableAudioPipeline
    objective = "v_cosine"
    default_snr_mode = "none"
    cfg_dropout = 0.1  # stable-audio-tools' cfg_dropout_prob: the whole cross-attention context zeroed

    def __init__(self, pipe):
        super().__init__(pipe)
        self.sample_rate = int(pipe.vae.config.sampling_rate)
        self.noise_scheduler = pipe.scheduler  # sampling only: training draws continuous t itself

    @property
    def window_samples(self) -> int:
        """The samples every clip is padded to: the DiT's latent length times the VAE's hop."""
        return int(self.pipe.transformer.config.sample_size) * int(self.pipe.vae.hop_length)

    @property
    def duration_s(self) -> float:
        """The pipeline's default (and longest) clip: the whole window."""
        return self.window_samples / self.sample_rate

    # -- loading ---------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | Path, export: str | Path | None = None, device=None, torch_dtype=None, revision: str | None = None
    ) -> "StableAudioModel":
        """A Stable Audio pipeline folder or Hub id (`stabilityai/stable-audio-open-1.0`), with a trained export on top."""

        folder = resolve_folder(name_or_path, "model", revision)
        if importlib.util.find_spec("torchsde") is None:
            raise ImportError(f"{name_or_path}: Stable Audio's sampler needs torchsde: pip install 'baton-trainer[stable-audio]'")
        pipe = load_pretrained(lambda f: StableAudioPipeline.from_pretrained(f, torch_dtype=torch_dtype), folder, "a StableAudioPipeline")
        model = cls(pipe)
        model.name_or_path = str(name_or_path)
        return model.prepare(export, device, torch_dtype)

    def frozen_modules(self) -> list[torch.nn.Module]:
        return [self.pipe.vae, self.pipe.text_encoder, self.pipe.projection_model]

    def preprocessing(self) -> dict:
        return {
            "window": self.window_samples,
            "audio_channels": int(self.pipe.vae.config.audio_channels),
            "tokenizer_max_length": self.pipe.tokenizer.model_max_length,
        }

    # -- training --------------------------------------------------------------------------------

    def draw_timesteps(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """t ~ U[0, 1], stable-audio-tools' default timestep sampler."""
        return torch.rand(n, generator=generator)

    def denoiser_kwargs(self, latents: torch.Tensor) -> dict:
        """The rotary embedding the pipeline builds: over the latent frames and the one global token."""

        return {"rotary_embedding": get_1d_rotary_pos_embed(self.pipe.rotary_embed_dim, latents.shape[2] + 1, use_real=True, repeat_interleave_real=False)}

    @torch.no_grad()
    def encode_audio(self, waveforms: torch.Tensor) -> torch.Tensor:
        """Mono waveforms (B, samples) -> latents (B, C, frames): both channels, the whole window
        (zeros after the clip), the VAE's posterior mean (so cached latents are deterministic)."""
        vae = self.pipe.vae
        x = waveforms.float()[:, : self.window_samples]
        x = torch.nn.functional.pad(x, (0, self.window_samples - x.shape[-1]))
        x = mono_into_channels(x, vae)
        return vae.encode(x).latent_dist.mean

    @torch.no_grad()
    def encode_text(self, captions: list[str], duration_s: float | None = None, lyrics: list[str] | None = None) -> TextConditioning:
        """The DiT's cross-attention states (projected T5 states, padding zeroed, then the
        seconds_start and seconds_total embeddings) and its global states, as the pipeline builds them."""
        self.captions_only(lyrics)
        p = self.pipe
        device = p.text_encoder.device
        duration = float(duration_s or self.duration_s)
        text = p.encode_prompt(list(captions), device, False)
        start, end = p.encode_duration(0.0, duration, device, False, len(captions))
        return TextConditioning(encoder_hidden_states=torch.cat([text, start, end], dim=1), global_hidden_states=torch.cat([start, end], dim=2))

    def null_text(self, duration_s: float | None = None) -> TextConditioning:
        """A dropped caption as stable-audio-tools trains it: the cross-attention context (text and
        seconds tokens) all zeros, the global seconds embedding kept."""
        cond = self.encode_text([""], duration_s)
        return TextConditioning(
            encoder_hidden_states=torch.zeros_like(cond.tensors["encoder_hidden_states"]), global_hidden_states=cond.tensors["global_hidden_states"]
        )

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """The pipeline's VAE decode, mixed down to mono."""
        vae = self.pipe.vae
        return vae.decode(latents.to(device=vae.device, dtype=vae.dtype)).sample.float().mean(dim=1)

    # -- sampling --------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, captions, seeds, num_inference_steps=100, guidance_scale=7.0, duration_s=None, progress=False, sampler=None, lyrics=None):
        self.captions_only(lyrics)
        if sampler is not None:
            raise ValueError(f"sampler {sampler!r}: Stable Audio samples with its own scheduler ({type(self.pipe.scheduler).__name__})")
        generators = self.clip_generators(captions, seeds, guidance_scale)
        self.pipe.set_progress_bar_config(disable=not progress, desc="sampling", leave=False)
        audio = self.pipe(
            list(captions),
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            audio_start_in_s=0.0,
            audio_end_in_s=float(duration_s or self.duration_s),
            generator=generators,
            output_type="np",
        ).audios
        return mixed_to_mono(audio)

    # -- a tiny model for tests and benchmarks ---------------------------------------------------

    @classmethod
    def tiny(cls, seed: int = 0) -> "StableAudioModel":
        """A randomly initialised StableAudioModel: diffusers' StableAudioPipeline with tiny components
        of every real class (AutoencoderOobleck at 44.1 kHz stereo, T5, StableAudioProjectionModel,
        StableAudioDiTModel) and Stable Audio Open's sampler (cosine DPM-Solver, v-prediction).
        The window is `window_frames` latent frames of 256 samples (0.37 s)."""
        # lazy: the tiny model's classes and helpers load for tests and benchmarks only
        from diffusers import AutoencoderOobleck, CosineDPMSolverMultistepScheduler, StableAudioDiTModel, StableAudioProjectionModel
        from transformers import T5Config, T5EncoderModel

        from ..tiny_parts import tiny_t5_tokenizer

        torch.manual_seed(seed)
        tokenizer = tiny_t5_tokenizer(model_max_length=16)
        text_encoder = T5EncoderModel(
            T5Config(vocab_size=len(tokenizer), d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2, pad_token_id=0, eos_token_id=1)
        )
        vae = AutoencoderOobleck(
            encoder_hidden_size=8,
            downsampling_ratios=[4, 8, 8],
            channel_multiples=[1, 2, 2],
            decoder_channels=4,
            decoder_input_channels=4,
            audio_channels=2,
            sampling_rate=44100,
        )
        projection = StableAudioProjectionModel(text_encoder_dim=16, conditioning_dim=8, min_value=0, max_value=512)
        transformer = StableAudioDiTModel(
            sample_size=64,
            in_channels=4,
            out_channels=4,
            num_layers=1,
            attention_head_dim=8,
            num_attention_heads=2,
            num_key_value_attention_heads=1,
            cross_attention_dim=16,
            time_proj_dim=8,
            global_states_input_dim=16,
            cross_attention_input_dim=8,
        )
        scheduler = CosineDPMSolverMultistepScheduler(
            sigma_min=0.3, sigma_max=500, sigma_data=1.0, sigma_schedule="exponential", solver_order=2, prediction_type="v_prediction"
        )
        pipe = StableAudioPipeline(
            vae=vae, text_encoder=text_encoder, projection_model=projection, tokenizer=tokenizer, transformer=transformer, scheduler=scheduler
        )
        model = cls(pipe)
        model.name_or_path = f"tiny-stable-audio-seed{seed}"
        return model.eval()
