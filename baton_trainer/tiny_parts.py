"""The parts tiny models are built from: word-level tokenizers, TANGO's noise schedule, a tiny
HiFi-GAN and a tiny CLAP config, made offline. Nothing of the backends is imported here: each
backend builds its tiny model (`tiny`, in its own file) from these, and `testing` builds the rest."""

from __future__ import annotations

from diffusers import DDPMScheduler
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import ClapAudioConfig, ClapConfig, ClapTextConfig, PreTrainedTokenizerFast, SpeechT5HifiGan, SpeechT5HifiGanConfig, T5Tokenizer

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
    tok.normalizer = normalizers.Lowercase()
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


def tiny_t5_tokenizer(words: list[str] | tuple[str, ...] = TINY_WORDS, model_max_length: int = 32):
    """A `T5Tokenizer` (a unigram over whole words) built offline: AudioLDM 2's pipeline checks the
    tokenizer's class to decide what to feed it."""

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("\u2581" + w, -1.0 - 0.01 * i) for i, w in enumerate(dict.fromkeys(w.lower() for w in words))]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=model_max_length)


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


def tiny_hifigan(n_mels: int = 16) -> SpeechT5HifiGan:
    """A randomly initialised SpeechT5HifiGan from `n_mels` mel bins to 16 kHz audio (x160: the hop of
    TANGO's and AudioLDM 2's mel front ends)."""
    config = SpeechT5HifiGanConfig(
        model_in_dim=n_mels,
        sampling_rate=16000,
        upsample_initial_channel=16,
        upsample_rates=[5, 4, 8],
        upsample_kernel_sizes=[10, 8, 16],
        resblock_kernel_sizes=[3],
        resblock_dilation_sizes=[[1, 3]],
        normalize_before=False,
    )
    return SpeechT5HifiGan(config)
