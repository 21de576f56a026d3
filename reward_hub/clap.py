"""CLAP text and audio embeddings with deterministic audio preprocessing.

CLAP (`laion/clap-htsat-unfused`, LAION's `630k-audioset-best`) expects 48 kHz audio and crops
clips longer than 10 s at a random offset (`rand_trunc`). TANGO makes 10.24 s clips at 16 kHz, so
embeddings, rewards and CLAP scores would be random unless every clip is resampled to 48 kHz and
cut to exactly 10 s *before* the feature extractor sees it. `ClapEmbedder` does that.

`save_tiny_clap` writes a tiny random `ClapModel` + `ClapProcessor` (a real byte-level BPE
tokenizer and the real feature extractor) for tests; it accepts 10 s clips at 48 kHz.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from transformers import ClapModel, ClapProcessor

from baton_trainer.audio import check_waveform, crop_or_pad, resample

DEFAULT_CLAP = "laion/clap-htsat-unfused"
CLAP_SAMPLE_RATE = 48_000
CLAP_CLIP_SECONDS = 10.0
CLAP_CLIP_SAMPLES = int(CLAP_SAMPLE_RATE * CLAP_CLIP_SECONDS)


def prepare_clap_audio(
    waveform: np.ndarray, sample_rate: int, name: str = "audio", clip_samples: int = CLAP_CLIP_SAMPLES
) -> np.ndarray:
    """Check, resample to 48 kHz and crop/pad to exactly `clip_samples` (10 s): always the same
    input for the same clip, so CLAP's random crop and repeat-padding never fire."""
    wav = check_waveform(np.asarray(waveform, dtype=np.float32), name)
    if int(sample_rate) <= 0:
        raise ValueError(f"{name}: sample rate must be positive, got {sample_rate}")
    wav = resample(wav, int(sample_rate), CLAP_SAMPLE_RATE)
    return crop_or_pad(wav, clip_samples)


