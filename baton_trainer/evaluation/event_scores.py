"""Event presence, order and parsimony from a sound event detector: the real world's version of
the toy world's oracle.

BATON's claim is about events: every event the caption names is present, in the stated order.
CLAP scores order poorly (Human-CLAP, arXiv 2506.23553: rank correlation with people about 0.28)
and is the reward model's own backbone, so the evaluation also reads events off a detector that
gives frame-wise class probabilities, scored per clip in the spirit of RiTTA's presence and
relation scores (arXiv 2412.15922):

    active(class, frame)  = p(class, frame) > presence                     (EventThresholds)
    segments(class)       = runs of active frames, gaps <= max_gap_s bridged, kept when at least
                            min_duration_s of their frames are active; onset = the run's first frame
    presence(clip)        = every named event has a segment (an event names one or more classes)
    order(clip)           = presence, and the named events' first onsets come in the stated order,
                            each at least order_margin_s after the one before (ordered captions only)
    parsimony(clip)       = no segment, at the `parsimony` probability, of a class no named event
                            lists (the map lists the classes a named event may also fire, e.g. Dog
                            beside Bark)

Detectors (one interface: `classes`, `frame_s`, `frame_probabilities(waveforms, sample_rate)`):

- `ToyEventDetector`: the toy world's oracle as a detector (a per-frame logistic of its band
  activity, so that p > 0.5 is exactly the oracle's active frame). With its thresholds, presence
  on 2-label captions and order on 3-label captions are the oracle's integrity and temporal
  accuracies, clip for clip.
- `PannsSedDetector` (`models.PannsCnn14Sed`): PANNs `Cnn14_DecisionLevelMax`, 527 AudioSet classes
  every 0.32 s.

Captions name events through their `labels` (the prompts stage keeps them) or, for free text such
as the paper's AudioCaps captions, through an editable phrase table (`EventMap`,
`assets/audioset_event_map.tsv`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..atomic import atomic_write_text
from ..segments import active_segments
from ..toyworld.oracle import OracleAnnotator
from .models import MissingCheckpointError, PannsCnn14Sed

ASSETS = Path(__file__).resolve().parent.parent / "assets"
AUDIOSET_CLASSES_FILE = ASSETS / "audioset_classes.tsv"
AUDIOSET_EVENT_MAP_FILE = ASSETS / "audioset_event_map.tsv"
Detection = tuple[str, float, float]  # (class, onset_s, offset_s)


class EventMapError(ValueError):
    """An event map, label or class that cannot be used; the message names the file, line or label."""


@dataclasses.dataclass(frozen=True)
class EventThresholds:
    """The settings that turn frame probabilities into events; the report prints them."""

    presence: float = 0.5
    min_duration_s: float = 0.2
    max_gap_s: float = 0.12
    order_margin_s: float = 0.1
    parsimony: float | None = None  # None: the presence threshold

    def __post_init__(self):
        for name in ("presence", "parsimony"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 1.0:
                raise ValueError(f"threshold {name} must be in [0, 1), got {value}")
        for name in ("min_duration_s", "max_gap_s", "order_margin_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def parsimony_threshold(self) -> float:
        return self.presence if self.parsimony is None else self.parsimony


def detect_events(probabilities: np.ndarray, frame_s: float, classes: Sequence[str], threshold: float, thresholds: EventThresholds) -> list[Detection]:
    """Events in one clip's (frames, classes) probabilities: (class, onset_s, offset_s) by onset."""
    probabilities = np.asarray(probabilities)
    detections = []
    for j in np.flatnonzero(probabilities.max(axis=0) > threshold) if probabilities.size else []:
        for start, end in active_segments(probabilities[:, j] > threshold, frame_s, thresholds.max_gap_s, thresholds.min_duration_s):
            detections.append((classes[j], round(start * frame_s, 3), round(end * frame_s, 3)))
    detections.sort(key=lambda d: (d[1], d[0]))
    return detections


