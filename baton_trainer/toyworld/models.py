"""The toy TANGO and toy CLAP: the real classes at toy sizes, on the toy world's vocabulary.

    tango = load_toy_tango()                     # TangoModel.from_pretrained(TOY_TANGO_PATH)
    clips = tango.generate(["Beep, then hum, then hiss"], seeds=[0], num_inference_steps=25)
    embedder = ClapEmbedder(TOY_CLAP_PATH)       # baton_trainer.clap, unchanged

Toy TANGO is a `TangoPipeline` (AutoencoderKL, UNet2DConditionModel with cross-attention,
T5EncoderModel, TANGO's noise schedule with v-prediction, sampled with DDIM) whose vocoder is the
Griffin-Lim `GriffinLimVocoder` (`baton_trainer.backends`), seen by the trainer through `TangoModel`. It uses TANGO's mel
front end (64 mels, n_fft 1024) at a 20 ms hop on 2.56 s clips (128 frames), with the half-hop
framing it was trained with; the VAE downsamples by 8 (latents 8 x 16 x 8) so the UNet stays cheap
on a CPU.

Toy CLAP is a `ClapModel` with a tiny config and a `ClapProcessor` whose feature extractor has
real CLAP's settings (48 kHz, 64 mels, 10 s), so `baton_trainer.clap.ClapEmbedder` loads it as is.

The toy flow model (`build_toy_flow`) is a `StableAudio3Pipeline` (StableAudio3DiTModel, rectified
flow, FlowMatchEulerDiscreteScheduler, T5Gemma's encoder) over the toy TANGO's VAE and vocoder,
seen by the trainer through `StableAudio3Model`.

All three are trained by `scripts/train_toy_tango.py`, `scripts/train_toy_flow.py` and
`scripts/train_toy_clap.py` and shipped in `pretrained/`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import ClapAudioConfig, ClapConfig, ClapModel, ClapProcessor, ClapTextConfig, T5Config, T5EncoderModel, T5GemmaConfig, T5GemmaEncoderModel

from ..backends.griffin_lim_vocoder import GriffinLimVocoder
from ..backends.mel import MelConfig
from ..backends.pipeline_tango import TangoPipeline
from ..backends.tango import TangoModel
from ..captions import INTEGRITY_CONJUNCTIONS, TEMPORAL_CONJUNCTIONS, make_caption
from ..clap import clap_feature_extractor, train_clap_tokenizer
from ..tiny_parts import tiny_scheduler, tiny_tokenizer
from .events import EVENT_NAMES
from .mel_autoencoder import ToyMelAutoencoder
from .render import DEFAULT_DURATION_S, ORDERED_PAIR_CONJUNCTIONS

PRETRAINED_DIR = Path(__file__).parent / "pretrained"
TOY_TANGO_PATH = PRETRAINED_DIR / "toy_tango"
TOY_CLAP_PATH = PRETRAINED_DIR / "toy_clap"
TOY_FLOW_PATH = PRETRAINED_DIR / "toy_flow"
TOY_DURATION_S = DEFAULT_DURATION_S  # 2.56 s: 128 mel frames at hop 320
TOY_HOP_LENGTH = 320  # 20 ms frames: half TANGO's frame rate halves every conv on this CPU
TEXT_MAX_LENGTH = 24  # the longest toy caption is 16 tokens with </s>


def toy_vocabulary() -> list[str]:
    """Every word of a toy caption: event names, the caption templates' words, and ','."""
    words: list[str] = [","]
    templates = INTEGRITY_CONJUNCTIONS + TEMPORAL_CONJUNCTIONS + ORDERED_PAIR_CONJUNCTIONS
    for text in (*EVENT_NAMES, *templates):
        for word in text.replace(",", " ").replace("{0}", " ").replace("{1}", " ").replace("{2}", " ").split():
            if word.lower() not in words:
                words.append(word.lower())
    return words


def toy_tokenizer():
    """A word-level T5-style tokenizer (<pad> 0, </s> 1, <unk> 2) on the toy vocabulary."""

    return tiny_tokenizer(toy_vocabulary(), model_max_length=TEXT_MAX_LENGTH)


# ----------------------------------------------------------------------------------------------
# Toy TANGO


def toy_mel_config():
    # TANGO's front end (16 kHz, n_fft 1024, 64 Slaney mels, 0-8 kHz) at a 20 ms hop, framed as
    # the shipped toy models were trained (retraining them for TANGO's centred frames is open).
    return MelConfig(hop_length=TOY_HOP_LENGTH, framing="half_hop")


