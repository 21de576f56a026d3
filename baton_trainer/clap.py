"""CLAP text and audio embeddings with deterministic audio preprocessing.

CLAP (`laion/clap-htsat-unfused`, LAION's `630k-audioset-best`) expects 48 kHz audio and crops
clips longer than 10 s at a random offset (`rand_trunc`). TANGO makes 10.24 s clips at 16 kHz, so
embeddings, rewards and CLAP scores would be random unless every clip is resampled to 48 kHz and
cut to exactly 10 s *before* the feature extractor sees it. `ClapEmbedder` does that with the
reward model's own preparation (`reward_hub.prepare_waveform`), so a clip reaches CLAP the same
way whether the reward model, its training cache or the CLAP score embeds it.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import ClapFeatureExtractor, ClapModel, ClapProcessor, RobertaTokenizer

from reward_hub.modeling_baton_reward import CLAP_SAMPLE_RATE, fast_clap_features, pooled_embedding, prepare_waveform

from .weight_files import load_pretrained

DEFAULT_CLAP = "laion/clap-htsat-unfused"
CLAP_CLIP_SECONDS = 10.0
CLAP_CLIP_SAMPLES = int(CLAP_SAMPLE_RATE * CLAP_CLIP_SECONDS)


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
            self.model = load_pretrained(ClapModel.from_pretrained, source, "a CLAP model")
        if processor is None:
            if not source:
                raise ValueError("ClapEmbedder: a ClapModel built in memory needs an explicit `processor`")
            processor = load_pretrained(ClapProcessor.from_pretrained, source, "a CLAP processor")
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
            batch = self.processor.tokenizer(texts[start : start + self.batch_size], padding=True, truncation=True, return_tensors="pt")
            out = self.model.get_text_features(input_ids=batch["input_ids"].to(self.device), attention_mask=batch["attention_mask"].to(self.device))
            chunks.append(pooled_embedding(out))
        return F.normalize(torch.cat(chunks).float(), dim=-1).cpu()

    @torch.no_grad()
    def embed_audio(self, waveforms: Sequence[np.ndarray], sample_rate: int) -> torch.Tensor:
        """(N, D) float32 on CPU, unit L2 norm. Mono waveforms at `sample_rate`, any length."""
        if not len(waveforms):
            return torch.zeros(0, self.dim)
        chunks, extractor = [], fast_clap_features(self.processor.feature_extractor)
        for start in range(0, len(waveforms), self.batch_size):
            # one batch at 48 kHz at a time: 10 s of every clip of an evaluation at once took 0.9 GB
            batch = [
                prepare_waveform(w, sample_rate, CLAP_CLIP_SAMPLES, name=f"audio {start + i}") for i, w in enumerate(waveforms[start : start + self.batch_size])
            ]
            features = extractor(batch, sampling_rate=CLAP_SAMPLE_RATE, return_tensors="pt")
            kwargs = {"input_features": features["input_features"].to(self.device)}
            if "is_longer" in features:
                kwargs["is_longer"] = features["is_longer"].to(self.device)
            chunks.append(pooled_embedding(self.model.get_audio_features(**kwargs)))
        return F.normalize(torch.cat(chunks).float(), dim=-1).cpu()


# ----------------------------------------------------------------------------------------------
# Processors for CLAPs trained here (the toy CLAP) and built in tests


def train_clap_tokenizer(corpus: Sequence[str], vocab_size: int, model_max_length: int):
    """A RoBERTa byte-level BPE tokenizer (what `ClapProcessor` takes), trained offline on `corpus`
    with RoBERTa's special tokens at ids 0..4, as CLAP's text config expects."""

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(list(corpus), trainer=trainer)
    state = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    return RobertaTokenizer(vocab=state["vocab"], merges=merges, model_max_length=model_max_length)


def clap_feature_extractor():
    """A `ClapFeatureExtractor` with laion/clap-htsat-unfused's settings (48 kHz, 64 mels, hop 480, 10 s)."""

    return ClapFeatureExtractor(
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
