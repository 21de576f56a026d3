"""Tiny models made of the real classes, and synthetic data, for tests and benchmarks (no downloads).

- `tiny_tango()`: a TangoModel with a few thousand parameters per component: the same
  AutoencoderKL, UNet2DConditionModel (with cross-attention), T5EncoderModel, tokenizer,
  SpeechT5HifiGan and DDPMScheduler types as real TANGO, at toy sizes.
- `tiny_audioldm2()`, `tiny_stable_audio()`, `tiny_stable_audio_3()`, `tiny_longcat_audio_dit()`, `tiny_ace_step()`: the same for
  AudioLDM 2, Stable Audio Open, Stable Audio 3, LongCat-AudioDiT and ACE-Step (diffusers' own pipelines, every component class real).
- `save_tiny_clap()`: a tiny random `ClapModel` + `ClapProcessor` (a real byte-level BPE tokenizer
  and the real feature extractor) that takes 10 s clips at 48 kHz.
- `synthetic_rating_rows()` and friends: rating data for the reward stages. Clips are a low tone
  (~300 Hz) or high band noise (~5 kHz); captions say "low ..." or "high ...". Rule "match" rates a
  clip aligned when its sound matches its caption's word; rule "audio" when it is the tone. A
  random tiny CLAP's text encoder does not generalise "low"/"high" to unseen captions, so tests of
  held-out accuracy use rule "audio"; "match" is for a trained CLAP.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from diffusers import (
    AudioLDM2Pipeline,
    AudioLDM2ProjectionModel,
    AudioLDM2UNet2DConditionModel,
    AutoencoderKL,
    AutoencoderOobleck,
    DDIMScheduler,
    DDPMScheduler,
    StableAudioDiTModel,
    StableAudioPipeline,
    StableAudioProjectionModel,
    UNet2DConditionModel,
)
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    ClapAudioConfig,
    ClapConfig,
    ClapModel,
    ClapProcessor,
    ClapTextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
    SpeechT5HifiGan,
    SpeechT5HifiGanConfig,
    T5Config,
    T5EncoderModel,
    T5GemmaConfig,
    T5GemmaEncoderModel,
    T5Tokenizer,
)

from .audio import save_wav, wav_bytes
from .backends.audioldm2 import AudioLDM2Model
from .backends.pipeline_tango import TangoPipeline
from .backends.stable_audio import StableAudioModel
from .backends.tango import TangoModel
from .clap import clap_feature_extractor, train_clap_tokenizer

TINY_WORDS = (
    "a dog barks and then birds chirp followed by rain falls while engine hums with people talk "
    "beep hum hiss click chirp rumble siren music wind water baby cries the of in background"
).split()


def tiny_tokenizer(words: list[str] | tuple[str, ...] = TINY_WORDS, model_max_length: int = 32):
    """A word-level `PreTrainedTokenizerFast` with T5's special tokens, built offline."""

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for word in words:
        vocab.setdefault(word.lower(), len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = __import__("tokenizers").normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=model_max_length)


def tiny_scheduler():
    """TANGO's noise schedule (docs/tango.md): scaled_linear 0.00085 -> 0.012, v-prediction."""

    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="v_prediction",
        steps_offset=1,
        clip_sample=False,
    )


