"""ACE-Step 1.5 for the trainer: `AceStepModel` adapts diffusers' `AceStepPipeline`
(`ACE-Step/acestep-v15-xl-base-diffusers`, `-xl-turbo-diffusers`; text-to-music, 48 kHz stereo, an
Oobleck VAE of 1920 samples a latent frame, a Qwen3 text encoder, a condition encoder that packs
caption, lyrics and timbre into one sequence, a DiT on (frames, 64) latents) to `TextToAudioBackend`.

    latents = model.encode_audio(waveforms)   # the VAE's posterior mean, (B, frames, 64) as the pipeline's latents
    cond = model.encode_text(captions)        # the pipeline's encode_prompt + condition_encoder, one caption at a time

It is the trainer's "flow" objective as it stands: x_t = (1 - t) z0 + t eps, the DiT predicts the
velocity eps - z0 at t in [0, 1] (its scheduler has one training timestep), sampled by Euler from
t = 1 on the pipeline's shifted grid t' = s t / (1 + (s - 1) t), s = `flow_shift`. Training draws t
as ACE-Step 1.5's own training code does (`sample_t_r` in its modeling file: t = sigmoid(N(-0.4, 1)),
r = t) and drops 15 % of captions to the condition encoder's learned `null_condition_emb`
(`cfg_ratio = 0.15` there), which is also the pipeline's unconditional input for guidance.

The DiT's cross-attention takes no padding mask: a batch of captions of different lengths would
make each caption's prediction depend on its neighbours' padding. `predict` and `generate`
therefore call the DiT on captions of one conditioning length at a time, so every clip is what the
pipeline makes of its caption alone. Lyrics come with the captions where the data has them (a
`lyrics` column, a captions file's `lyrics` field); without, they are the empty string (instrumental).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from diffusers import AceStepPipeline

from ..hub import resolve_folder
from ..weight_files import load_pretrained
from .base import TextConditioning, TextToAudioBackend, clips_by_key, mono_into_channels, rows_by_key

# ACE-Step 1.5's training timestep distribution (its modeling file's `sample_t_r`, the model config's
# timestep_mu and timestep_sigma): t = sigmoid(N(-0.4, 1)).
TIMESTEP_MU, TIMESTEP_SIGMA = -0.4, 1.0
# The pipeline's output level: every clip scaled to a peak of -1 dBFS (`AceStepPipeline.__call__`).
PEAK_DBFS = -1.0


class AceStepModel(TextToAudioBackend):
    """An AceStepPipeline as the trainer sees it; the denoiser is `pipe.transformer`."""

    denoiser_name = "transformer"
    pipeline_class = AceStepPipeline
    objective = "flow"
    default_snr_mode = "none"
    default_duration_s = 30.0
    flow_shift = 3.0  # the pipeline's default `shift` of its sampling grid (its scheduler is registered with 1)
    lora_target_modules = ("to_q", "to_k", "to_v", "to_out.0")  # the DiT's self- and cross-attention projections
    cfg_dropout = 0.15  # ACE-Step 1.5's cfg_ratio: the whole conditioning replaced by null_condition_emb
    takes_lyrics = True

    def __init__(self, pipe: AceStepPipeline):
        super().__init__(pipe)
        self.sample_rate = int(pipe.sample_rate)
        self.noise_scheduler = pipe.scheduler  # sampling only: training draws continuous t itself

    @property
    def duration_s(self) -> float:
        return self.default_duration_s

    @property
    def frame_samples(self) -> int:
        return int(math.prod(self.pipe.vae.config.downsampling_ratios))

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, export: str | Path | None = None, device=None, torch_dtype=None, revision: str | None = None):
        """An ACE-Step 1.5 pipeline folder or Hub id, with a trained export on top."""
        folder = resolve_folder(name_or_path, "model", revision)
        pipe = load_pretrained(lambda f: AceStepPipeline.from_pretrained(f, torch_dtype=torch_dtype), folder, "an AceStepPipeline")
        model = cls(pipe)
        model.name_or_path = str(name_or_path)
        return model.prepare(export, device, torch_dtype)

    def frozen_modules(self) -> list[torch.nn.Module]:
        return [self.pipe.vae, self.pipe.text_encoder, self.pipe.condition_encoder]

    def preprocessing(self) -> dict:
        return {"audio_channels": int(self.pipe.vae.config.audio_channels), "frame_samples": self.frame_samples}

    # -- training --------------------------------------------------------------------------------

    def draw_timesteps(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """ACE-Step 1.5's logit-normal flow times: t = sigmoid(N(-0.4, 1))."""
        return torch.sigmoid(torch.randn(n, generator=generator) * TIMESTEP_SIGMA + TIMESTEP_MU).clamp(1e-4, 1 - 1e-4)

    def denoiser_timestep(self, timesteps: torch.Tensor) -> torch.Tensor:
        """The pipeline hands the DiT the scheduler's timestep, sigma * num_train_timesteps (1)."""
        return timesteps * float(self.pipe.scheduler.config.num_train_timesteps)

    def context_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """The DiT's context for text-to-music, as the pipeline forms it: the condition encoder's
        silence latent tiled to the clip's frames, then a chunk mask of ones (generate everything)."""
        silence = self.pipe.condition_encoder.silence_latent.to(device=latents.device, dtype=latents.dtype)
        frames = latents.shape[1]
        silence = silence.repeat(1, -(-frames // silence.shape[1]), 1)[:, :frames]
        return torch.cat([silence, torch.ones_like(silence)], dim=-1).expand(latents.shape[0], -1, -1)

    def predict(self, denoiser: torch.nn.Module, noisy: torch.Tensor, timesteps: torch.Tensor, text: TextConditioning) -> torch.Tensor:
        """The DiT's velocity, called as the pipeline calls it (timestep_r = timestep), on the rows of
        one conditioning length at a time with that length's states only (its cross-attention has no
        padding mask)."""
        states, mask = text.tensors["encoder_hidden_states"], text.tensors["encoder_attention_mask"]
        t = self.denoiser_timestep(timesteps).to(device=noisy.device, dtype=noisy.dtype)
        context = self.context_latents(noisy)
        # a row without a valid position keeps the whole width (only the planner's shape-only pass has one)
        lengths = [int(n) or states.shape[1] for n in mask.sum(dim=1).tolist()]
        out = None
        for rows in rows_by_key(lengths):
            length = lengths[rows[0]]
            part = denoiser(
                hidden_states=noisy[rows],
                timestep=t[rows],
                timestep_r=t[rows],
                encoder_hidden_states=states[rows, :length],
                context_latents=context[rows],
            ).sample
            if len(rows) == len(noisy):
                return part
            out = part.new_zeros(noisy.shape) if out is None else out
            out = out.index_copy(0, torch.tensor(rows, device=part.device), part)
        return out

    @torch.no_grad()
    def encode_audio(self, waveforms: torch.Tensor) -> torch.Tensor:
        """Mono waveforms (B, samples) -> latents (B, frames, 64): into both channels, zero-padded up to
        a whole latent frame as the pipeline rounds a duration up, the VAE's posterior mean."""
        vae = self.pipe.vae
        x = waveforms.float()
        x = torch.nn.functional.pad(x, (0, -x.shape[-1] % self.frame_samples))
        return vae.encode(mono_into_channels(x, vae)).latent_dist.mean.transpose(1, 2)

    @torch.no_grad()
    def encode_text(self, captions: list[str], duration_s: float | None = None, lyrics: list[str] | None = None) -> TextConditioning:
        """The pipeline's conditioning for text-to-music without reference audio (caption in its
        prompt template with the duration, the lyrics or "", the silence latent as timbre, packed
        by the condition encoder), one caption at a time; a batch is padded with the mask off."""
        p = self.pipe
        device = p.text_encoder.device
        duration = float(duration_s or self.duration_s)
        timbre_frames = math.ceil(30 * p.latents_per_second)  # the pipeline's 30 s of silence as timbre
        timbre = p.condition_encoder.silence_latent[:, :timbre_frames].to(device=device, dtype=p.condition_encoder.dtype)
        rows = []
        for caption, words in zip(captions, self.lyrics_of(captions, lyrics)):
            text, text_mask, lyric, lyric_mask = p.encode_prompt([caption], [words], device, audio_duration=duration)
            states, mask = p.condition_encoder(
                text_hidden_states=text,
                text_attention_mask=text_mask,
                lyric_hidden_states=lyric,
                lyric_attention_mask=lyric_mask,
                refer_audio_acoustic_hidden_states_packed=timbre,
                refer_audio_order_mask=torch.zeros(1, dtype=torch.long, device=device),
            )
            rows.append(TextConditioning(encoder_hidden_states=states, encoder_attention_mask=mask))
        return TextConditioning.cat(rows)

    @staticmethod
    def lyrics_of(captions: list[str], lyrics: list[str] | None) -> list[str]:
        """One lyric text per caption ("" where there are none)."""
        if lyrics is None:
            return [""] * len(captions)
        if len(lyrics) != len(captions):
            raise ValueError(f"{len(captions)} captions but {len(lyrics)} lyrics")
        return [words or "" for words in lyrics]

    def drop_captions(self, text: TextConditioning, dropped: torch.Tensor, null: TextConditioning) -> TextConditioning:
        """ACE-Step's dropped caption: every position of the conditioning replaced by the learned
        null_condition_emb (the mask kept, so the row keeps its length)."""
        states = text.tensors["encoder_hidden_states"]
        null_emb = self.pipe.condition_encoder.null_condition_emb.to(device=states.device, dtype=states.dtype)
        states = torch.where(dropped.to(states.device)[:, None, None], null_emb.expand_as(states), states)
        return TextConditioning(encoder_hidden_states=states, encoder_attention_mask=text.tensors["encoder_attention_mask"])

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """The pipeline's decode and its level (a clip over full scale divided by its peak, then every
        clip scaled to a peak of -1 dBFS), mixed down to mono."""
        vae = self.pipe.vae
        audio = vae.decode(latents.transpose(1, 2).to(device=vae.device, dtype=vae.dtype)).sample.float()
        audio = audio / audio.abs().amax(dim=(1, 2), keepdim=True).clamp(min=1.0)
        audio = audio * (10.0 ** (PEAK_DBFS / 20.0) / audio.abs().amax(dim=(1, 2), keepdim=True).clamp(min=1e-6))
        return audio.mean(dim=1)

    # -- sampling --------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, captions, seeds, num_inference_steps=8, guidance_scale=7.0, duration_s=None, progress=False, sampler=None, lyrics=None):
        if sampler is not None:
            raise ValueError(f"sampler {sampler!r}: ACE-Step samples with its own scheduler ({type(self.pipe.scheduler).__name__})")
        generators = self.clip_generators(captions, seeds, guidance_scale)
        duration = float(duration_s or self.duration_s)
        samples = int(round(duration * self.sample_rate))
        self.pipe.set_progress_bar_config(disable=not progress, desc="sampling", leave=False)
        # One pipeline call per pair of token lengths (the pipeline pads a batch's prompts and its
        # lyrics each to the longest, and its DiT sees padding: the module's docstring): none is padded.
        lyrics = self.lyrics_of(captions, lyrics)
        lengths = []
        for caption, words in zip(captions, lyrics):
            text, lyric = self.pipe._format_prompt(caption, words, audio_duration=duration)
            lengths.append(tuple(len(self.pipe.tokenizer(part, truncation=True, max_length=limit).input_ids) for part, limit in ((text, 256), (lyric, 2048))))
        return clips_by_key(
            lengths,
            samples,
            lambda rows: (
                self.pipe(
                    [captions[i] for i in rows],
                    lyrics=[lyrics[i] for i in rows],  # one per caption: the pipeline indexes it by row
                    audio_duration=duration,
                    num_inference_steps=num_inference_steps,
                    guidance_scale=guidance_scale,
                    shift=self.flow_shift,
                    generator=[generators[i] for i in rows],
                    output_type="np",
                ).audios
            ),
        )

    # -- a tiny model for tests and benchmarks ---------------------------------------------------

    @classmethod
    def tiny(cls, seed: int = 0) -> "AceStepModel":
        """A randomly initialised AceStepModel: diffusers' AceStepPipeline with tiny components of every
        real class (Qwen3's encoder, AutoencoderOobleck at 48 kHz stereo with 1024 samples a latent
        frame, AceStepConditionEncoder, AceStepTransformer1DModel with a sliding and a full attention
        layer) and the pipeline's scheduler (one training timestep, shift 1: the pipeline shifts its grid)."""
        # lazy: the tiny model's classes and helpers load for tests and benchmarks only
        from diffusers import AceStepConditionEncoder, AceStepTransformer1DModel, AutoencoderOobleck, FlowMatchEulerDiscreteScheduler
        from transformers import Qwen3Config, Qwen3Model

        from ..tiny_parts import tiny_tokenizer

        torch.manual_seed(seed)
        tokenizer = tiny_tokenizer(model_max_length=64)
        text_encoder = Qwen3Model(
            Qwen3Config(
                vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=8
            )
        ).eval()
        acoustic = 4
        vae = AutoencoderOobleck(
            encoder_hidden_size=8,
            downsampling_ratios=[4, 8, 8, 4],
            channel_multiples=[1, 2, 2, 2],
            decoder_channels=4,
            decoder_input_channels=acoustic,
            audio_channels=2,
            sampling_rate=48000,
        )
        attention = dict(num_attention_heads=2, num_key_value_heads=1, head_dim=8, sliding_window=8)
        condition_encoder = AceStepConditionEncoder(
            hidden_size=16,
            intermediate_size=32,
            text_hidden_dim=16,
            timbre_hidden_dim=acoustic,
            num_lyric_encoder_hidden_layers=1,
            num_timbre_encoder_hidden_layers=1,
            **attention,
        )
        with torch.no_grad():  # the real buffer is the VAE's encoding of silence; a zero one would hide the timbre path
            condition_encoder.silence_latent.normal_(0.0, 0.5)
        transformer = AceStepTransformer1DModel(
            hidden_size=16, intermediate_size=32, num_hidden_layers=2, in_channels=3 * acoustic, audio_acoustic_hidden_dim=acoustic, patch_size=2, **attention
        )
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, shift=1.0)
        pipe = AceStepPipeline(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, condition_encoder=condition_encoder, scheduler=scheduler
        )
        model = cls(pipe)
        model.name_or_path = f"tiny-ace-step-seed{seed}"
        return model.eval()
