"""Stable Audio 3 (Stability AI, 2026) for the trainer: `StableAudio3Model` is the thin adapter
from diffusers' own `StableAudio3Pipeline` to what the trainer needs. It is the project's
rectified-flow backend.

    latents = model.encode_audio(waveforms)   # mono -> both channels, to a whole latent frame, SAME autoencoder
    cond = model.encode_text(captions, 10.0)  # the pipeline's T5Gemma states + its duration token and embedding
    model.pipe(...)                           # generation is diffusers' pipeline (FlowMatchEulerDiscreteScheduler)

The DiT predicts the rectified-flow velocity, as stable-audio-tools trains it (objective
"rectified_flow"): x_t = (1 - t) z0 + t eps, target eps - z0 (`losses.noised_latents_and_target`,
objective "flow"), t drawn by stable-audio-tools' "log_snr" sampler (logSNR ~ N(-1.2, 2^2),
t = sigmoid(-logSNR), clamped to [1e-4, 1 - 1e-4]), which puts the training timesteps where the
pipeline's log-SNR sampling schedule (-6.2 to 2) spends its steps. The DiT is given t as the
pipeline's scheduler gives it: t * num_train_timesteps (1 in Stable Audio 3's scheduler config).

Align the non-distilled base checkpoint (`stabilityai/stable-audio-3-medium-base`, Euler
sampling): the distilled `stable-audio-3-medium` samples in 8 ping-pong steps that the flow loss
would undo. Unlike Stable Audio Open, a clip is generated at its own length, so it is also
trained at its own length (rounded up to one latent frame) and conditioned on that duration.

The project works in mono (ratings, reward model and metrics): mono training audio goes into both
channels, and generated stereo is mixed down when it leaves the backend.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import StableAudio3Pipeline

from ..hub import resolve_folder
from ..weight_files import load_pretrained
from .base import TextConditioning, TextToAudioBackend, import_own_components, mixed_to_mono, mono_into_channels

# stable-audio-tools' "log_snr" timestep sampler defaults (training/diffusion.py)
MEAN_LOGSNR, STD_LOGSNR = -1.2, 2.0


class StableAudio3Model(TextToAudioBackend):
    """A StableAudio3Pipeline as the trainer sees it; every component stays the pipeline's."""

    denoiser_name = "transformer"
    pipeline_class = StableAudio3Pipeline
    objective = "flow"
    default_snr_mode = "none"
    default_duration_s = 10.0  # the pipeline's default `duration`
    lora_target_modules = ("to_qkv", "to_q", "to_kv", "to_out")  # its fused self- and cross-attention projections
    unused_denoiser_parts = ("to_local_embed",)  # the inpainting input (local_add_cond) of each block
    cfg_dropout = 0.1  # stable-audio-tools' cfg_dropout_prob: the whole cross-attention context zeroed

    def __init__(self, pipe):
        super().__init__(pipe)
        self.sample_rate = int(pipe.vae.config.sampling_rate)
        self.noise_scheduler = pipe.scheduler  # sampling only: training draws continuous t itself

    @property
    def duration_s(self) -> float:
        return self.default_duration_s

    # -- loading ---------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | Path, export: str | Path | None = None, device=None, torch_dtype=None, revision: str | None = None
    ) -> "StableAudio3Model":
        """A Stable Audio 3 pipeline folder or Hub id (`stabilityai/stable-audio-3-medium-base`), with a trained export on top."""

        folder = resolve_folder(name_or_path, "model", revision)
        import_own_components(folder)
        pipe = load_pretrained(lambda f: StableAudio3Pipeline.from_pretrained(f, torch_dtype=torch_dtype), folder, "a StableAudio3Pipeline")
        model = cls(pipe)
        model.name_or_path = str(name_or_path)
        return model.prepare(export, device, torch_dtype)

    def frozen_modules(self) -> list[torch.nn.Module]:
        return [self.pipe.vae, self.pipe.text_encoder, self.pipe.duration_embedder]

    def preprocessing(self) -> dict:
        return {"audio_channels": int(self.pipe.vae.config.audio_channels), "downsampling_ratio": int(self.pipe.vae.downsampling_ratio)}

    # -- training --------------------------------------------------------------------------------

    def draw_timesteps(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """stable-audio-tools' log-SNR sampler: t = sigmoid(-logSNR), logSNR ~ N(-1.2, 2^2)."""
        logsnr = torch.randn(n, generator=generator) * STD_LOGSNR + MEAN_LOGSNR
        return torch.sigmoid(-logsnr).clamp(1e-4, 1 - 1e-4)

    def denoiser_timestep(self, timesteps: torch.Tensor) -> torch.Tensor:
        """The pipeline hands the DiT the scheduler's timestep, sigma * num_train_timesteps."""
        return timesteps * float(self.pipe.scheduler.config.num_train_timesteps)

    @torch.no_grad()
    def encode_audio(self, waveforms: torch.Tensor) -> torch.Tensor:
        """Mono waveforms (B, samples) -> latents (B, C, frames): both channels, zero-padded up to a
        whole latent frame as the pipeline rounds a duration, through the SAME autoencoder."""
        vae = self.pipe.vae
        ratio = int(vae.downsampling_ratio)
        x = waveforms.float()
        x = torch.nn.functional.pad(x, (0, -x.shape[-1] % ratio))
        x = mono_into_channels(x, vae)
        return vae.encode(x).latents

    @torch.no_grad()
    def encode_text(self, captions: list[str], duration_s: float | None = None, lyrics: list[str] | None = None) -> TextConditioning:
        """The DiT's cross-attention context (T5Gemma states padded to the tokenizer's length, then the
        duration token), its mask, and the global duration embedding, as the pipeline builds them."""
        self.captions_only(lyrics)
        p = self.pipe
        device = p.text_encoder.device
        duration = float(duration_s or self.duration_s)
        text, mask = p.encode_prompt(list(captions), device, 1)
        duration_embedding = p.encode_duration(duration, device, 1, len(captions))
        context, context_mask = p.prepare_cross_attention(text, mask, duration_embedding)
        return TextConditioning(encoder_hidden_states=context, encoder_attention_mask=context_mask, global_hidden_states=duration_embedding)

    def null_text(self, duration_s: float | None = None) -> TextConditioning:
        """A dropped caption as stable-audio-tools trains it: the whole cross-attention context
        (text and duration token) zeros, every position valid (no learned padding), the global
        duration embedding kept."""
        cond = self.encode_text([""], duration_s)
        context, mask = cond.tensors["encoder_hidden_states"], cond.tensors["encoder_attention_mask"]
        return TextConditioning(
            encoder_hidden_states=torch.zeros_like(context),
            encoder_attention_mask=torch.ones_like(mask),
            global_hidden_states=cond.tensors["global_hidden_states"],
        )

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """The pipeline's decode (clamped to [-1, 1] as it does), mixed down to mono."""
        vae = self.pipe.vae
        return vae.decode(latents.to(device=vae.device, dtype=vae.dtype)).sample.float().clamp(-1, 1).mean(dim=1)

    # -- sampling --------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, captions, seeds, num_inference_steps=100, guidance_scale=1.0, duration_s=None, progress=False, sampler=None, lyrics=None):
        self.captions_only(lyrics)
        if sampler is not None:
            raise ValueError(f"sampler {sampler!r}: Stable Audio 3 samples with its own scheduler ({type(self.pipe.scheduler).__name__})")
        generators = self.clip_generators(captions, seeds, guidance_scale)
        self.pipe.set_progress_bar_config(disable=not progress, desc="sampling", leave=False)
        audio = self.pipe(
            list(captions),
            duration=float(duration_s or self.duration_s),
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=generators,
            output_type="np",
        ).audios
        return mixed_to_mono(audio)

    # -- a tiny model for tests and benchmarks ---------------------------------------------------

    @classmethod
    def tiny(cls, seed: int = 0) -> "StableAudio3Model":
        """A randomly initialised StableAudio3Model: diffusers' StableAudio3Pipeline with tiny components
        of every real class (AutoencoderSAME at 44.1 kHz stereo, 64 samples a latent frame; T5Gemma's
        encoder; StableAudio3DurationEmbedder; StableAudio3DiTModel) and the base checkpoint's sampler
        (FlowMatchEulerDiscreteScheduler, deterministic Euler, timesteps in [0, 1])."""
        # lazy: the tiny model's classes and helpers load for tests and benchmarks only
        from diffusers import AutoencoderSAME, FlowMatchEulerDiscreteScheduler, StableAudio3DiTModel
        from diffusers.pipelines.stable_audio_3.modeling_stable_audio_3 import StableAudio3DurationEmbedder
        from transformers import T5GemmaConfig, T5GemmaEncoderModel

        from ..tiny_parts import tiny_tokenizer

        torch.manual_seed(seed)
        tokenizer = tiny_tokenizer(model_max_length=16)
        module = dict(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=8,
            query_pre_attn_scalar=8,
            sliding_window=16,
            max_position_embeddings=64,
        )
        text_encoder = T5GemmaEncoderModel(T5GemmaConfig(encoder=module, decoder=module, vocab_size=len(tokenizer), is_encoder_decoder=False)).eval()
        vae = AutoencoderSAME(
            audio_channels=2,
            patch_size=16,
            encoder_channels=8,
            encoder_c_mults=(2,),
            encoder_strides=(4,),
            encoder_transformer_depths=(1,),
            latent_dim=4,
            dim_heads=8,
            ff_mult=2,
            sampling_rate=44100,
        )
        duration_embedder = StableAudio3DurationEmbedder(output_dim=16, fourier_dim=8, max_val=64.0)
        transformer = StableAudio3DiTModel(
            io_channels=4,
            embed_dim=16,
            depth=1,
            num_heads=2,
            cond_token_dim=16,
            global_cond_dim=16,
            local_add_cond_dim=5,
            timestep_features_dim=8,
            ff_mult=2.0,
            num_memory_tokens=2,
        )
        # SAME and the DiT zero-initialise their residual branches and SAME starts its decoder's new
        # tokens at 1e-5, so at random init the decoder ignores its latents: give them random values.
        with torch.no_grad():
            for name, parameter in [*vae.named_parameters(), *transformer.named_parameters()]:
                if name.endswith("new_tokens"):
                    parameter.normal_(0.0, 1.0)
                elif parameter.ndim > 1 and not parameter.any():
                    parameter.normal_(0.0, 0.2)
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, shift=1.0, stochastic_sampling=False)
        pipe = StableAudio3Pipeline(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, duration_embedder=duration_embedder, transformer=transformer, scheduler=scheduler
        )
        model = cls(pipe)
        model.name_or_path = f"tiny-stable-audio-3-seed{seed}"
        return model.eval()
