"""The oracle annotator: the toy world's stand-in for the people who rate clips.

It finds which toy events sound in a clip and when (`detect`), and answers BATON's question for a
caption's labels (`judge`): 1 aligned, 0 not aligned, or None (skip). It is both the annotator
of the default run and the judge of its evaluation, so its rules are strict and simple:

- Front end: TANGO's log-mel (64 Slaney bins, 0-8 kHz, n_fft 1024, hop 160), smoothed by a 3x3
  median filter: clips from a small generative model carry isolated bright mel pixels
  ("salt-and-pepper" noise) that would otherwise count as short events.
- Floor: each mel bin's background is its 20th percentile over time, capped at 1 (natural-log
  unit) above the clip's typical background, so that an event lasting the whole clip still stands
  out; nothing more than 8 units below the clip's loudest pixel counts.
- Activity: for each event, the largest excess over the floor among the mel bins of its band
  (`EventSpec.band_hz`). Frames whose activity exceeds `threshold` (2.5 units, about 22 dB) are
  active; gaps up to `max_gap_s` are bridged (beeps and knocks pause between pulses); a run is an
  event only if at least `min_duration_s` (0.2 s) of its frames are active: a single bright mel
  pixel, once vocoded, sounds for about 0.1 s and must not count.
- Integrity (2-label task): every label is detected. Extra events do not matter (BATON's
  integrity question is whether all the caption's events are present); `allow_extra=False`
  makes them count against the clip.
- Temporal (3-label task): every label is detected and their first onsets come in the stated
  order, each at least `order_margin_s` after the previous one.

`error_rate` flips the answer and `skip_rate` skips, drawn per clip from (seed, clip id) when a
clip id is given, so an annotation run does not depend on the order clips are visited in.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from scipy.ndimage import median_filter
from tqdm.auto import tqdm

from ..annotation.store import ALIGNED, NOT_ALIGNED, SKIP
from ..audio import check_waveform, load_audio, resample
from ..segments import active_segments
from .events import EVENT_NAMES, EVENTS, UnknownEventError
from .mel import MelConfig, cached_front_end, mel_center_frequencies
from .render import render_sequence

TASKS = ("integrity", "temporal")
LOG_MEL_BATCH = 64  # clips per STFT batch in `ToyOracle.log_mels`
Detection = tuple[str, float, float]  # (event name, onset_s, offset_s)


class OracleError(ValueError):
    """An input the oracle cannot judge (unknown label or task); the message names it."""


def _normalise_label(label: str) -> str:
    name = " ".join(str(label).split()).lower()
    if name not in EVENTS:
        raise UnknownEventError(f"label '{label}' is not a toy event (known: {', '.join(EVENT_NAMES)})")
    return name


def is_aligned(
    detections: Sequence[Detection],
    labels: Sequence[str],
    task: str,
    order_margin_s: float = 0.1,
    allow_extra: bool = True,
) -> bool:
    """The oracle's rule, without noise: do `detections` satisfy the caption's `labels` for `task`?"""
    if task not in TASKS:
        raise OracleError(f"task must be one of {list(TASKS)}, got {task!r}")
    labels = [_normalise_label(label) for label in labels]
    first_onset: dict[str, float] = {}
    for name, onset, _ in sorted(detections, key=lambda d: d[1]):
        first_onset.setdefault(name, onset)
    if not all(label in first_onset for label in labels):
        return False
    if not allow_extra and any(name not in labels for name in first_onset):
        return False
    if task == "temporal":
        onsets = [first_onset[label] for label in labels]
        return all(later - earlier >= order_margin_s for earlier, later in zip(onsets, onsets[1:]))
    return True


class OracleAnnotator:
    """Detects toy events in audio and rates clips against captions like a (noisy) person would.

    oracle = OracleAnnotator(error_rate=0.1, skip_rate=0.05, seed=0)
    oracle.detect(wav, 16000)                     # [("beep", 0.31, 0.82), ("hum", 1.02, 1.5)]
    oracle.judge(wav, 16000, ["beep", "hum"], "temporal", clip_id="00012_3")   # 1, 0 or None
    """

    def __init__(
        self,
        error_rate: float = 0.0,
        skip_rate: float = 0.0,
        seed: int = 0,
        threshold: float = 2.5,
        min_duration_s: float = 0.2,
        max_gap_s: float = 0.12,
        order_margin_s: float = 0.1,
        allow_extra: bool = True,
        mel_config: MelConfig | None = None,
    ):
        for name, rate in (("error_rate", error_rate), ("skip_rate", skip_rate)):
            if not 0.0 <= rate <= 1.0:
                raise OracleError(f"{name} must be in [0, 1], got {rate}")
        self.error_rate = float(error_rate)
        self.skip_rate = float(skip_rate)
        self.seed = int(seed)
        self.threshold = float(threshold)
        self.min_duration_s = float(min_duration_s)
        self.max_gap_s = float(max_gap_s)
        self.order_margin_s = float(order_margin_s)
        self.allow_extra = bool(allow_extra)
        self.mel_config = mel_config or MelConfig()
        self.sample_rate = self.mel_config.sample_rate
        self._front_end = cached_front_end(self.mel_config)
        centres = mel_center_frequencies(self.mel_config)
        self._bands: dict[str, np.ndarray] = {}
        for name, spec in EVENTS.items():
            bins = np.flatnonzero((centres >= spec.band_hz[0]) & (centres <= spec.band_hz[1]))
            if bins.size == 0:
                raise OracleError(f"event '{name}': band {spec.band_hz} Hz holds no mel bin of {self.mel_config}")
            self._bands[name] = bins
        self._rng = np.random.default_rng(self.seed)

    # -- detection -----------------------------------------------------------------------------

    def _prepare(self, wav: np.ndarray, sample_rate: int) -> np.ndarray:
        wav = check_waveform(np.asarray(wav, dtype=np.float32))
        if sample_rate != self.sample_rate:
            wav = resample(wav, sample_rate, self.sample_rate)
        return wav

    def log_mels(self, wavs: Sequence[np.ndarray], sample_rate: int = 16000) -> list[np.ndarray]:
        """TANGO log-mels (64, frames) of each clip, computed in batches of clips of one length
        (at most LOG_MEL_BATCH: the STFTs of a whole evaluation at once took about 1 GB)."""
        prepared = [self._prepare(w, sample_rate) for w in wavs]
        out: list[np.ndarray | None] = [None] * len(prepared)
        by_length: dict[int, list[int]] = {}
        for i, w in enumerate(prepared):
            by_length.setdefault(len(w), []).append(i)
        with torch.no_grad():
            for same_length in by_length.values():
                for start in range(0, len(same_length), LOG_MEL_BATCH):
                    indices = same_length[start : start + LOG_MEL_BATCH]
                    mels = self._front_end(torch.from_numpy(np.stack([prepared[i] for i in indices]))).numpy()
                    for i, mel in zip(indices, mels):
                        out[i] = mel
        return out  # type: ignore[return-value]

    def activity(self, log_mel: np.ndarray) -> dict[str, np.ndarray]:
        """Per event, its excess over the floor per frame (natural-log units), after smoothing."""
        smoothed = median_filter(log_mel, size=3, mode="nearest")
        per_bin = np.percentile(smoothed, 20, axis=1)
        typical = np.median(per_bin)
        floor = np.minimum(per_bin, typical + 1.0)
        floor = np.maximum(floor, smoothed.max() - 8.0)
        excess = smoothed - floor[:, None]
        return {name: excess[bins].max(axis=0) for name, bins in self._bands.items()}

    def _segments(self, active: np.ndarray) -> list[tuple[int, int]]:
        return active_segments(active, self.mel_config.hop_length / self.sample_rate, self.max_gap_s, self.min_duration_s)

    def detect_log_mel(self, log_mel: np.ndarray) -> list[Detection]:
        """Events in a TANGO log-mel (64, frames): (name, onset_s, offset_s), sorted by onset."""
        seconds_per_frame = self.mel_config.hop_length / self.sample_rate
        detections = []
        for name, level in self.activity(log_mel).items():
            for start, end in self._segments(level > self.threshold):
                detections.append((name, round(start * seconds_per_frame, 3), round(end * seconds_per_frame, 3)))
        detections.sort(key=lambda d: (d[1], d[0]))
        return detections

    def detect(self, wav: np.ndarray, sample_rate: int = 16000) -> list[Detection]:
        """Which toy events sound in `wav`, and when: [(name, onset_s, offset_s), ...] by onset."""
        return self.detect_log_mel(self.log_mels([wav], sample_rate)[0])

    def detect_batch(self, wavs: Sequence[np.ndarray], sample_rate: int = 16000) -> list[list[Detection]]:
        return [self.detect_log_mel(mel) for mel in self.log_mels(list(wavs), sample_rate)]

    # -- judging -------------------------------------------------------------------------------

    def is_aligned(self, detections: Sequence[Detection], labels: Sequence[str], task: str) -> bool:
        return is_aligned(detections, labels, task, self.order_margin_s, self.allow_extra)

    def _noise_rng(self, clip_id: str | None) -> np.random.Generator:
        if clip_id is None:
            return self._rng
        return np.random.default_rng([self.seed, zlib.crc32(str(clip_id).encode("utf-8"))])

    def answer(self, aligned: bool, clip_id: str | None = None) -> int | None:
        """The annotator's answer for a clip whose true alignment is `aligned`: noise applied."""
        return self._answer(aligned, clip_id)

    def _answer(self, aligned: bool, clip_id: str | None) -> int | None:
        rng = self._noise_rng(clip_id)
        skip_draw, error_draw = rng.random(2)  # both drawn always, so one rate never shifts the other
        if skip_draw < self.skip_rate:
            return None
        if error_draw < self.error_rate:
            aligned = not aligned
        return int(aligned)

    def judge(self, wav: np.ndarray, sample_rate: int, labels: Sequence[str], task: str, clip_id: str | None = None) -> int | None:
        """1 if the clip matches the caption's labels for `task`, 0 if not, None to skip.

        With `error_rate` / `skip_rate` the answer is flipped / skipped at those rates; the draw
        comes from (seed, clip_id) when `clip_id` is given, else from the annotator's own stream.
        """
        return self._answer(self.is_aligned(self.detect(wav, sample_rate), labels, task), clip_id)

    def aligned_batch(
        self,
        wavs: Sequence[np.ndarray],
        labels: Sequence[Sequence[str]],
        tasks: Sequence[str] | str,
        sample_rate: int = 16000,
    ) -> list[bool]:
        """Per clip, whether it is aligned with its labels (no noise); `tasks` is one task for
        every clip, or one per clip."""
        tasks = [tasks] * len(wavs) if isinstance(tasks, str) else list(tasks)
        if not len(wavs) == len(labels) == len(tasks):
            raise OracleError(f"{len(wavs)} clips but {len(labels)} label lists and {len(tasks)} tasks")
        detections = self.detect_batch(wavs, sample_rate)
        return [self.is_aligned(found, named, task) for found, named, task in zip(detections, labels, tasks)]

    def judge_batch(
        self,
        wavs: Sequence[np.ndarray],
        labels: Sequence[Sequence[str]],
        tasks: Sequence[str] | str,
        sample_rate: int = 16000,
        clip_ids: Sequence[str] | None = None,
    ) -> list[int | None]:
        if clip_ids is not None and len(clip_ids) != len(wavs):
            raise OracleError(f"judge_batch: {len(wavs)} clips but {len(clip_ids)} clip ids")
        aligned = self.aligned_batch(wavs, labels, tasks, sample_rate)
        ids = list(clip_ids) if clip_ids is not None else [None] * len(wavs)
        return [self._answer(a, i) for a, i in zip(aligned, ids)]