def toy_vae(seed: int = 0):
    """AutoencoderKL that downsamples a 1 x 128 x 64 log-mel by 8: latents 8 x 16 x 8."""

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=1,
        out_channels=1,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 32, 32),
        layers_per_block=1,
        latent_channels=8,
        norm_num_groups=8,
        sample_size=256,
        scaling_factor=1.0,  # set from the trained encoder's latent spread by the training script
    )


def toy_unet(seed: int = 0, channels: tuple[int, ...] = (32, 64, 96), cross_attention_dim: int = 64):
    """UNet2DConditionModel on 8 x 16 x 8 latents with cross-attention in every block but the lowest."""

    torch.manual_seed(seed)
    levels = len(channels)
    return UNet2DConditionModel(
        sample_size=None,
        in_channels=8,
        out_channels=8,
        down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1),
        block_out_channels=channels,
        layers_per_block=1,
        attention_head_dim=16,
        cross_attention_dim=cross_attention_dim,
        norm_num_groups=16,
        use_linear_projection=True,
        upcast_attention=True,
    )


def toy_text_encoder(vocab_size: int, seed: int = 0, d_model: int = 64, num_layers: int = 2):
    torch.manual_seed(seed)
    return T5EncoderModel(
        T5Config(
            vocab_size=vocab_size,
            d_model=d_model,
            d_kv=16,
            d_ff=2 * d_model,
            num_layers=num_layers,
            num_heads=4,
            relative_attention_num_buckets=16,
            relative_attention_max_distance=32,
            dropout_rate=0.0,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
    )


def build_toy_tango(seed: int = 0, unet_channels: tuple[int, ...] = (32, 64, 96), n_iter: int = 32, text_layers: int = 2):
    """A randomly initialised toy TANGO (the starting point of `scripts/train_toy_tango.py`)."""

    tokenizer = toy_tokenizer()
    mel = toy_mel_config()
    vocoder = GriffinLimVocoder(
        n_fft=mel.n_fft,
        hop_length=mel.hop_length,
        win_length=mel.win_length,
        n_mels=mel.n_mels,
        sample_rate=mel.sample_rate,
        fmin=mel.fmin,
        fmax=mel.fmax,
        n_iter=n_iter,
    )
    # Built in this order (each seeds itself): the global RNG state afterwards, which the training
    # script's first draws depend on, is the one the shipped toy was trained from.
    unet = toy_unet(seed, unet_channels)
    vae = toy_vae(seed)
    text_encoder = toy_text_encoder(len(tokenizer), seed, num_layers=text_layers)
    pipe = TangoPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler.from_config(tiny_scheduler().config),  # TANGO's schedule, v-prediction; sampled with DDIM
        vocoder=vocoder,
        **{k: v for k, v in mel.to_dict().items() if k != "framing"},
        mel_framing=mel.framing,
        duration_s=TOY_DURATION_S,
        text_max_length=TEXT_MAX_LENGTH,
    )
    model = TangoModel(pipe)
    model.name_or_path = f"toy-tango-init-seed{seed}"
    return model


def load_toy_tango(path: str | Path | None = None):
    """The shipped toy TANGO (or one at `path`), loaded through `TangoModel.from_pretrained`."""

    return TangoModel.from_pretrained(path or TOY_TANGO_PATH)


# ----------------------------------------------------------------------------------------------
# Toy flow model