def tiny_tango(seed: int = 0, n_mels: int = 16, duration_s: float = 0.32):
    """A randomly initialised TangoModel with tiny components (CPU, milliseconds per step)."""

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    text_encoder = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2, pad_token_id=0, eos_token_id=1))
    vae = AutoencoderKL(
        in_channels=1,
        out_channels=1,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        scaling_factor=0.9227914214134216,
    )
    unet = UNet2DConditionModel(
        sample_size=None,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        attention_head_dim=4,
        cross_attention_dim=16,
        norm_num_groups=4,
        use_linear_projection=True,
        upcast_attention=True,
    )
    vocoder = SpeechT5HifiGan(
        SpeechT5HifiGanConfig(
            model_in_dim=n_mels,
            sampling_rate=16000,
            upsample_initial_channel=16,
            upsample_rates=[5, 4, 8],
            upsample_kernel_sizes=[10, 8, 16],
            resblock_kernel_sizes=[3],
            resblock_dilation_sizes=[[1, 3]],
            normalize_before=False,
        )
    )
    pipe = TangoPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler.from_config(tiny_scheduler().config),
        vocoder=vocoder,
        n_fft=512,
        win_length=512,
        n_mels=n_mels,
        duration_s=duration_s,
        text_max_length=32,
    )
    model = TangoModel(pipe)
    model.name_or_path = f"tiny-tango-seed{seed}"
    return model.eval()


def save_tiny_tango(folder: str | Path | None = None, seed: int = 0) -> Path:
    folder = Path(folder or tempfile.mkdtemp(prefix="tiny-tango-"))
    tiny_tango(seed).save_pretrained(folder)
    return folder


def tiny_t5_tokenizer(words: list[str] | tuple[str, ...] = TINY_WORDS, model_max_length: int = 32):
    """A `T5Tokenizer` (a unigram over whole words) built offline: AudioLDM 2's pipeline checks the
    tokenizer's class to decide what to feed it."""

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("\u2581" + w, -1.0 - 0.01 * i) for i, w in enumerate(dict.fromkeys(w.lower() for w in words))]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=model_max_length)


def tiny_audioldm2(seed: int = 0, n_mels: int = 16, duration_s: float = 0.32):
    """A randomly initialised AudioLDM2Model: the real AudioLDM2Pipeline with tiny components of
    every real class (CLAP, T5, projection, GPT-2, AudioLDM2UNet2DConditionModel, AutoencoderKL,
    SpeechT5HifiGan) and AudioLDM 2's DDIM schedule (epsilon, scaled_linear 0.0015 -> 0.0195)."""

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
    frames = int(round(duration_s * 100))  # hop 160 at 16 kHz
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
    vocoder = SpeechT5HifiGan(
        SpeechT5HifiGanConfig(
            model_in_dim=n_mels,
            sampling_rate=16000,
            upsample_initial_channel=16,
            upsample_rates=[5, 4, 8],
            upsample_kernel_sizes=[10, 8, 16],
            resblock_kernel_sizes=[3],
            resblock_dilation_sizes=[[1, 3]],
            normalize_before=False,
        )
    )
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
    model = AudioLDM2Model(pipe)
    model.name_or_path = f"tiny-audioldm2-seed{seed}"
    return model.eval()


def save_tiny_audioldm2(folder: str | Path | None = None, seed: int = 0) -> Path:
    """A tiny AudioLDM 2 folder in the published checkpoints' layout: `save_pretrained`, with the
    language model stored as a `GPT2Model`, as `cvssp/audioldm2` stores it."""

    folder = Path(folder or tempfile.mkdtemp(prefix="tiny-audioldm2-"))
    model = tiny_audioldm2(seed)
    model.save_pretrained(folder)
    model.pipe.language_model.transformer.save_pretrained(folder / "language_model")
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    index["language_model"] = ["transformers", "GPT2Model"]
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return folder


def tiny_stable_audio(seed: int = 0, window_frames: int = 64):
    """A randomly initialised StableAudioModel: diffusers' StableAudioPipeline with tiny components
    of every real class (AutoencoderOobleck at 44.1 kHz stereo, T5, StableAudioProjectionModel,
    StableAudioDiTModel) and Stable Audio Open's sampler (cosine DPM-Solver, v-prediction).
    The window is `window_frames` latent frames of 256 samples (0.37 s)."""
    from diffusers import CosineDPMSolverMultistepScheduler  # lazy: it needs torchsde, the optional extra [stable-audio]

    torch.manual_seed(seed)
    tokenizer = tiny_t5_tokenizer(model_max_length=16)
    text_encoder = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2, pad_token_id=0, eos_token_id=1))
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
        sample_size=window_frames,
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
    model = StableAudioModel(pipe)
    model.name_or_path = f"tiny-stable-audio-seed{seed}"
    return model.eval()


