"""`aesthetics`: Meta's Audiobox Aesthetics (arXiv 2502.05139) through its own package.

Four axes, each a predicted 1-10 rating: CE content enjoyment, CU content usefulness, PC
production complexity, PQ production quality. The reward is one axis ("PQ") or a weighted mean
of several ({"PQ": 1.0, "CE": 0.5} -> (1.0 PQ + 0.5 CE) / 1.5), so it stays on the 1-10 scale.
It says nothing about the caption: pair it with a text-audio reward, never use it alone.

Optional: `pip install audiobox-aesthetics` (weights: facebook/audiobox-aesthetics, CC-BY 4.0).
"""

from __future__ import annotations

import numpy as np
import torch

from .base import Reward, RewardError

AXES = ("CE", "CU", "PC", "PQ")
INSTALL_HINT = "pip install audiobox-aesthetics"


def parse_axes(axes: str | dict[str, float]) -> dict[str, float]:
    """{"PQ": 1.0} from "PQ", or a checked copy of an {axis: weight} mapping."""
    weights = {axes: 1.0} if isinstance(axes, str) else {str(k): float(v) for k, v in dict(axes).items()}
    unknown = sorted(set(weights) - set(AXES))
    if unknown or not weights:
        raise ValueError(f"reward 'aesthetics': axes must be among {', '.join(AXES)}, got {axes!r}")
    if sum(abs(w) for w in weights.values()) == 0:
        raise ValueError("reward 'aesthetics': axis weights are all zero")
    return weights


class AestheticsReward(Reward):
    name = "aesthetics"
    sample_rate = 16_000  # the WavLM encoder's rate; the package would resample anyway

    def __init__(self, axes: str | dict[str, float] = "PQ", checkpoint: str | None = None, device: str | torch.device | None = None, batch_size: int = 16):
        self.axes = parse_axes(axes)
        self.checkpoint = checkpoint
        self.batch_size = int(batch_size)
        try:
            from audiobox_aesthetics.infer import initialize_predictor  # lazy: an optional package, needed only by this reward
        except ImportError:
            raise RewardError(f"reward 'aesthetics' needs the optional package audiobox_aesthetics, which is not installed: {INSTALL_HINT}") from None
        self.predictor = initialize_predictor(checkpoint) if checkpoint else initialize_predictor()
        self.device = torch.device(device) if device is not None else None

    def _score(self, captions, waves):
        rows = self.predictor.forward([{"path": torch.from_numpy(wave).unsqueeze(0), "sample_rate": self.sample_rate} for wave in waves])
        total = sum(abs(w) for w in self.axes.values())
        return np.array([sum(w * float(row[axis]) for axis, w in self.axes.items()) / total for row in rows])

    def options(self) -> dict:
        return {"axes": self.axes, "checkpoint": self.checkpoint}
