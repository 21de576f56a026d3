"""The reward interface: captions + clips in, one float per clip out; pointwise (`Reward`: each
clip scored alone) or groupwise (`GroupwiseReward`: a caption's clips scored together, as scores
or as a ranking).

A reward r(caption, clip) is anything that scores a clip against its caption: the BATON reward
model, a CLAP cosine, an audio-language model's P(yes), an HTTP service. Every one of them is
used the same way by the trainer (labelling, best-of-N, online rounds, evaluation) and by a Hub
user, so the checks that protect a run live here, once:

- input: every clip mono, non-empty and finite, every caption a non-empty string; the error
  names the reward and the clip index, since a run scores thousands of clips at a time;
- resampling: a scorer declares the one rate it needs (`sample_rate`) and `score` resamples
  with soxr HQ (`resample_audio`, the same call the BATON reward model and its training cache
  use), so a 16 kHz and a 48 kHz copy of one sound get the same score;
- output: exactly one finite number per clip, or a `RewardError` naming the reward and clip;
  a NaN reward would silently turn a whole group's advantages into NaN.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Sequence

import numpy as np
import torch

from ..modeling_baton_reward import resample_audio


class RewardError(ValueError):
    """A reward cannot score the input, or produced no usable score; the message names the reward,
    the clip(s) and, where there is one, the fix."""


def describe_clips(clip_indices: Sequence[int]) -> str:
    """ "clip 3" or "clips 3, 4, 9" (the first ten), for error messages."""
    ids = [str(int(i)) for i in clip_indices]
    if len(ids) == 1:
        return f"clip {ids[0]}"
    return "clips " + ", ".join(ids[:10]) + (f" ... ({len(ids)} in all)" if len(ids) > 10 else "")


def check_inputs(
    reward_name: str, captions: Sequence[str], waves: Sequence[Any], sample_rate: int, clip_indices: Sequence[int] | None = None
) -> tuple[list[str], list[np.ndarray]]:
    """Captions and mono float32 clips, refused with the reward's name and the clip index (the
    caller's numbering `clip_indices`, by default 0..N-1)."""
    captions, waves = list(captions), list(waves)
    if len(captions) != len(waves):
        raise RewardError(f"reward {reward_name!r}: got {len(captions)} captions but {len(waves)} clips")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or int(sample_rate) <= 0:
        raise RewardError(f"reward {reward_name!r}: sample_rate must be a positive integer (Hz), got {sample_rate!r}")
    ids = list(clip_indices) if clip_indices is not None else list(range(len(waves)))
    clips = []
    for i, caption, wave in zip(ids, captions, waves):
        if not isinstance(caption, str) or not caption.strip():
            raise RewardError(f"reward {reward_name!r}: clip {i}: caption must be a non-empty string, got {caption!r}")
        wav = np.asarray(wave, dtype=np.float32)
        if wav.ndim != 1:
            raise RewardError(
                f"reward {reward_name!r}: clip {i}: expected a mono waveform of shape (samples,), got shape {tuple(wav.shape)}; average the channels first"
            )
        if wav.size == 0:
            raise RewardError(f"reward {reward_name!r}: clip {i}: audio is empty (0 samples)")
        if not np.all(np.isfinite(wav)):
            raise RewardError(f"reward {reward_name!r}: clip {i}: audio contains NaN or infinite samples")
        clips.append(wav)
    return captions, clips