def save_tiny_stable_audio(folder: str | Path | None = None, seed: int = 0) -> Path:
    folder = Path(folder or tempfile.mkdtemp(prefix="tiny-stable-audio-"))
    tiny_stable_audio(seed).save_pretrained(folder)
    return folder


def tiny_stable_audio_3(seed: int = 0):
    """A randomly initialised StableAudio3Model: diffusers' StableAudio3Pipeline with tiny components
    of every real class (AutoencoderSAME at 44.1 kHz stereo, 64 samples a latent frame; T5Gemma's
    encoder; StableAudio3DurationEmbedder; StableAudio3DiTModel) and the base checkpoint's sampler
    (FlowMatchEulerDiscreteScheduler, deterministic Euler, timesteps in [0, 1])."""
    # lazy: Stable Audio 3 is in recent diffusers only (the required minimum, 0.35, has none of it)
    from diffusers import AutoencoderSAME, FlowMatchEulerDiscreteScheduler, StableAudio3DiTModel, StableAudio3Pipeline
    from diffusers.pipelines.stable_audio_3.modeling_stable_audio_3 import StableAudio3DurationEmbedder

    from .backends.stable_audio_3 import StableAudio3Model  # lazy: imports StableAudio3Pipeline (recent diffusers only)

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
    model = StableAudio3Model(pipe)
    model.name_or_path = f"tiny-stable-audio-3-seed{seed}"
    return model.eval()


def save_tiny_stable_audio_3(folder: str | Path | None = None, seed: int = 0) -> Path:
    folder = Path(folder or tempfile.mkdtemp(prefix="tiny-stable-audio-3-"))
    tiny_stable_audio_3(seed).save_pretrained(folder)
    return folder


def tiny_longcat_audio_dit(seed: int = 0):
    """A randomly initialised LongCatAudioDiTModel: diffusers' LongCatAudioDiTPipeline with tiny
    components of every real class (UMT5's encoder, LongCatAudioDiTVae at 24 kHz with 8 samples a
    latent frame, LongCatAudioDiTTransformer) and the pipeline's own scheduler."""
    # lazy: LongCat-AudioDiT is in recent diffusers only
    from diffusers import LongCatAudioDiTPipeline, LongCatAudioDiTTransformer, LongCatAudioDiTVae
    from transformers import UMT5Config, UMT5EncoderModel

    from .backends.longcat_audio_dit import LongCatAudioDiTModel

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
    model = LongCatAudioDiTModel(pipe)
    model.name_or_path = f"tiny-longcat-audio-dit-seed{seed}"
    return model.eval()


def save_tiny_longcat_audio_dit(folder: str | Path | None = None, seed: int = 0) -> Path:
    folder = Path(folder or tempfile.mkdtemp(prefix="tiny-longcat-audio-dit-"))
    tiny_longcat_audio_dit(seed).save_pretrained(folder)
    return folder


def tiny_ace_step(seed: int = 0):
    """A randomly initialised AceStepModel: diffusers' AceStepPipeline with tiny components of every
    real class (Qwen3's encoder, AutoencoderOobleck at 48 kHz stereo with 1024 samples a latent
    frame, AceStepConditionEncoder, AceStepTransformer1DModel with a sliding and a full attention
    layer) and the pipeline's scheduler (one training timestep, shift 1: the pipeline shifts its grid)."""
    # lazy: ACE-Step is in recent diffusers only
    from diffusers import AceStepConditionEncoder, AceStepPipeline, AceStepTransformer1DModel, FlowMatchEulerDiscreteScheduler
    from transformers import Qwen3Config, Qwen3Model

    from .backends.ace_step import AceStepModel

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
    model = AceStepModel(pipe)
    model.name_or_path = f"tiny-ace-step-seed{seed}"
    return model.eval()