# ----------------------------------------------------------------------------------------------
# Evaluation helpers


def _mean_and_stderr(outcomes: Sequence[bool]) -> tuple[float, float]:
    n = len(outcomes)
    if n == 0:
        raise OracleError("no clips to score")
    p = float(np.mean(outcomes))
    return p, math.sqrt(p * (1 - p) / n)


def alignment_outcomes(
    wavs: Sequence[np.ndarray],
    labels: Sequence[Sequence[str]],
    task: str | Sequence[str],
    sample_rate: int = 16000,
    oracle: OracleAnnotator | None = None,
) -> list[bool]:
    """Per clip, whether it is aligned with its labels under the noise-free oracle's rule.
    `task` is one task for every clip, or one per clip."""
    return (oracle or _default_judge()).aligned_batch(wavs, labels, task, sample_rate)


def alignment_accuracy(
    wavs: Sequence[np.ndarray],
    labels: Sequence[Sequence[str]],
    task: str,
    sample_rate: int = 16000,
    oracle: OracleAnnotator | None = None,
) -> tuple[float, float]:
    """(share of clips aligned with their labels, its standard error sqrt(p (1 - p) / n))."""
    return _mean_and_stderr(alignment_outcomes(wavs, labels, task, sample_rate, oracle))


def integrity_accuracy(wavs, labels, sample_rate: int = 16000, oracle: OracleAnnotator | None = None) -> tuple[float, float]:
    """Share of clips in which every label's event is present, and its standard error."""
    return alignment_accuracy(wavs, labels, "integrity", sample_rate, oracle)