def check_scores(reward_name: str, values: Any, clip_indices: Sequence[int]) -> np.ndarray:
    """`values` as float64, one per clip of `clip_indices` (the caller's numbering), or a
    RewardError naming the reward and the clips."""
    ids = list(clip_indices)
    try:
        scores = np.asarray(values.detach().cpu().double() if isinstance(values, torch.Tensor) else values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise RewardError(f"reward {reward_name!r}: {describe_clips(ids)}: scores are not numbers ({exc})") from None
    if scores.shape[0] != len(ids):
        raise RewardError(f"reward {reward_name!r}: {describe_clips(ids)}: expected {len(ids)} scores, got {scores.shape[0]}")
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        raise RewardError(
            f"reward {reward_name!r}: {describe_clips([ids[i] for i in bad])}: score is NaN or infinite ({scores[bad[0]]!r}); check the model's dtype and weights"
        )
    return scores


def weights_fingerprint(module: torch.nn.Module, config: Any = None) -> str:
    """A short digest of a model's config and weights, cheap enough to take at load time: a
    strided sample of every tensor tells two checkpoints apart without hashing gigabytes."""
    digest = hashlib.sha256()
    if config is not None:
        digest.update(json.dumps(config.to_dict() if hasattr(config, "to_dict") else config, sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, tensor in sorted(module.state_dict().items()):
            flat = tensor.detach().reshape(-1)
            step = max(1, flat.numel() // 4096)
            digest.update(name.encode())
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(flat[::step].to(torch.float32).cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


class Reward:
    """Pointwise reward: `score(captions, waves, sample_rate)` -> float64 (N,), one per clip.

    A subclass sets `name`, `sample_rate` (the rate its scorer needs) and implements
    `_score(captions, waves)`, which receives at most `batch_size` clips already checked and
    resampled to `sample_rate` and returns one number per clip. `options()` lists what selects
    the scorer (model, template, ...); with the class and, where cheap, a weights digest it makes
    `identity()`, the part of a cache key that says which reward scored a clip.
    """

    name: str = "reward"
    sample_rate: int = 48_000
    training_allowed: bool = True  # False for judges that must not be optimised (the toy oracle)
    batch_size: int = 16
    device: torch.device | None = None

    def score(self, captions: Sequence[str], waves: Sequence[Any], sample_rate: int, *, clip_indices: Sequence[int] | None = None) -> np.ndarray:
        """One float64 score per (caption, mono clip at `sample_rate`). `clip_indices` numbers the
        clips in error messages (a caller scoring a subset passes the clips' own indices)."""
        ids = list(clip_indices) if clip_indices is not None else list(range(len(waves)))
        captions, clips = check_inputs(self.name, captions, waves, sample_rate, ids)
        if not clips:
            return np.zeros(0)
        try:
            target_rate = int(self.sample_rate)  # a remote reward asks its server here
        except RewardError as exc:
            raise RewardError(f"{exc} ({describe_clips(ids)})") from None
        clips = [resample_audio(clip, int(sample_rate), target_rate) for clip in clips]
        step = max(1, int(self.batch_size))
        parts = [np.zeros(0)]
        for start in range(0, len(clips), step):
            batch = ids[start : start + step]
            try:
                values = self._score(captions[start : start + step], clips[start : start + step])
            except RewardError as exc:  # the scorer knows what failed, the caller which clips
                raise RewardError(f"{exc} ({describe_clips(batch)})") from None
            parts.append(check_scores(self.name, values, batch))
        return np.concatenate(parts)

    def _score(self, captions: list[str], waves: list[np.ndarray]) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement _score(captions, waves)")

    def options(self) -> dict:
        """What selects this scorer, JSON-serialisable (part of `identity`)."""
        return {}

    def identity(self) -> str:
        """Stable string naming class and options: equal identities score a clip equally."""
        return f"{type(self).__module__}.{type(self).__qualname__}({json.dumps(self.options(), sort_keys=True, default=str)})"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} @ {self.sample_rate} Hz>"


class GroupwiseReward(Reward):
    """Groupwise reward: the clips of one caption (a group, as the online objectives sample them)
    are scored together, `_score_group(caption, waves)` -> one score per clip, or, with
    `returns_ranking`, the group's clip indices best first, turned into scores

        r_i = (G - 1 - position of clip i) / (G - 1)        (1 for the best, 0 for the worst; 1/2 alone)

    A clip's score depends on the other clips of its group, so `score` groups the clips by caption
    (wherever they sit in the call) and a score cache never stores them. `batch_size` does not
    split a group."""

    cacheable = False
    returns_ranking = False

    def score(self, captions: Sequence[str], waves: Sequence[Any], sample_rate: int, *, clip_indices: Sequence[int] | None = None) -> np.ndarray:
        ids = list(clip_indices) if clip_indices is not None else list(range(len(waves)))
        captions, clips = check_inputs(self.name, captions, waves, sample_rate, ids)
        clips = [resample_audio(clip, int(sample_rate), int(self.sample_rate)) for clip in clips]
        groups: dict[str, list[int]] = {}
        for i, caption in enumerate(captions):
            groups.setdefault(caption, []).append(i)
        scores = np.zeros(len(clips))
        for caption, members in groups.items():
            batch = [ids[i] for i in members]
            try:
                values = self._score_group(caption, [clips[i] for i in members])
            except RewardError as exc:
                raise RewardError(f"{exc} ({describe_clips(batch)})") from None
            if self.returns_ranking:
                values = self._ranking_to_scores(values, batch)
            scores[members] = check_scores(self.name, values, batch)
        return scores

    def _ranking_to_scores(self, ranking: Any, clip_indices: list[int]) -> np.ndarray:
        size = len(clip_indices)
        order = [int(i) for i in np.asarray(ranking).reshape(-1)] if np.asarray(ranking).size else []
        if sorted(order) != list(range(size)):
            raise RewardError(
                f"reward {self.name!r}: {describe_clips(clip_indices)}: a ranking must list each of the group's {size} clips once (0..{size - 1}), got {order}"
            )
        scores = np.full(size, 0.5)
        if size > 1:
            scores[order] = (size - 1 - np.arange(size)) / (size - 1)
        return scores

    def _score_group(self, caption: str, waves: list[np.ndarray]) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement _score_group(caption, waves)")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`device`, or CUDA when there is one: a reward model is inference-only and small enough."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