def save_tiny_ace_step(folder: str | Path | None = None, seed: int = 0) -> Path:
    folder = Path(folder or tempfile.mkdtemp(prefix="tiny-ace-step-"))
    tiny_ace_step(seed).save_pretrained(folder)
    return folder


# Every backend's tiny model, by backend: what the tests run each backend's checks on.
TINY_BACKENDS = {
    "tango": save_tiny_tango,
    "audioldm2": save_tiny_audioldm2,
    "stable_audio": save_tiny_stable_audio,
    "stable_audio_3": save_tiny_stable_audio_3,
    "longcat_audio_dit": save_tiny_longcat_audio_dit,
    "ace_step": save_tiny_ace_step,
}


# ----------------------------------------------------------------------------------------------
# Tiny CLAP

TINY_CLAP_CORPUS = """
a dog barks while a car passes by and then a door slams
birds chirp followed by a man speaking in the background
rain falls on a roof accompanied by thunder rumbling
a baby cries then a woman laughs as music plays
an engine idles amid wind blowing during traffic noise
footsteps on gravel alongside water running before a bell rings
at first a siren wails and then a horn honks
the sound of a cat meowing with people talking and clapping
a telephone rings while typing on a keyboard continues
a train whistle followed by a crowd cheering and applause
"""


def tiny_clap_config(projection_dim: int = 32, vocab_size: int = 600):
    """A few-thousand-parameter CLAP that still takes 10 s at 48 kHz (1001 mel frames):
    spec_size must stay 256 (time axis 256 x freq_ratio 4 >= 1001); big patches keep it cheap."""

    text = ClapTextConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=80,
        initializer_factor=4.0,
    )
    audio = ClapAudioConfig(
        spec_size=256,
        num_mel_bins=64,
        patch_size=16,
        patch_stride=(16, 16),
        window_size=4,
        patch_embeds_hidden_size=16,
        hidden_size=32,
        depths=(1, 1),
        num_attention_heads=(2, 2),
        num_hidden_layers=2,
        mlp_ratio=2.0,
        initializer_factor=4.0,
    )
    # initializer_factor > 1 spreads a random model's embeddings apart; at 1 every caption and
    # clip lands within cosine 0.99 of each other and tests could not tell them apart.
    return ClapConfig(text_config=text.to_dict(), audio_config=audio.to_dict(), projection_dim=projection_dim, initializer_factor=4.0)


def save_tiny_clap(path: str | os.PathLike, seed: int = 0, projection_dim: int = 32) -> Path:
    """Write a tiny random `ClapModel` + `ClapProcessor` to `path` (save_pretrained) for tests."""

    path = Path(path)
    tokenizer = train_clap_tokenizer([line for line in TINY_CLAP_CORPUS.splitlines() if line.strip()], vocab_size=600, model_max_length=77)
    torch.manual_seed(seed)
    model = ClapModel(tiny_clap_config(projection_dim=projection_dim, vocab_size=len(tokenizer))).eval()
    processor = ClapProcessor(feature_extractor=clap_feature_extractor(), tokenizer=tokenizer)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


# ----------------------------------------------------------------------------------------------
# Synthetic ratings

# Clips fill CLAP's whole 10 s window: a short clip padded with silence is mostly silence to a
# random tiny CLAP, and every clip then gets nearly the same embedding.
SAMPLE_RATE = 16_000
_SUBJECTS = ["hum", "drone", "buzz", "whistle", "tone", "rumble", "hiss", "signal", "noise", "sound", "beep", "chime"]
_PLACES = ["in a room", "outside", "far away", "nearby", "in a hall", "on a street", "at night", "in the rain"]


