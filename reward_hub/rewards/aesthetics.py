"""`aesthetics`: Meta's Audiobox Aesthetics (arXiv 2502.05139), the model class of its own package.

Four axes, each a predicted 1-10 rating: CE content enjoyment, CU content usefulness, PC
production complexity, PQ production quality. The reward is one axis ("PQ") or a weighted mean
of several ({"PQ": 1.0, "CE": 0.5} -> (1.0 PQ + 0.5 CE) / 1.5), so it stays on the 1-10 scale.
It says nothing about the caption: pair it with a text-audio reward, never use it alone.

As the package scores a clip: 16 kHz mono, cut into 10 s windows (hop 10 s, the last one
zero-padded and masked), each window's axes mapped back to the rating scale with the checkpoint's
`target_transform` (mean, std), and the windows averaged weighted by how much of each is audio.

Optional: `pip install --no-deps audiobox-aesthetics` (weights: facebook/audiobox-aesthetics,
CC-BY 4.0). `--no-deps` because the package requires torchaudio, which has no release for
torch 2.12 or later; the model class used here needs only torch and huggingface_hub. Weights load
with the package's `from_pretrained` (safetensors), a Hub id or a folder it saved; the package's
own predictor is not used, since it unpickles local checkpoints with `torch.load` and reads audio
through torchaudio.
"""

from __future__ import annotations

import numpy as np
import torch

from .base import Reward, RewardError, resolve_device, weights_fingerprint

AXES = ("CE", "CU", "PC", "PQ")
DEFAULT_CHECKPOINT = "facebook/audiobox-aesthetics"
INSTALL_HINT = "pip install --no-deps audiobox-aesthetics"
WINDOW_SECONDS = 10


def parse_axes(axes: str | dict[str, float]) -> dict[str, float]:
    """{"PQ": 1.0} from "PQ", or a checked copy of an {axis: weight} mapping."""
    weights = {axes: 1.0} if isinstance(axes, str) else {str(k): float(v) for k, v in dict(axes).items()}
    unknown = sorted(set(weights) - set(AXES))
    if unknown or not weights:
        raise ValueError(f"reward 'aesthetics': axes must be among {', '.join(AXES)}, got {axes!r}")
    if sum(abs(w) for w in weights.values()) == 0:
        raise ValueError("reward 'aesthetics': axis weights are all zero")
    return weights


def windows(waves: list[np.ndarray], window: int) -> tuple[list[np.ndarray], list[int], list[float]]:
    """Each clip cut into `window`-sample pieces: (pieces, owning clip, fraction of a window filled)."""
    pieces, owners, fractions = [], [], []
    for owner, wave in enumerate(waves):
        for start in range(0, max(len(wave), 1), window):
            piece = wave[start : start + window]
            pieces.append(piece)
            owners.append(owner)
            fractions.append(max(len(piece), 1) / window)
    return pieces, owners, fractions


class AestheticsReward(Reward):
    name = "aesthetics"
    sample_rate = 16_000  # the WavLM encoder's rate

    def __init__(self, axes: str | dict[str, float] = "PQ", checkpoint: str | None = None, device: str | torch.device | None = None, batch_size: int = 16):
        self.axes = parse_axes(axes)
        self.checkpoint = str(checkpoint) if checkpoint else DEFAULT_CHECKPOINT
        self.batch_size = int(batch_size)
        try:
            from audiobox_aesthetics.model.aes import AesMultiOutput  # lazy: an optional package, needed only by this reward
        except ImportError:
            raise RewardError(f"reward 'aesthetics' needs the optional package audiobox_aesthetics, which is not installed: {INSTALL_HINT}") from None
        self.device = resolve_device(device)
        self.model = AesMultiOutput.from_pretrained(self.checkpoint).to(self.device).eval().requires_grad_(False)
        transform = self.model.target_transform or {}
        missing = [axis for axis in self.axes if axis not in transform]
        if missing:
            raise RewardError(
                f"reward 'aesthetics': checkpoint {self.checkpoint} has no target_transform for axes {missing}; it is not an Audiobox Aesthetics model"
            )
        self.transform = {axis: (float(transform[axis]["mean"]), float(transform[axis]["std"])) for axis in self.axes}
        self._fingerprint = weights_fingerprint(self.model, transform)

    @torch.no_grad()
    def _score(self, captions, waves):
        window = WINDOW_SECONDS * self.sample_rate
        pieces, owners, fractions = windows(list(waves), window)
        wav = torch.zeros(len(pieces), 1, window)
        mask = torch.zeros(len(pieces), 1, window, dtype=torch.bool)
        for i, piece in enumerate(pieces):
            wav[i, 0, : len(piece)] = torch.from_numpy(np.ascontiguousarray(piece, dtype=np.float32))
            mask[i, 0, : len(piece)] = True
        predictions = self.model({"wav": wav.to(self.device), "mask": mask.to(self.device)})
        total = sum(abs(w) for w in self.axes.values())
        ratings = sum(w * (predictions[axis].double().cpu() * self.transform[axis][1] + self.transform[axis][0]) for axis, w in self.axes.items()) / total
        weights, owners_t = torch.tensor(fractions, dtype=torch.float64), torch.tensor(owners)
        weighted_sums = torch.zeros(len(waves), dtype=torch.float64).index_add_(0, owners_t, ratings * weights)
        return (weighted_sums / torch.zeros(len(waves), dtype=torch.float64).index_add_(0, owners_t, weights)).numpy()

    def options(self) -> dict:
        return {"axes": self.axes, "checkpoint": self.checkpoint, "weights": self._fingerprint}
