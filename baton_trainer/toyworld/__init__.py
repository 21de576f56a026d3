"""The embedded toy world: synthetic sound events, a renderer, an oracle annotator, a vocoder.

from baton_trainer.toyworld import EVENTS, render_sequence, OracleAnnotator
wav = render_sequence(["beep", "hum", "hiss"], seed=0)
OracleAnnotator().judge(wav, 16000, ["beep", "hum", "hiss"], "temporal")   # -> 1
"""

from ..backends.griffin_lim_vocoder import GriffinLimVocoder
from .events import EVENT_NAMES, EVENTS, EventSpec, UnknownEventError, get_event, render_event
from .mel import LogMelSpectrogram, MelConfig, log_mel_spectrogram, mel_filters
from .oracle import (
    OracleAnnotator,
    OracleError,
    alignment_accuracy,
    alignment_outcomes,
    annotate_store,
    integrity_accuracy,
    is_aligned,
    temporal_accuracy,
)
from .render import (
    DEFAULT_DURATION_S,
    PlacedEvent,
    RenderError,
    add_noise,
    iter_dataset,
    render_dataset,
    render_mixture,
    render_sequence,
)

__all__ = [
    "DEFAULT_DURATION_S",
    "EVENTS",
    "EVENT_NAMES",
    "EventSpec",
    "GriffinLimVocoder",
    "LogMelSpectrogram",
    "MelConfig",
    "OracleAnnotator",
    "OracleError",
    "PlacedEvent",
    "RenderError",
    "UnknownEventError",
    "add_noise",
    "alignment_accuracy",
    "alignment_outcomes",
    "annotate_store",
    "get_event",
    "integrity_accuracy",
    "is_aligned",
    "iter_dataset",
    "log_mel_spectrogram",
    "mel_filters",
    "render_dataset",
    "render_event",
    "render_mixture",
    "render_sequence",
    "temporal_accuracy",
]