def synthetic_clip(kind: str, seed: int, seconds: float = 10.0, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    if kind == "low":
        freq = rng.uniform(200, 400)
        wav = 0.5 * np.sin(2 * np.pi * freq * t)
    elif kind == "high":
        # Band-limited noise around 5 kHz: white noise times a 5 kHz carrier.
        wav = 0.3 * rng.standard_normal(t.size) * np.sin(2 * np.pi * rng.uniform(4500, 5500) * t)
    else:
        raise ValueError(f"unknown clip kind {kind!r}")
    return (wav + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def synthetic_rating_rows(n_captions: int = 24, clips_per_caption: int = 4, seed: int = 0, rule: str = "match") -> dict[str, list]:
    """Columns of a preference dataset (PREFERENCE_FEATURES).

    rule "match": aligned when the clip's sound matches the caption's low/high word (needs a text
    encoder that generalises across captions: a trained CLAP). rule "audio": aligned when the clip
    is the low tone, whatever the caption; separable for a random tiny CLAP too."""
    rng = np.random.default_rng(seed)
    columns: dict[str, list] = {k: [] for k in ("caption", "audio", "feedback", "reward", "source", "task", "labels", "caption_id", "clip_index", "annotator")}
    for caption_id in range(n_captions):
        word = ("low", "high")[caption_id % 2]
        caption = f"a {word} {_SUBJECTS[caption_id // 2 % len(_SUBJECTS)]} {_PLACES[caption_id % len(_PLACES)]}"
        for clip_index in range(clips_per_caption):
            kind = ("low", "high")[int(rng.integers(2))]
            wav = synthetic_clip(kind, seed=seed * 100_000 + caption_id * 100 + clip_index)
            label = int(kind == word) if rule == "match" else int(kind == "low")
            columns["caption"].append(caption)
            columns["audio"].append({"bytes": wav_bytes(wav, SAMPLE_RATE), "path": f"{caption_id:05d}_{clip_index}.wav"})
            columns["feedback"].append(label)
            columns["reward"].append(float(label))
            columns["source"].append("human")
            columns["task"].append(("integrity", "temporal")[caption_id % 3 == 0])
            columns["labels"].append([word])
            columns["caption_id"].append(caption_id)
            columns["clip_index"].append(clip_index)
            columns["annotator"].append("synthetic")
    return columns


def save_synthetic_ratings(path: str | os.PathLike, **kwargs) -> Path:
    """A preference dataset folder (save_to_disk) of synthetic human ratings."""
    from .data import build_dataset  # lazy: toyworld.models (and so the Space) imports this module and needs no `datasets`

    path = Path(path)
    build_dataset(synthetic_rating_rows(**kwargs)).save_to_disk(str(path))
    return path


def save_synthetic_generations(folder: str | os.PathLike, n_captions: int = 4, clips_per_caption: int = 3, seed: int = 1) -> Path:
    """A RUN/generations/ folder (metadata.jsonl + clips/*.wav) following the generations contract."""

    folder = Path(folder)
    rows = []
    for caption_id in range(n_captions):
        word = ("low", "high")[caption_id % 2]
        caption = f"a {word} {_SUBJECTS[caption_id % len(_SUBJECTS)]} {_PLACES[caption_id % len(_PLACES)]}"
        for clip_index in range(clips_per_caption):
            clip_id = f"{caption_id:05d}_{clip_index}"
            kind = ("low", "high")[(caption_id + clip_index) % 2]
            save_wav(folder / "clips" / f"{clip_id}.wav", synthetic_clip(kind, seed * 1000 + caption_id * 10 + clip_index), SAMPLE_RATE)
            rows.append(
                {
                    "file_name": f"clips/{clip_id}.wav",
                    "clip_id": clip_id,
                    "caption": caption,
                    "caption_id": caption_id,
                    "clip_index": clip_index,
                    "task": "integrity",
                    "labels": [word],
                    "seed": clip_index,
                    "model": "synthetic",
                }
            )
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return folder
