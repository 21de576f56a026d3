"""`clap`: CLAP text-audio cosine, cos(e_text, e_audio) in [-1, 1], from `transformers.ClapModel`.

Any LAION CLAP (Hub id or folder; default `laion/clap-htsat-unfused`). Runs in fp32, as in
Flow-Factory's CLAP reward: the cosines of a group differ in the third decimal, below bf16's
resolution. Clips are resampled to 48 kHz for the caller and cut to the first `max_seconds`
(zero-padded if shorter), because CLAP crops longer clips at a random offset and the same clip
would otherwise get a different score on every call.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from transformers import ClapModel, ClapProcessor

from ..modeling_baton_reward import CLAP_SAMPLE_RATE, fast_clap_features, pooled_embedding, prepare_waveform
from .base import Reward, RewardError, resolve_device, weights_fingerprint

DEFAULT_CLAP = "laion/clap-htsat-unfused"


class ClapReward(Reward):
    name = "clap"
    sample_rate = CLAP_SAMPLE_RATE

    def __init__(self, model: str | os.PathLike = DEFAULT_CLAP, device: str | torch.device | None = None, batch_size: int = 16, max_seconds: float = 10.0):
        self.source = str(model)
        self.device = resolve_device(device)
        self.batch_size = int(batch_size)
        self.max_seconds = float(max_seconds)
        try:
            self.model = ClapModel.from_pretrained(self.source, dtype=torch.float32)
            self.processor = ClapProcessor.from_pretrained(self.source)
        except OSError as exc:
            raise RewardError(f"reward 'clap': cannot load a CLAP model from {self.source!r} ({(str(exc).splitlines() or [''])[0]})") from None
        self.model.to(self.device).eval().requires_grad_(False)
        rate = getattr(self.processor.feature_extractor, "sampling_rate", CLAP_SAMPLE_RATE)
        if rate != CLAP_SAMPLE_RATE:
            raise RewardError(f"reward 'clap': {self.source} expects {rate} Hz audio; only 48 kHz CLAP models are supported")
        self._fingerprint = weights_fingerprint(self.model, self.model.config)

    @torch.no_grad()
    def _score(self, captions, waves):
        samples = int(round(self.max_seconds * CLAP_SAMPLE_RATE))
        clips = [prepare_waveform(wave, CLAP_SAMPLE_RATE, samples) for wave in waves]
        text = self.processor.tokenizer(captions, padding=True, truncation=True, return_tensors="pt").to(self.device)
        audio = fast_clap_features(self.processor.feature_extractor)(clips, sampling_rate=CLAP_SAMPLE_RATE, return_tensors="pt")
        audio_inputs = {"input_features": audio["input_features"].to(self.device)}
        if "is_longer" in audio:
            audio_inputs["is_longer"] = audio["is_longer"].to(self.device)
        text_embeds = pooled_embedding(self.model.get_text_features(input_ids=text["input_ids"], attention_mask=text["attention_mask"]))
        audio_embeds = pooled_embedding(self.model.get_audio_features(**audio_inputs))
        return F.cosine_similarity(text_embeds.float(), audio_embeds.float(), dim=-1)

    def options(self) -> dict:
        return {"model": self.source, "max_seconds": self.max_seconds, "weights": self._fingerprint}
