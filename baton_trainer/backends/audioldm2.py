"""AudioLDM 2 (Liu et al. 2024, arXiv 2308.05734) for the trainer: `AudioLDM2Model` is the thin
adapter from diffusers' own `AudioLDM2Pipeline` to what the trainer needs (`TextToAudioBackend`).

    latents = model.encode_audio(waveforms)   # AudioLDM's training mel ("half_hop" framing), then the VAE
    cond = model.encode_text(captions)        # the pipeline's encode_prompt: CLAP + T5 -> projection -> GPT-2
    model.pipe(...)                           # generation is diffusers' pipeline

The UNet is trained as AudioLDM 2 was: epsilon prediction on the DDPM schedule of its scheduler
config (scaled_linear 0.0015 -> 0.0195), conditioned by cross-attention on GPT-2's 8 generated
states (`encoder_hidden_states`) and on the T5 states with their mask (`encoder_hidden_states_1`,
`encoder_attention_mask_1`), exactly the arguments the pipeline passes.

Each caption is encoded on its own. In diffusers' pipeline a batch pads T5 to its longest caption
and GPT-2 reads the padded sequence with absolute positions, so a clip's conditioning, and its
audio, would change with its batch neighbours; encoded alone and padded afterwards (the padding
masked in the UNet), clip i of a batch is what `pipe(caption_i, generator=g_i)` gives.

The pipeline has no LoRA loader; exports are in diffusers' LoRA file format all the same, and
`docs/backends.md` shows the three lines of peft that load one on a plain `AudioLDM2Pipeline`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from diffusers import AudioLDM2Pipeline, DDPMScheduler
from transformers import GPT2LMHeadModel

from ..hub import resolve_folder
from ..weight_files import load_pretrained
from .base import TextConditioning, TextToAudioBackend
from .mel import MelConfig, MelFrontEnd, MelLatents
from .pipeline_tango import SAMPLERS

# AudioLDM's STFT per sample rate (its authors' preprocessing configs): 16 kHz: filter and window
# 1024, hop 160, 64 mels, 0-8 kHz. The hop and the mel count are read from the vocoder.
STFT_BY_SAMPLE_RATE = {16_000: 1024}


class AudioLDM2Model(MelLatents, TextToAudioBackend):
    """An AudioLDM2Pipeline as the trainer sees it; every component stays the pipeline's."""

    # AudioLDM's training configs (haoheliu/AudioLDM-training-finetuning): unconditional_prob_cfg 0.1.
    # The null conditioning is the base default: the empty caption through the pipeline's encoders,
    # encoded alone like every caption here.
    cfg_dropout = 0.1
    pipeline_class = AudioLDM2Pipeline
    # The published checkpoints name GPT2Model, which has no generation helpers in transformers 5;
    # the pipeline needs GPT2LMHeadModel, whose body is the same weights.
    component_classes = {"GPT2Model": GPT2LMHeadModel}

    def __init__(self, pipe: AudioLDM2Pipeline):
        super().__init__(pipe)
        vocoder = pipe.vocoder.config
        sample_rate = int(vocoder.sampling_rate)
        if sample_rate not in STFT_BY_SAMPLE_RATE:
            raise ValueError(f"AudioLDM 2 at {sample_rate} Hz: no known mel front end (known: {sorted(STFT_BY_SAMPLE_RATE)} Hz)")
        n_fft = STFT_BY_SAMPLE_RATE[sample_rate]
        self.mel_config = MelConfig(
            sample_rate=sample_rate,
            n_fft=n_fft,
            win_length=n_fft,
            hop_length=int(np.prod(vocoder.upsample_rates)),
            n_mels=int(vocoder.model_in_dim),
            fmin=0.0,
            fmax=sample_rate / 2,
            framing="half_hop",
        )
        self.mel = MelFrontEnd(self.mel_config)
        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.sample_rate = sample_rate

    @property
    def duration_s(self) -> float:
        """The pipeline's default clip length (the UNet's sample size in mel frames); 10.24 s when the UNet does not say."""
        frames = (self.pipe.unet.config.sample_size or 256) * self.pipe.vae_scale_factor
        return frames * self.mel_config.hop_length / self.sample_rate

    # -- loading ---------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | Path, export: str | Path | None = None, device=None, torch_dtype=None, revision: str | None = None
    ) -> "AudioLDM2Model":
        """An AudioLDM 2 pipeline folder or Hub id (`cvssp/audioldm2`), with a trained export on top."""

        folder = resolve_folder(name_or_path, "model", revision)
        index = load_pretrained(lambda f: json.loads(Path(f).read_text(encoding="utf-8")), folder / "model_index.json", "a pipeline index")
        components = {}
        named = index.get("language_model", [None, None])[1]
        if named in cls.component_classes:
            language_model = cls.component_classes[named]
            components["language_model"] = load_pretrained(language_model.from_pretrained, folder / "language_model", f"a {language_model.__name__}")
        pipe = load_pretrained(lambda f: AudioLDM2Pipeline.from_pretrained(f, torch_dtype=torch_dtype, **components), folder, "an AudioLDM2Pipeline")
        model = cls(pipe)
        model.name_or_path = str(name_or_path)
        return model.prepare(export, device, torch_dtype)

    def frozen_modules(self) -> list[torch.nn.Module]:
        p = self.pipe
        return [p.vae, p.text_encoder, p.text_encoder_2, p.projection_model, p.language_model, p.vocoder]

    def preprocessing(self) -> dict:
        return {"mel": self.mel_config.to_dict()}

    # -- encoding --------------------------------------------------------------------------------

    def num_frames(self, duration_s: float) -> int:
        """Mel frames of a clip, as the pipeline sizes its latents: duration / hop, rounded up to the VAE's factor."""
        factor = self.pipe.vae_scale_factor
        frames = int(duration_s * self.sample_rate / self.mel_config.hop_length)
        return math.ceil(frames / factor) * factor

    def _encode_one(self, caption: str, guidance: bool) -> tuple[TextConditioning, TextConditioning | None]:
        """One caption through the pipeline's own `encode_prompt`; with guidance also the empty
        caption, padded to the caption's T5 length as the pipeline does at batch size 1."""
        embeds, mask, generated = self.pipe.encode_prompt([caption], self.pipe.text_encoder_2.device, 1, guidance)
        conds = [
            TextConditioning(
                encoder_hidden_states=generated[i : i + 1], encoder_hidden_states_1=embeds[i : i + 1], encoder_attention_mask_1=mask[i : i + 1].bool()
            )
            for i in range(embeds.shape[0])
        ]
        return (conds[1], conds[0]) if guidance else (conds[0], None)  # encode_prompt puts the negative first

    @torch.no_grad()
    def encode_text(self, captions: list[str], duration_s: float | None = None, lyrics: list[str] | None = None) -> TextConditioning:
        self.captions_only(lyrics)
        return TextConditioning.cat([self._encode_one(c, guidance=False)[0] for c in captions])

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """The pipeline's decode: VAE to log-mel, then its vocoder."""
        vae = self.pipe.vae
        mel = vae.decode(latents.to(device=vae.device, dtype=vae.dtype) / vae.config.scaling_factor).sample
        return self.pipe.mel_spectrogram_to_waveform(mel).float()

    # -- sampling --------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, captions, seeds, num_inference_steps=200, guidance_scale=3.5, duration_s=None, progress=False, sampler=None, lyrics=None):
        self.captions_only(lyrics)
        generators = self.clip_generators(captions, seeds, guidance_scale)
        guidance = guidance_scale > 1.0  # the pipeline's own rule
        encoded = [self._encode_one(c, guidance) for c in captions]
        # Conditional and unconditional padded together: the pipeline wants them the same shape.
        joined = TextConditioning.cat([c for c, _ in encoded] + ([u for _, u in encoded] if guidance else []))
        n = len(captions)
        kwargs = {
            "prompt_embeds": joined.tensors["encoder_hidden_states_1"][:n],
            "attention_mask": joined.tensors["encoder_attention_mask_1"][:n].long(),
            "generated_prompt_embeds": joined.tensors["encoder_hidden_states"][:n],
        }
        if guidance:
            kwargs.update(
                negative_prompt_embeds=joined.tensors["encoder_hidden_states_1"][n:],
                negative_attention_mask=joined.tensors["encoder_attention_mask_1"][n:].long(),
                negative_generated_prompt_embeds=joined.tensors["encoder_hidden_states"][n:],
            )
        pipe = self.pipe
        if sampler is not None:
            if sampler not in SAMPLERS:
                raise ValueError(f"unknown sampler {sampler!r} (known: {', '.join(SAMPLERS)})")
            pipe = type(pipe).from_pipe(pipe, scheduler=SAMPLERS[sampler].from_config(pipe.scheduler.config))
        pipe.set_progress_bar_config(disable=not progress, desc="sampling", leave=False)
        audio = pipe(
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            audio_length_in_s=duration_s or self.duration_s,
            generator=generators,
            output_type="np",
            **kwargs,
        ).audios
        return np.asarray(audio, dtype=np.float32)

    # -- a tiny model for tests and benchmarks ---------------------------------------------------

    @classmethod
    def tiny(cls, seed: int = 0) -> "AudioLDM2Model":
        """A randomly initialised AudioLDM2Model: the real AudioLDM2Pipeline with tiny components of
        every real class (CLAP, T5, projection, GPT-2, AudioLDM2UNet2DConditionModel, AutoencoderKL,
        SpeechT5HifiGan) and AudioLDM 2's DDIM schedule (epsilon, scaled_linear 0.0015 -> 0.0195)."""
        # lazy: the tiny model's classes and helpers load for tests and benchmarks only
        from diffusers import AudioLDM2ProjectionModel, AudioLDM2UNet2DConditionModel, AutoencoderKL, DDIMScheduler
        from transformers import ClapModel, GPT2Config, T5Config, T5EncoderModel

        from ..clap import clap_feature_extractor, train_clap_tokenizer
        from ..tiny_parts import TINY_CLAP_CORPUS, tiny_clap_config, tiny_hifigan, tiny_t5_tokenizer

        torch.manual_seed(seed)
        tokenizer = train_clap_tokenizer([line for line in TINY_CLAP_CORPUS.splitlines() if line.strip()], vocab_size=600, model_max_length=77)
        clap = ClapModel(tiny_clap_config(projection_dim=16, vocab_size=len(tokenizer)))
        tokenizer_2 = tiny_t5_tokenizer()
        t5 = T5EncoderModel(T5Config(vocab_size=len(tokenizer_2), d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2, pad_token_id=0, eos_token_id=1))
        gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=16, n_head=2, n_layer=1, vocab_size=8, n_positions=64, bos_token_id=0, eos_token_id=0))
        gpt2.config.max_new_tokens = 8
        projection = AudioLDM2ProjectionModel(text_encoder_dim=16, text_encoder_1_dim=16, langauge_model_dim=16)
        vae = AutoencoderKL(
            in_channels=1,
            out_channels=1,
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            block_out_channels=(8, 16),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=4,
        )
        frames = 32  # hop 160 at 16 kHz
        unet = AudioLDM2UNet2DConditionModel(
            sample_size=frames // 2,
            in_channels=4,
            out_channels=4,
            block_out_channels=(16, 32),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=([None, 16, 16], [None, 16, 16]),
            norm_num_groups=4,
            attention_head_dim=4,
        )
        vocoder = tiny_hifigan()
        scheduler = DDIMScheduler(
            num_train_timesteps=1000,
            beta_start=0.0015,
            beta_end=0.0195,
            beta_schedule="scaled_linear",
            prediction_type="epsilon",
            clip_sample=False,
            set_alpha_to_one=False,
            steps_offset=1,
        )
        pipe = AudioLDM2Pipeline(
            vae=vae,
            text_encoder=clap,
            text_encoder_2=t5,
            projection_model=projection,
            language_model=gpt2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            feature_extractor=clap_feature_extractor(),
            unet=unet,
            scheduler=scheduler,
            vocoder=vocoder,
        )
        model = cls(pipe)
        model.name_or_path = f"tiny-audioldm2-seed{seed}"
        return model.eval()

    @classmethod
    def save_tiny(cls, folder: str | Path | None = None, seed: int = 0) -> Path:
        """A tiny AudioLDM 2 folder in the published checkpoints' layout: `save_pretrained`, with the
        language model stored as a `GPT2Model`, as `cvssp/audioldm2` stores it."""
        folder = super().save_tiny(folder, seed)
        GPT2LMHeadModel.from_pretrained(folder / "language_model").transformer.save_pretrained(folder / "language_model")
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
        index["language_model"] = ["transformers", "GPT2Model"]
        (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        return folder