def build_toy_flow(
    seed: int = 0,
    autoencoder_from: str | Path = TOY_TANGO_PATH,
    embed_dim: int = 128,
    depth: int = 4,
    num_heads: int = 4,
    text_hidden: int = 64,
    text_layers: int = 2,
):
    """A toy Stable Audio 3 (the starting point of `scripts/train_toy_flow.py`): diffusers'
    StableAudio3Pipeline with a StableAudio3DiTModel, T5Gemma's encoder, the duration embedder and
    the base checkpoint's FlowMatchEulerDiscreteScheduler, in toy sizes; its autoencoder is the
    toy TANGO's mel VAE and vocoder (`mel_autoencoder.py` says why), copied with their weights."""
    # lazy: Stable Audio 3 is in recent diffusers only (the required minimum, 0.35, has none of it)
    from diffusers import FlowMatchEulerDiscreteScheduler, StableAudio3DiTModel, StableAudio3Pipeline
    from diffusers.pipelines.stable_audio_3.modeling_stable_audio_3 import StableAudio3DurationEmbedder

    from ..backends.stable_audio_3 import StableAudio3Model

    tokenizer = toy_tokenizer()
    vae = ToyMelAutoencoder.from_toy_tango(autoencoder_from)
    torch.manual_seed(seed)
    module = dict(
        vocab_size=len(tokenizer),
        hidden_size=text_hidden,
        intermediate_size=2 * text_hidden,
        num_hidden_layers=text_layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=text_hidden // 4,
        query_pre_attn_scalar=text_hidden // 4,
        sliding_window=TEXT_MAX_LENGTH,
        max_position_embeddings=2 * TEXT_MAX_LENGTH,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=1,
    )
    text_encoder = T5GemmaEncoderModel(T5GemmaConfig(encoder=module, decoder=module, vocab_size=len(tokenizer), is_encoder_decoder=False)).eval()
    duration_embedder = StableAudio3DurationEmbedder(output_dim=embed_dim // 2, fourier_dim=32, max_val=10.0)
    transformer = StableAudio3DiTModel(
        io_channels=vae.config.latent_dim,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        cond_token_dim=text_hidden,
        global_cond_dim=embed_dim // 2,
        local_add_cond_dim=1,
        timestep_features_dim=64,
        ff_mult=2.0,
        num_memory_tokens=4,
    )
    # Stable Audio 3 base's sampler: deterministic Euler over timesteps in [0, 1]
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, shift=1.0, stochastic_sampling=False)
    pipe = StableAudio3Pipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, duration_embedder=duration_embedder, transformer=transformer, scheduler=scheduler
    )
    model = StableAudio3Model(pipe)
    model.name_or_path = f"toy-flow-init-seed{seed}"
    return model


# ----------------------------------------------------------------------------------------------
# Toy CLAP


def toy_caption_corpus() -> list[str]:
    """Captions covering every toy word, for training the toy CLAP's BPE tokenizer."""

    lines = [name for name in EVENT_NAMES]
    names = list(EVENT_NAMES)
    for i, template in enumerate(INTEGRITY_CONJUNCTIONS):
        lines.append(make_caption([names[i % 8], names[(i + 3) % 8]], "integrity", template))
    for i, template in enumerate(TEMPORAL_CONJUNCTIONS):
        lines.append(make_caption([names[i % 8], names[(i + 2) % 8], names[(i + 5) % 8]], "temporal", template))
    for conjunction in ORDERED_PAIR_CONJUNCTIONS:
        lines.append(make_caption(names[:2], "integrity", conjunction))
    return lines


def toy_clap_tokenizer(vocab_size: int = 400):
    """A RoBERTa byte-level BPE tokenizer (what ClapProcessor takes) trained on toy captions, so
    that every toy word is one or two tokens."""

    corpus = toy_caption_corpus()
    return train_clap_tokenizer(corpus + [line.lower() for line in corpus], vocab_size=vocab_size, model_max_length=40)


def toy_clap_config(vocab_size: int, projection_dim: int = 64):
    """CLAP at toy size that still takes real CLAP's input (10 s at 48 kHz, 64 mels, 1001 frames).

    The audio Swin sees a 256 x 256 image: 4 time chunks of 64 mels stacked; a toy clip lies in
    the first chunk. Patches of 16 x 16, windows of 8: the second stage (8 x 8 tokens) attends
    globally with a relative position bias, which is what lets the embedding carry event order.
    """

    text = ClapTextConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=48,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    audio = ClapAudioConfig(
        spec_size=256,
        num_mel_bins=64,
        patch_size=16,
        patch_stride=(16, 16),
        window_size=8,
        patch_embeds_hidden_size=48,
        hidden_size=96,
        depths=(2, 2),
        num_attention_heads=(4, 4),
        num_hidden_layers=2,
        mlp_ratio=2.0,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        drop_path_rate=0.0,
    )
    return ClapConfig(text_config=text.to_dict(), audio_config=audio.to_dict(), projection_dim=projection_dim)


def build_toy_clap(seed: int = 0):
    """A randomly initialised toy (ClapModel, ClapProcessor) pair."""

    tokenizer = toy_clap_tokenizer()
    torch.manual_seed(seed)
    model = ClapModel(toy_clap_config(len(tokenizer)))
    processor = ClapProcessor(feature_extractor=clap_feature_extractor(), tokenizer=tokenizer)
    return model, processor


__all__ = [
    "PRETRAINED_DIR",
    "TOY_CLAP_PATH",
    "TOY_DURATION_S",
    "TOY_FLOW_PATH",
    "TOY_TANGO_PATH",
    "build_toy_clap",
    "build_toy_flow",
    "build_toy_tango",
    "load_toy_tango",
    "toy_clap_tokenizer",
    "toy_tokenizer",
    "toy_vocabulary",
]
