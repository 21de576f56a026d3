"""`baton`: the BATON reward model (frozen CLAP + head, Liao et al. 2024), r in [0, 1].

r(caption, clip) = sigmoid(head([e_audio, e_text])), e = L2-normalised CLAP embeddings of the
first 10 s of the clip at 48 kHz. The model is the one `baton_trainer reward` trains and pushes;
any folder or Hub id `reward_hub.load` reads works.
"""

from __future__ import annotations

import os

import torch

from .. import load as load_baton_reward_model
from ..modeling_baton_reward import CLAP_SAMPLE_RATE
from .base import Reward, resolve_device, weights_fingerprint


class BatonReward(Reward):
    name = "baton"
    sample_rate = CLAP_SAMPLE_RATE

    def __init__(self, model: str | os.PathLike, device: str | torch.device | None = None, batch_size: int = 16):
        self.source = str(model)
        self.device = resolve_device(device)
        self.batch_size = int(batch_size)
        self.model = load_baton_reward_model(self.source, device=self.device)
        self.model.requires_grad_(False)
        self._fingerprint = weights_fingerprint(self.model, self.model.config)

    def _score(self, captions, waves):
        # The clips are at 48 kHz already, so the model's own preparation only crops or pads.
        return self.model.score(captions, waves, sampling_rate=CLAP_SAMPLE_RATE, batch_size=self.batch_size)

    def options(self) -> dict:
        return {"model": self.source, "weights": self._fingerprint}
