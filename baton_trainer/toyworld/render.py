"""Render toy-world clips: events in sequence or overlapping, over a low noise floor.

    wav = render_sequence(["beep", "hum", "hiss"], seed=3)           # 2.56 s, 16 kHz, in order
    wav, placed = render_sequence(["beep", "hum"], seed=3, return_events=True)
    data = render_dataset(1000, seed=0)                               # captioned pretraining clips

Everything is drawn from `numpy.random.default_rng` seeded by the caller, so a seed always gives
the same waveform. The default clip is 2.56 s: 256 mel frames at hop 160, a latent of 64 frames
after a VAE that downsamples by 4.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from ..captions import make_caption
from .events import EVENT_NAMES, get_event

DEFAULT_DURATION_S = 2.56
DEFAULT_SAMPLE_RATE = 16000
DEFAULT_NOISE_RMS = 0.002  # about 45 dB below the events' level on the log-mel


# How the toy TANGO's pretraining captions describe their clips: loosely, as crowd-written
# captions do. A quarter of 3-event clips ignore the caption's order and each named event is
# missing with probability 0.3, so the base model learns to drop events and to mix up order
# sometimes, the failures BATON's feedback corrects. `scripts/train_toy_tango.py` trains on this
# world and the default run's pretraining term (pretrain_weight) and FD reference clips draw from it.
PRETRAIN_WORLD = {"order_noise": 0.25, "event_dropout": 0.3, "gap_concentration": 8.0}


class RenderError(ValueError):
    """Events that do not fit the clip, or an unusable render setting; the message says which."""


@dataclass(frozen=True)
class PlacedEvent:
    """Ground truth for one rendered event: its name and where it sounds, in seconds."""

    name: str
    onset_s: float
    offset_s: float

    def as_tuple(self) -> tuple[str, float, float]:
        return (self.name, self.onset_s, self.offset_s)


def _background(num_samples: int, rng: np.random.Generator, noise_rms: float) -> np.ndarray:
    # The level varies by +-3 dB per clip so that the oracle never relies on one fixed floor.
    level = noise_rms * 10 ** (rng.uniform(-3, 3) / 20)
    return (level * rng.standard_normal(num_samples)).astype(np.float32)


def _render_events(event_names: Sequence[str], rng: np.random.Generator, sample_rate: int) -> list[np.ndarray]:
    specs = [get_event(name) for name in event_names]  # refuse unknown names before drawing anything
    return [spec.render(rng, sample_rate) for spec in specs]


def _check_clip(duration_s: float, sample_rate: int) -> int:
    if duration_s <= 0:
        raise RenderError(f"duration_s must be positive, got {duration_s}")
    return int(round(duration_s * sample_rate))


def render_sequence(
    event_names: Sequence[str],
    seed: int | np.random.Generator = 0,
    duration_s: float = DEFAULT_DURATION_S,
    sample_rate: int = DEFAULT_SAMPLE_RATE,
    noise_rms: float = DEFAULT_NOISE_RMS,
    min_gap_s: float = 0.1,
    margin_s: float = 0.05,
    gap_concentration: float = 1.0,
    return_events: bool = False,
) -> np.ndarray | tuple[np.ndarray, list[PlacedEvent]]:
    """Events one after another, in the given order, with random gaps (at least `min_gap_s`).

    The free time is split at random between the lead-in, the gaps and the tail, each also keeping
    `margin_s` from the clip's ends. The split is Dirichlet with `gap_concentration`: 1 spreads it
    uniformly, larger values even it out, so events sit nearer fixed places. Returns a float32
    waveform of `duration_s * sample_rate` samples, and with `return_events` also the placed
    events (name, onset, offset in seconds).
    An empty `event_names` gives background noise only.
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    num_samples = _check_clip(duration_s, sample_rate)
    sounds = _render_events(event_names, rng, sample_rate)
    wav = _background(num_samples, rng, noise_rms)
    placed: list[PlacedEvent] = []
    if sounds:
        gap, margin = int(min_gap_s * sample_rate), int(margin_s * sample_rate)
        busy = sum(len(s) for s in sounds) + gap * (len(sounds) - 1) + 2 * margin
        slack = num_samples - busy
        if slack < 0:
            raise RenderError(f"events {list(event_names)} need {busy / sample_rate:.2f} s with gaps, more than the {duration_s} s clip")
        shares = np.floor(rng.dirichlet(np.full(len(sounds) + 1, gap_concentration)) * slack).astype(int)
        position = margin + shares[0]
        for name, sound, share in zip(event_names, sounds, shares[1:]):
            wav[position : position + len(sound)] += sound
            placed.append(PlacedEvent(name, position / sample_rate, (position + len(sound)) / sample_rate))
            position += len(sound) + gap + share
    return (wav, placed) if return_events else wav