def temporal_accuracy(wavs, labels, sample_rate: int = 16000, oracle: OracleAnnotator | None = None) -> tuple[float, float]:
    """Share of clips with every label's event present in the stated order, and its standard error."""
    return alignment_accuracy(wavs, labels, "temporal", sample_rate, oracle)


_DEFAULT_JUDGE: OracleAnnotator | None = None


def _default_judge() -> OracleAnnotator:
    global _DEFAULT_JUDGE
    if _DEFAULT_JUDGE is None:
        _DEFAULT_JUDGE = OracleAnnotator()
    return _DEFAULT_JUDGE


def benchmark_cases(
    n: int, task: str, seed: int = 0, duration_s: float = 2.56, sample_rate: int = 16000
) -> tuple[list[np.ndarray], list[list[str]], list[int]]:
    """A balanced test set for the oracle: `n` clips, half aligned with their labels, half not.

    Integrity (2 labels): aligned clips hold both events (either order); misaligned ones miss one,
    alone or beside a distractor event. Temporal (3 labels): aligned clips hold the three in the
    stated order; misaligned ones hold them in another order, or miss one (a distractor may take
    its place). Returns (waveforms, labels, truth) with truth 1 aligned, 0 not.
    """

    if task not in TASKS:
        raise OracleError(f"task must be one of {list(TASKS)}, got {task!r}")
    count = 2 if task == "integrity" else 3
    rng = np.random.default_rng([seed, count])
    wavs, labels, truths = [], [], []
    for i in range(n):
        picked = [str(x) for x in rng.choice(EVENT_NAMES, size=count + 1, replace=False)]
        group, distractor = picked[:count], picked[count]
        aligned = i % 2 == 0
        if aligned:
            played = list(group) if task == "temporal" else [group[j] for j in rng.permutation(count)]
        elif task == "temporal" and rng.random() < 0.5:
            order = rng.permutation(count)
            while list(order) == list(range(count)):
                order = rng.permutation(count)
            played = [group[j] for j in order]
        else:
            played = list(group)
            missing = int(rng.integers(count))
            if rng.random() < 0.5:
                played[missing] = distractor
            else:
                del played[missing]
            if task == "integrity":
                played = [played[j] for j in rng.permutation(len(played))]
        wavs.append(render_sequence(played, rng, duration_s, sample_rate))
        labels.append(group)
        truths.append(int(aligned))
    return wavs, labels, truths


