"""Tiny models made of the real classes, for tests and benchmarks (no downloads).

`tiny_tango()` is a TangoModel with a few thousand parameters per component: the same
AutoencoderKL, UNet2DConditionModel (with cross-attention), T5EncoderModel, tokenizer,
SpeechT5HifiGan and DDPMScheduler types as real TANGO, at toy sizes.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

TINY_WORDS = (
    "a dog barks and then birds chirp followed by rain falls while engine hums with people talk "
    "beep hum hiss click chirp rumble siren music wind water baby cries the of in background"
).split()


def tiny_tokenizer(words: list[str] | tuple[str, ...] = TINY_WORDS, model_max_length: int = 32):
    """A word-level `PreTrainedTokenizerFast` with T5's special tokens, built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for word in words:
        vocab.setdefault(word.lower(), len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = __import__("tokenizers").normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=model_max_length
    )


def tiny_scheduler():
    """TANGO's noise schedule (DESIGN section 4): scaled_linear 0.00085 -> 0.012, v-prediction."""
    from diffusers import DDPMScheduler

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
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig, T5Config, T5EncoderModel

    from .backends.tango import MelConfig, TangoModel, TangoSettings

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    text_encoder = T5EncoderModel(
        T5Config(vocab_size=len(tokenizer), d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2, pad_token_id=0, eos_token_id=1)
    )
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
    settings = TangoSettings(mel=MelConfig(n_fft=512, win_length=512, n_mels=n_mels), duration_s=duration_s, sampler="ddim", text_max_length=32)
    model = TangoModel(unet, vae, text_encoder, tokenizer, vocoder, tiny_scheduler(), settings)
    model.name_or_path = f"tiny-tango-seed{seed}"
    return model.eval()


def save_tiny_tango(folder: str | Path | None = None, seed: int = 0) -> Path:
    folder = Path(folder or tempfile.mkdtemp(prefix="tiny-tango-"))
    tiny_tango(seed).save_pretrained(folder)
    return folder