class ClapEmbedder:
    """L2-normalised CLAP embeddings of captions and clips.

    `model` is a Hub id, a folder, or a loaded `ClapModel` (then pass `processor`, or it is loaded
    from `model.name_or_path`). The model is frozen and kept in eval mode.
    """

    def __init__(
        self,
        model: str | os.PathLike | ClapModel = DEFAULT_CLAP,
        processor: ClapProcessor | None = None,
        device: str | torch.device | None = None,
        batch_size: int = 16,
    ):
        if isinstance(model, ClapModel):
            self.model = model
            source = model.name_or_path
        else:
            source = str(model)
            self.model = ClapModel.from_pretrained(source)
        if processor is None:
            if not source:
                raise ValueError("ClapEmbedder: a ClapModel built in memory needs an explicit `processor`")
            processor = ClapProcessor.from_pretrained(source)
        self.processor = processor
        self.name_or_path = source
        self.device = torch.device(device) if device is not None else next(self.model.parameters()).device
        self.model.to(self.device).eval().requires_grad_(False)
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"ClapEmbedder: batch_size must be >= 1, got {batch_size}")
        feature_rate = getattr(self.processor.feature_extractor, "sampling_rate", CLAP_SAMPLE_RATE)
        if feature_rate != CLAP_SAMPLE_RATE:
            raise ValueError(f"ClapEmbedder: feature extractor runs at {feature_rate} Hz, expected {CLAP_SAMPLE_RATE}")

    @property
    def dim(self) -> int:
        return int(self.model.config.projection_dim)

    def fingerprint(self) -> str:
        """Identifies the model weights and preprocessing, for embedding caches."""
        digest = hashlib.sha256()
        digest.update(json.dumps(self.model.config.to_dict(), sort_keys=True, default=str).encode())
        digest.update(json.dumps(self.processor.feature_extractor.to_dict(), sort_keys=True, default=str).encode())
        with torch.no_grad():
            for name, tensor in sorted(self.model.state_dict().items()):
                digest.update(name.encode())
                # A strided sample of each tensor is enough to tell checkpoints apart cheaply.
                flat = tensor.detach().flatten()
                sample = flat[:: max(1, flat.numel() // 64)][:64].to(torch.float64).cpu().numpy()
                digest.update(sample.tobytes())
        digest.update(f"sr={CLAP_SAMPLE_RATE};clip={CLAP_CLIP_SAMPLES};crop=head;pad=zeros".encode())
        return digest.hexdigest()[:16]

    @torch.no_grad()
    def embed_text(self, texts: Sequence[str]) -> torch.Tensor:
        """(N, D) float32 on CPU, each row of unit L2 norm."""
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"caption {i}: expected a non-empty string, got {text!r}")
        if not texts:
            return torch.zeros(0, self.dim)
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.processor.tokenizer(
                texts[start : start + self.batch_size], padding=True, truncation=True, return_tensors="pt"
            )
            out = self.model.get_text_features(
                input_ids=batch["input_ids"].to(self.device), attention_mask=batch["attention_mask"].to(self.device)
            )
            chunks.append(_features(out))
        return F.normalize(torch.cat(chunks).float(), dim=-1).cpu()

    @torch.no_grad()
    def embed_audio(self, waveforms: Sequence[np.ndarray], sample_rate: int) -> torch.Tensor:
        """(N, D) float32 on CPU, unit L2 norm. Mono waveforms at `sample_rate`, any length."""
        waveforms = [prepare_clap_audio(w, sample_rate, name=f"audio {i}") for i, w in enumerate(waveforms)]
        if not waveforms:
            return torch.zeros(0, self.dim)
        chunks = []
        for start in range(0, len(waveforms), self.batch_size):
            features = self.processor.feature_extractor(
                waveforms[start : start + self.batch_size], sampling_rate=CLAP_SAMPLE_RATE, return_tensors="pt"
            )
            kwargs = {"input_features": features["input_features"].to(self.device)}
            if "is_longer" in features:
                kwargs["is_longer"] = features["is_longer"].to(self.device)
            chunks.append(_features(self.model.get_audio_features(**kwargs)))
        return F.normalize(torch.cat(chunks).float(), dim=-1).cpu()


def _features(output) -> torch.Tensor:
    # transformers 5 returns an output object whose pooler_output holds the projected embedding;
    # older releases returned the tensor itself.
    if isinstance(output, torch.Tensor):
        return output
    return output.pooler_output


_TOKENIZER_CORPUS = """
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

_SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # RoBERTa's ids 0..4, as CLAP's text config expects


def _tiny_tokenizer(vocab_size: int = 600):
    """A real RoBERTa byte-level BPE tokenizer trained offline on a small sound-caption corpus."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import RobertaTokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([line for line in _TOKENIZER_CORPUS.splitlines() if line.strip()], trainer=trainer)
    state = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    return RobertaTokenizer(vocab=state["vocab"], merges=merges, model_max_length=77)


def tiny_clap_config(projection_dim: int = 32, vocab_size: int = 600):
    """A few-thousand-parameter CLAP that still takes 10 s at 48 kHz (1001 mel frames):
    spec_size must stay 256 (time axis 256 x freq_ratio 4 >= 1001); big patches keep it cheap."""
    from transformers import ClapAudioConfig, ClapConfig, ClapTextConfig

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
    return ClapConfig(
        text_config=text.to_dict(), audio_config=audio.to_dict(), projection_dim=projection_dim, initializer_factor=4.0
    )


def save_tiny_clap(path: str | os.PathLike, seed: int = 0, projection_dim: int = 32) -> Path:
    """Write a tiny random `ClapModel` + `ClapProcessor` to `path` (save_pretrained) for tests."""
    from transformers import ClapFeatureExtractor

    path = Path(path)
    tokenizer = _tiny_tokenizer()
    torch.manual_seed(seed)
    model = ClapModel(tiny_clap_config(projection_dim=projection_dim, vocab_size=len(tokenizer))).eval()
    # Same preprocessing settings as laion/clap-htsat-unfused's preprocessor_config.json.
    feature_extractor = ClapFeatureExtractor(
        feature_size=64,
        sampling_rate=CLAP_SAMPLE_RATE,
        hop_length=480,
        max_length_s=10,
        fft_window_size=1024,
        frequency_min=50,
        frequency_max=14_000,
        truncation="rand_trunc",
        padding="repeatpad",
    )
    processor = ClapProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