def score_events(
    detections: Sequence[Detection],
    events: Sequence[Sequence[str]],
    ordered: bool,
    thresholds: EventThresholds,
    strong: Sequence[Detection] | None = None,
) -> dict[str, Any]:
    """Presence, order and parsimony of one clip. `events[k]` lists the classes that count as the
    caption's k-th named event (in the stated order); `strong` are the detections at the
    parsimony threshold (default `detections`)."""
    first: dict[str, float] = {}
    for name, onset, _ in sorted(detections, key=lambda d: d[1]):
        first.setdefault(name, onset)
    onsets = [min((first[c] for c in classes if c in first), default=None) for classes in events]
    presence = all(o is not None for o in onsets)
    order = None
    if ordered:
        order = presence and all(later - earlier >= thresholds.order_margin_s for earlier, later in zip(onsets, onsets[1:]))
    named = {c for classes in events for c in classes}
    extra = sorted({name for name, _, _ in (detections if strong is None else strong) if name not in named})
    return {"presence": bool(presence), "order": order, "parsimony": not extra, "onsets": onsets, "unnamed": extra}


# ---------------------------------------------------------------------------------------------
# Captions -> named events
# ---------------------------------------------------------------------------------------------


def load_audioset_classes(path: str | Path = AUDIOSET_CLASSES_FILE) -> list[str]:
    """The 527 AudioSet display names in classifier output order."""
    names = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.startswith("#") or line.startswith("index\t") or not line.strip():
            continue
        names.append(line.split("\t")[2])
    return names