# ----------------------------------------------------------------------------------------------
# Annotating a run's clips


def annotate_store(
    store: Any,
    generations_dir: str | Path,
    annotator: str = "oracle",
    oracle: OracleAnnotator | None = None,
    max_clips: int | None = None,
    clip_ids: Iterable[str] | None = None,
    seed: int = 0,
    batch_size: int = 32,
    progress: bool = True,
) -> dict[str, int]:
    """Rate a run's generated clips with the oracle, through the annotation store.

    Registers `generations_dir/metadata.jsonl` in `store` (an `AnnotationStore`), then rates each
    clip this annotator has not rated or skipped yet: `clip_ids` if given, else all clips, or a
    seeded random `max_clips` of them (as BATON's people rated part of the clips and the reward
    model labelled the rest). Skips are stored as skips. Resumable: a rerun rates only what is
    left. Returns counts {"rated", "aligned", "not_aligned", "skipped", "already_done"}.
    """

    generations_dir = Path(generations_dir)
    oracle = oracle or OracleAnnotator()
    store.register_clips(generations_dir)
    clips = {clip["clip_id"]: clip for clip in store.clips()}
    if clip_ids is not None:
        wanted = [str(c) for c in clip_ids]
        missing = [c for c in wanted if c not in clips]
        if missing:
            raise OracleError(f"{generations_dir / 'metadata.jsonl'}: no clip with id {missing[0]!r}")
    else:
        wanted = sorted(clips)
        if max_clips is not None and max_clips < len(wanted):
            order = np.random.default_rng(seed).permutation(len(wanted))[: max(0, int(max_clips))]
            wanted = [wanted[i] for i in sorted(order)]
    done = {r["clip_id"] for r in store.ratings() if r["annotator"] == annotator}
    todo = [c for c in wanted if c not in done]
    counts = {"rated": 0, "aligned": 0, "not_aligned": 0, "skipped": 0, "already_done": len(wanted) - len(todo)}
    bar = tqdm(total=len(todo), desc=f"oracle annotating ({annotator})", disable=not progress)
    for start in range(0, len(todo), batch_size):
        batch = [clips[c] for c in todo[start : start + batch_size]]
        wavs = [load_audio(generations_dir / clip["file_name"], oracle.sample_rate, what=f"clip {clip['clip_id']}")[0] for clip in batch]
        answers = oracle.judge_batch(
            wavs,
            [clip["labels"] for clip in batch],
            [clip["task"] for clip in batch],
            oracle.sample_rate,
            [clip["clip_id"] for clip in batch],
        )
        for clip, answer in zip(batch, answers):
            label = SKIP if answer is None else (ALIGNED if answer == 1 else NOT_ALIGNED)
            store.add_rating(clip["clip_id"], annotator, label)
            counts["skipped" if answer is None else ("aligned" if answer == 1 else "not_aligned")] += 1
            counts["rated"] += answer is not None
        bar.update(len(batch))
    bar.close()
    return counts