def render_mixture(
    event_names: Sequence[str],
    seed: int | np.random.Generator = 0,
    duration_s: float = DEFAULT_DURATION_S,
    sample_rate: int = DEFAULT_SAMPLE_RATE,
    noise_rms: float = DEFAULT_NOISE_RMS,
    margin_s: float = 0.05,
    return_events: bool = False,
) -> np.ndarray | tuple[np.ndarray, list[PlacedEvent]]:
    """Events at independent random onsets: they may overlap (as "X while Y" describes)."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    num_samples = _check_clip(duration_s, sample_rate)
    sounds = _render_events(event_names, rng, sample_rate)
    wav = _background(num_samples, rng, noise_rms)
    margin = int(margin_s * sample_rate)
    placed = []
    for name, sound in zip(event_names, sounds):
        latest = num_samples - margin - len(sound)
        if latest < margin:
            raise RenderError(f"event '{name}' ({len(sound) / sample_rate:.2f} s) does not fit the {duration_s} s clip")
        onset = int(rng.integers(margin, latest + 1))
        wav[onset : onset + len(sound)] += sound
        placed.append(PlacedEvent(name, onset / sample_rate, (onset + len(sound)) / sample_rate))
    placed.sort(key=lambda event: event.onset_s)
    return (wav, placed) if return_events else wav


# Caption conjunctions that state an order, for 2-event pretraining captions.
ORDERED_PAIR_CONJUNCTIONS = ("followed by", "then", "and then", "before")


def _caption_item(
    rng: np.random.Generator,
    events: Sequence[str],
    event_count_probs: Sequence[float],
    ordered_pair_prob: float,
    order_noise: float,
    event_dropout: float = 0.0,
    pair_event_dropout: float | None = None,
) -> tuple[str, str, list[str], list[str]]:
    """Draw labels and a caption: returns (caption, task, labels in caption order, rendered events
    in time order)."""
    count = int(rng.choice(np.arange(1, len(event_count_probs) + 1), p=np.asarray(event_count_probs) / np.sum(event_count_probs)))
    labels = [str(x) for x in rng.choice(events, size=count, replace=False)]
    if count == 1:
        caption, task, ordered = labels[0][:1].upper() + labels[0][1:], "integrity", True
    elif count == 2 and rng.random() < ordered_pair_prob:
        conjunction = ORDERED_PAIR_CONJUNCTIONS[int(rng.integers(len(ORDERED_PAIR_CONJUNCTIONS)))]
        caption, task, ordered = make_caption(labels, "integrity", conjunction), "integrity", True
    elif count == 2:
        # "X with Y", "X amid Y": the caption fixes no order, so the audio takes either.
        caption, task, ordered = make_caption(labels, "integrity", rng), "integrity", False
    elif count == 3:
        caption, task, ordered = make_caption(labels, "temporal", rng), "temporal", True
    else:
        raise RenderError(f"event_count_probs allows {count} events; captions take 1 to 3")
    order = list(labels)
    if not ordered or rng.random() < order_noise:
        order = [order[i] for i in rng.permutation(len(order))]
    dropout = pair_event_dropout if count == 2 and pair_event_dropout is not None else event_dropout
    if count > 1 and dropout > 0:
        # Loose captions, as crowd-written ones are: a named event may be missing from the audio.
        # At least one event always sounds.
        kept = [name for name in order if rng.random() >= dropout]
        order = kept or [order[int(rng.integers(len(order)))]]
    return caption, task, labels, order


def iter_dataset(
    n: int,
    seed: int = 0,
    start: int = 0,
    duration_s: float = DEFAULT_DURATION_S,
    sample_rate: int = DEFAULT_SAMPLE_RATE,
    events: Sequence[str] = EVENT_NAMES,
    event_count_probs: Sequence[float] = (0.2, 0.4, 0.4),
    ordered_pair_prob: float = 0.5,
    order_noise: float = 0.0,
    event_dropout: float = 0.0,
    gap_concentration: float = 1.0,
    noise_rms: float = DEFAULT_NOISE_RMS,
    pair_event_dropout: float | None = None,
) -> Iterator[dict]:
    """Yield captioned clips `start .. start + n - 1`; item i depends only on (seed, i).

    Each item: {"index", "audio" (float32), "caption", "task", "labels" (caption order), "events"
    (placed (name, onset_s, offset_s) in time order)}. 3-event clips get temporal captions and
    sound in the stated order; 2-event clips get an ordered caption ("X followed by Y") with
    probability `ordered_pair_prob`, else an order-free one ("X with Y") and a random order.
    Loose captions, as real ones are: `order_noise` is the chance that a clip ignores its
    caption's order, and `event_dropout` the chance that each event a multi-event caption names is
    missing from the clip (one always stays; `pair_event_dropout`, when given, replaces it for
    2-event captions). `gap_concentration` goes to `render_sequence`.
    """
    if n < 0 or start < 0:
        raise RenderError(f"n and start must be >= 0, got n={n}, start={start}")
    unknown = [name for name in events if name not in EVENT_NAMES]
    if unknown:
        get_event(unknown[0])
    if len(event_count_probs) > min(3, len(events)):
        raise RenderError(f"event_count_probs has {len(event_count_probs)} entries; at most min(3, number of events)")
    for index in range(start, start + n):
        rng = np.random.default_rng([seed, index])
        caption, task, labels, order = _caption_item(rng, events, event_count_probs, ordered_pair_prob, order_noise, event_dropout, pair_event_dropout)
        wav, placed = render_sequence(order, rng, duration_s, sample_rate, noise_rms=noise_rms, gap_concentration=gap_concentration, return_events=True)
        yield {
            "index": index,
            "audio": wav,
            "caption": caption,
            "task": task,
            "labels": labels,
            "events": [event.as_tuple() for event in placed],
        }


def render_dataset(n: int, seed: int = 0, start: int = 0, **kwargs) -> dict:
    """`n` captioned pretraining clips as columns: "audio" (n, samples) float32, and lists
    "caption", "task", "labels", "events", "index". Keyword arguments go to `iter_dataset`."""
    items = list(iter_dataset(n, seed, start, **kwargs))
    duration_s = kwargs.get("duration_s", DEFAULT_DURATION_S)
    sample_rate = kwargs.get("sample_rate", DEFAULT_SAMPLE_RATE)
    num_samples = int(round(duration_s * sample_rate))
    audio = np.stack([item["audio"] for item in items]) if items else np.zeros((0, num_samples), np.float32)
    columns = {key: [item[key] for item in items] for key in ("index", "caption", "task", "labels", "events")}
    return {"audio": audio, "sample_rate": sample_rate, **columns}


def add_noise(wav: np.ndarray, snr_db: float, seed: int | np.random.Generator = 0) -> np.ndarray:
    """White noise at `snr_db` below the clip's RMS (a degradation to test the oracle on)."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    wav = np.asarray(wav, dtype=np.float32)
    rms = np.sqrt(np.mean(wav.astype(np.float64) ** 2, axis=-1, keepdims=True))
    noise = rng.standard_normal(wav.shape) * rms * 10 ** (-snr_db / 20)
    return (wav + noise).astype(np.float32)