def _stem(word: str) -> str:
    """A crude stem, the same for a phrase's words and a caption's: suffix off, doubled end
    consonant single ("barking", "barks" -> "bark"; "snapping" -> "snap"; "buzz" -> "buz")."""
    for suffix in ("ing", "es", "ed", "s", "e"):
        if len(word) > len(suffix) + 2 and word.endswith(suffix):
            word = word[: -len(suffix)]
            break
    if len(word) > 2 and word[-1] == word[-2] and word[-1] not in "aeiou":
        word = word[:-1]
    return word


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+(?:-[a-z0-9']+)*", text.lower())


class EventMap:
    """Caption labels and phrases -> the detector classes that count as that event.

    A tab-separated file, one row per phrase: `phrase<TAB>class[; class ...]`, `#` comments. The
    first class is the event's own; the others are classes it may also fire (parents, synonyms),
    which parsimony then does not count as unnamed. A caption's `labels` are looked up as phrases
    (or taken as class names when the detector has a class of that name); a free-text caption
    names the phrases found in it, in the order they occur (each phrase's words in sequence, up to
    two other words between them, matched on crude stems: "dog is barking" matches "dog barking").
    """

    def __init__(self, rows: Mapping[str, Sequence[str]], classes: Sequence[str], source: str = "event map"):
        self.classes = list(classes)
        by_name = {c.casefold(): c for c in self.classes}
        self.source = source
        self.phrases: dict[str, list[str]] = {}
        for phrase, targets in rows.items():
            resolved = []
            for target in targets:
                if target.casefold() not in by_name:
                    raise EventMapError(f"{source}: phrase {phrase!r} maps to {target!r}, which is not a detector class")
                resolved.append(by_name[target.casefold()])
            self.phrases[" ".join(phrase.casefold().split())] = resolved
        self._by_name = by_name
        # Longest phrases first, so "car horn honking" wins over "car".
        self._patterns = sorted(((p, [_stem(w) for w in _words(p)]) for p in self.phrases), key=lambda x: -len(x[1]))

    @classmethod
    def from_file(cls, path: str | Path, classes: Sequence[str]) -> "EventMap":
        path = Path(path)
        if not path.is_file():
            raise EventMapError(f"event map not found: {path}")
        rows: dict[str, list[str]] = {}
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            text = line.split("#", 1)[0].rstrip()
            if not text.strip():
                continue
            if "\t" not in text:
                raise EventMapError(f"{path}: line {number}: expected 'phrase<TAB>class[; class ...]', got {line!r}")
            phrase, targets = text.split("\t", 1)
            rows[phrase.strip()] = [t.strip() for t in targets.split(";") if t.strip()]
        return cls(rows, classes, source=str(path))

    @classmethod
    def identity(cls, classes: Sequence[str]) -> "EventMap":
        """Every class names itself (the toy world: labels are its event names)."""
        return cls({c: [c] for c in classes}, classes, source="class names")

    def label_classes(self, label: str) -> list[str] | None:
        key = " ".join(str(label).casefold().split())
        if key in self.phrases:
            return self.phrases[key]
        if key in self._by_name:
            return [self._by_name[key]]
        return None

    def find(self, caption: str) -> list[list[str]]:
        """The events a free-text caption names, in the order they occur (an event named twice
        counts once, at its first mention)."""
        stems = [_stem(w) for w in _words(caption)]
        taken = [False] * len(stems)
        found: list[tuple[int, list[str]]] = []
        for phrase, pattern in self._patterns:
            start = 0
            while start < len(stems):
                positions = _match(stems, taken, pattern, start)
                if positions is None:
                    break
                for p in positions:
                    taken[p] = True
                found.append((positions[0], self.phrases[phrase]))
                start = positions[-1] + 1
        events: list[list[str]] = []
        for _, classes in sorted(found, key=lambda x: x[0]):
            if classes[0] not in [e[0] for e in events]:
                events.append(classes)
        return events

    def caption_events(self, row: Mapping[str, Any]) -> tuple[list[list[str]] | None, str | None]:
        """(events in stated order, None) for a caption row, or (None, why not) when its events
        cannot be named: an unknown label, or a free-text caption with fewer events found than
        its task asks (2 for integrity, 3 for temporal)."""
        labels = row.get("labels") or []
        if labels:
            events = []
            for label in labels:
                classes = self.label_classes(label)
                if classes is None:
                    return None, f"label {label!r} is in neither {self.source} nor the detector's classes"
                events.append(classes)
            return events, None
        events = self.find(str(row.get("caption", "")))
        need = {"integrity": 2, "temporal": 3}.get(str(row.get("task")), 1)
        if len(events) < need:
            return None, f"{len(events)} of {need} events found in the caption by {self.source}"
        return events, None


def _match(stems: list[str], taken: list[bool], pattern: list[str], start: int, max_skip: int = 2) -> list[int] | None:
    for first in range(start, len(stems)):
        if taken[first] or stems[first] != pattern[0]:
            continue
        positions, at = [first], first
        for word in pattern[1:]:
            nxt = next((k for k in range(at + 1, min(at + 2 + max_skip, len(stems))) if not taken[k] and stems[k] == word), None)
            if nxt is None:
                break
            positions.append(nxt)
            at = nxt
        if len(positions) == len(pattern):
            return positions
    return None


# ---------------------------------------------------------------------------------------------
# Detectors
# ---------------------------------------------------------------------------------------------


class ToyEventDetector:
    """The toy world's oracle as a frame-wise detector of its eight events (10 ms frames).

    p(event, frame) = sigmoid((activity - threshold) / temperature), the oracle's band activity:
    p > 0.5 exactly when the oracle counts the frame as active, so with `thresholds()` the event
    scores reproduce the oracle clip for clip; `temperature` only shapes the probabilities (what
    noise on them does).
    """

    name = "toy oracle detector"

    def __init__(self, oracle=None, temperature: float = 0.5):
        self.oracle = oracle or OracleAnnotator()
        self.temperature = float(temperature)
        self.classes = list(self.oracle._bands)
        self.frame_s = self.oracle.mel_config.hop_length / self.oracle.sample_rate
        self.onset_resolution_s = self.frame_s

    def thresholds(self) -> EventThresholds:
        o = self.oracle
        return EventThresholds(presence=0.5, min_duration_s=o.min_duration_s, max_gap_s=o.max_gap_s, order_margin_s=o.order_margin_s)

    def event_map(self) -> EventMap:
        return EventMap.identity(self.classes)

    def describe(self) -> str:
        return f"{self.name} (the toy world's oracle; {self.frame_s * 1000:.0f} ms frames)"

    def frame_probabilities(self, waveforms: Sequence[np.ndarray], sample_rate: int) -> list[np.ndarray]:
        out = []
        for mel in self.oracle.log_mels(list(waveforms), sample_rate):
            activity = self.oracle.activity(mel)
            levels = np.stack([activity[c] for c in self.classes], axis=1).astype(np.float64)  # (frames, classes)
            out.append(1.0 / (1.0 + np.exp(-(levels - self.oracle.threshold) / self.temperature)))
        return out


class PannsSedDetector:
    """PANNs `Cnn14_DecisionLevelMax` (32 kHz) as a detector of the 527 AudioSet classes; one
    frame per 0.32 s segment (32 log-mel frames of 10 ms: the resolution onsets have)."""

    name = "PANNs Cnn14_DecisionLevelMax"

    def __init__(self, model, classes: Sequence[str] | None = None, batch_size: int = 8):
        self.model = model
        self.classes = list(classes) if classes is not None else load_audioset_classes()
        if len(self.classes) != model.config.classes_num:
            raise EventMapError(f"{len(self.classes)} class names for a detector with {model.config.classes_num} outputs")
        self.frame_s = model.segment_seconds
        self.onset_resolution_s = self.frame_s
        self.batch_size = batch_size

    @classmethod
    def from_checkpoint(cls, path, device=None) -> "PannsSedDetector":
        return cls(PannsCnn14Sed.from_checkpoint(path, device=device))

    def thresholds(self) -> EventThresholds:
        # One 0.32 s segment is the shortest event; no gap bridging below a segment.
        return EventThresholds(presence=0.3, min_duration_s=self.frame_s, max_gap_s=0.0, order_margin_s=self.frame_s, parsimony=0.5)

    def event_map(self) -> EventMap:
        return EventMap.from_file(AUDIOSET_EVENT_MAP_FILE, self.classes)

    def describe(self) -> str:
        return f"{self.name} (527 AudioSet classes, onsets at {self.frame_s:.2f} s resolution)"

    def frame_probabilities(self, waveforms: Sequence[np.ndarray], sample_rate: int) -> list[np.ndarray]:
        return self.model.segment_probabilities(waveforms, sample_rate, batch_size=self.batch_size)


# ---------------------------------------------------------------------------------------------
# Scoring a set of clips
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class EventScores:
    per_clip: list[dict[str, Any]]  # clip_id, caption_id, events, presence, order, parsimony, detections
    unscored: dict[str, str]  # clip_id -> why its events could not be named


def score_clips(
    detector,
    rows: Sequence[Mapping[str, Any]],
    waveforms: Sequence[np.ndarray],
    sample_rate: int,
    thresholds: EventThresholds | None = None,
    event_map: EventMap | None = None,
    noise_sd: float = 0.0,
    noise_seed: int = 0,
) -> EventScores:
    """Each clip's presence, order (ordered captions: task 'temporal') and parsimony.
    `noise_sd` adds Gaussian noise to the probabilities (clipped to [0, 1]): a robustness check."""
    thresholds = thresholds or detector.thresholds()
    event_map = event_map or detector.event_map()
    probabilities = detector.frame_probabilities(waveforms, sample_rate)
    rng = np.random.default_rng(noise_seed)
    per_clip, unscored = [], {}
    for row, probs in zip(rows, probabilities):
        clip_id = str(row.get("clip_id", len(per_clip)))
        events, why = event_map.caption_events(row)
        if events is None:
            unscored[clip_id] = why
            continue
        if noise_sd > 0:
            probs = np.clip(probs + rng.normal(0.0, noise_sd, size=probs.shape), 0.0, 1.0)
        found = detect_events(probs, detector.frame_s, detector.classes, thresholds.presence, thresholds)
        strong = (
            found
            if thresholds.parsimony_threshold == thresholds.presence
            else detect_events(probs, detector.frame_s, detector.classes, thresholds.parsimony_threshold, thresholds)
        )
        score = score_events(found, events, row.get("task") == "temporal", thresholds, strong)
        per_clip.append(
            {"clip_id": clip_id, "caption_id": row.get("caption_id"), "task": row.get("task"), "events": [e[0] for e in events], **score, "detections": found}
        )
    return EventScores(per_clip, unscored)


def event_metrics(scores: EventScores) -> dict[str, float]:
    """Shares of clips (with standard errors and counts): `event_presence` (all clips),
    `event_order` (ordered captions), `event_parsimony` (all clips), and the toy world's
    `integrity_accuracy` (presence, 2-label captions) and `temporal_accuracy` (order, 3-label)."""
    result: dict[str, float] = {}

    def share(key: str, outcomes: list[bool]) -> None:
        if outcomes:
            p, n = float(np.mean(outcomes)), len(outcomes)
            result[key], result[f"{key}_se"], result[f"{key}_clips"] = p, math.sqrt(p * (1 - p) / n), n

    clips = scores.per_clip
    share("event_presence", [c["presence"] for c in clips])
    share("event_order", [c["order"] for c in clips if c["order"] is not None])
    share("event_parsimony", [c["parsimony"] for c in clips])
    share("integrity_accuracy", [c["presence"] for c in clips if c["task"] == "integrity"])
    share("temporal_accuracy", [c["order"] for c in clips if c["task"] == "temporal"])
    if scores.unscored:
        result["event_unscored_clips"] = len(scores.unscored)
    return result


def load_detector(name: str, checkpoint: str | None = None, device=None):
    """'toy' (the oracle) or 'panns' (Cnn14_DecisionLevelMax from `checkpoint`)."""
    if name == "toy":
        return ToyEventDetector()
    if name == "panns":
        return PannsSedDetector.from_checkpoint(checkpoint, device=device)
    raise EventMapError(f"unknown detector {name!r} (choose 'toy' or 'panns')")


def score_models_events(config, detector_name: str, rows_by_model, clips_by_model, sample_rate: int, metrics, per_clip, skipped, out: Path) -> dict[str, str]:
    """The evaluate stage's event scores: each model's clips through one detector; metrics and
    per-clip outcomes added in place, `RUN/eval/events.jsonl` written (every clip's named events,
    detections and scores). Returns the report's lines naming the detector and its thresholds."""

    try:
        detector = load_detector(detector_name, config.detector_checkpoint, config.device)
    except MissingCheckpointError as exc:
        for key in ("event_presence", "event_order", "event_parsimony"):
            skipped[key] = str(exc)
        return {}
    defaults = detector.thresholds()
    overrides = {
        "presence": config.presence_threshold,
        "parsimony": config.parsimony_threshold,
        "min_duration_s": config.min_event_s,
        "max_gap_s": config.max_event_gap_s,
        "order_margin_s": config.order_margin_s,
    }
    thresholds = dataclasses.replace(defaults, **{k: v for k, v in overrides.items() if v is not None})
    event_map = EventMap.from_file(config.event_map, detector.classes) if config.event_map else detector.event_map()
    lines = []
    for name, rows in rows_by_model.items():
        scores = score_clips(detector, rows, clips_by_model[name], sample_rate, thresholds, event_map)
        metrics[name].update(event_metrics(scores))
        by_clip = {c["clip_id"]: c for c in scores.per_clip}
        for key, field_name, tasks in (
            ("event_presence", "presence", None),
            ("event_order", "order", None),
            ("event_parsimony", "parsimony", None),
            ("integrity_accuracy", "presence", "integrity"),
            ("temporal_accuracy", "order", "temporal"),
        ):
            values = []
            for row in rows:
                clip = by_clip.get(str(row.get("clip_id")))
                ok = clip is not None and clip[field_name] is not None and (tasks is None or clip["task"] == tasks)
                values.append(float(clip[field_name]) if ok else float("nan"))
            if any(v == v for v in values):
                per_clip[name][key] = values
        for clip in scores.per_clip:
            lines.append(json.dumps({"model": name, **clip}, ensure_ascii=False) + "\n")
        for clip_id, why in scores.unscored.items():
            lines.append(json.dumps({"model": name, "clip_id": clip_id, "unscored": why}, ensure_ascii=False) + "\n")
        if scores.unscored:
            skipped.setdefault(
                "event_presence", f"{len(scores.unscored)} of {len(rows)} clips per model unscored: their events could not be named (see events.jsonl)"
            )
    atomic_write_text(out / "events.jsonl", "".join(lines))
    t = thresholds
    return {
        "event_detector": detector.describe(),
        "event_thresholds": (
            f"active above p = {t.presence}; unnamed events count against parsimony above p = {t.parsimony_threshold}; "
            f"events last at least {t.min_duration_s:g} s, gaps up to {t.max_gap_s:g} s bridged; onsets in order by "
            f"at least {t.order_margin_s:g} s; onset resolution {detector.onset_resolution_s:g} s; names by {event_map.source}"
        ),
    }
