"""The toy world's sound events: eight synthetic sounds, each in its own band of TANGO's mel.

Each event owns a frequency band of the 64-bin Slaney mel (0-8 kHz, n_fft 1024) with at least one
empty mel bin between neighbouring bands, and has its own time pattern (steady, pulsed,
alternating, sweeping), so that a small generative model can learn them and the oracle can tell
them apart on degraded audio. Names are single lower-case words, used as labels in captions.

    name      sound                                  energy (jittered)  oracle's mel bins
    rumble    low-passed noise, slow swell           30-150 Hz          0-2
    hum       steady 300 Hz tone                     291-309 Hz         5-6
    knock     damped 540 Hz pulses, ~7 per second    524-556 Hz         10-12
    chirp     rising sweep 750 -> 1250 Hz            728-1288 Hz        15-27
    trill     1700 / 2100 Hz alternation, 80 ms      1649-2163 Hz       30-37
    beep      2800 Hz tone, 70 ms on / 50 ms off     2716-2884 Hz       40-43
    whistle   falling sweep 5000 -> 3500 Hz          3395-5150 Hz       46-55
    hiss      band noise 6000-7800 Hz                5820-8000 Hz       57-63

Every render draws a small variation from its random generator (pitch +-3 %, duration +-10 %,
level +-2 dB, pulse rates +-10 %), so pretraining data is not one template per event; the same
generator state always gives the same waveform.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

MIN_SAMPLE_RATE = 16000  # the hiss reaches 7.8 kHz
FADE_S = 0.01  # raised-cosine fade at both ends: a hard edge would be a broadband click


class UnknownEventError(ValueError):
    """An event name that is not in EVENTS; the message lists the known names."""


@dataclass(frozen=True)
class Jitter:
    """What one render of an event draws: multiplicative pitch, duration and rate factors, gain."""

    pitch: float = 1.0
    duration: float = 1.0
    rate: float = 1.0
    gain_db: float = 0.0

    @classmethod
    def draw(cls, rng: np.random.Generator, spec: "EventSpec") -> "Jitter":
        return cls(
            pitch=float(rng.uniform(1 - spec.pitch_jitter, 1 + spec.pitch_jitter)),
            duration=float(rng.uniform(1 - spec.duration_jitter, 1 + spec.duration_jitter)),
            rate=float(rng.uniform(0.9, 1.1)),
            gain_db=float(rng.uniform(-spec.gain_jitter_db, spec.gain_jitter_db)),
        )


Synth = Callable[[np.ndarray, int, Jitter, np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class EventSpec:
    """One synthetic sound event.

    `band_hz` is where its energy lies once jittered (what the oracle looks at); `synth(t, sr,
    jitter, rng)` returns the unit-level waveform over times `t`; `gain` levels the events so that
    each stands about equally far above the background on the log-mel.
    """

    name: str
    description: str
    band_hz: tuple[float, float]
    synth: Synth = field(repr=False)
    duration_s: float = 0.5
    gain: float = 0.3
    pitch_jitter: float = 0.03
    duration_jitter: float = 0.1
    gain_jitter_db: float = 2.0

    def render(self, rng: np.random.Generator | int | None = None, sample_rate: int = 16000) -> np.ndarray:
        """One float32 waveform of this event, varied by `rng` (a Generator or a seed)."""
        if sample_rate < MIN_SAMPLE_RATE:
            raise ValueError(f"event '{self.name}': sample_rate {sample_rate} is below {MIN_SAMPLE_RATE} Hz")
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        jitter = Jitter.draw(rng, self)
        num_samples = int(round(self.duration_s * jitter.duration * sample_rate))
        t = np.arange(num_samples) / sample_rate
        wav = self.synth(t, sample_rate, jitter, rng)
        wav = wav * _fade(num_samples, int(FADE_S * sample_rate))
        return (self.gain * 10 ** (jitter.gain_db / 20) * wav).astype(np.float32)


def _fade(num_samples: int, fade: int) -> np.ndarray:
    envelope = np.ones(num_samples)
    fade = min(fade, num_samples // 2)
    if fade > 0:
        ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(fade) + 0.5) / fade)
        envelope[:fade] = ramp
        envelope[-fade:] = ramp[::-1]
    return envelope


def band_noise(num_samples: int, sample_rate: int, low_hz: float, high_hz: float, rng: np.random.Generator) -> np.ndarray:
    """White noise band-limited in the frequency domain (steep edges), scaled to unit RMS."""
    spectrum = np.fft.rfft(rng.standard_normal(num_samples))
    freqs = np.fft.rfftfreq(num_samples, 1.0 / sample_rate)
    spectrum[(freqs < low_hz) | (freqs > high_hz)] = 0.0
    noise = np.fft.irfft(spectrum, n=num_samples)
    return noise / (np.sqrt(np.mean(noise**2)) + 1e-12)


def _sweep(t: np.ndarray, start_hz: float, end_hz: float) -> np.ndarray:
    """Exponential sweep (constant speed on a log-frequency axis, as on the mel above 1 kHz)."""
    duration = t[-1] if t.size > 1 else 1.0
    ratio = end_hz / start_hz
    phase = 2 * np.pi * start_hz * duration / np.log(ratio) * (ratio ** (t / duration) - 1)
    return np.sin(phase)


def _tone_gate(t: np.ndarray, on_s: float, off_s: float, ramp_s: float = 0.005) -> np.ndarray:
    """0/1 on-off pattern with short raised-cosine ramps (hard gates would smear across the mel)."""
    period = on_s + off_s
    position = np.mod(t, period)
    rise = np.clip(position / ramp_s, 0, 1)
    fall = np.clip((on_s - position) / ramp_s, 0, 1)
    gate = np.minimum(rise, fall)
    return 0.5 - 0.5 * np.cos(np.pi * gate)


def _rumble(t, sr, j, rng):
    swell = 1.0 + 0.3 * np.sin(2 * np.pi * 3.0 * j.rate * t + rng.uniform(0, 2 * np.pi))
    return swell * band_noise(t.size, sr, 30.0 * j.pitch, 150.0 * j.pitch, rng)


def _hum(t, sr, j, rng):
    return np.sin(2 * np.pi * 300.0 * j.pitch * t + rng.uniform(0, 2 * np.pi))


def _knock(t, sr, j, rng):
    # Each knock is a gamma-shaped swell and decay (t/tau)^2 exp(-t/tau), tau 12 ms: smooth enough
    # that its spectrum falls off as f^-3 and stays inside the knock band.
    period = 1.0 / (7.0 * j.rate)
    offset = rng.uniform(0.0, 0.03)
    local = np.mod(t - offset, period) / 0.012
    envelope = np.where(t < offset, 0.0, local**2 * np.exp(2.0 - local) / 4.0)
    return envelope * np.sin(2 * np.pi * 540.0 * j.pitch * t)


def _chirp(t, sr, j, rng):
    return _sweep(t, 750.0 * j.pitch, 1250.0 * j.pitch)


def _trill(t, sr, j, rng):
    # Two gated tones cross-fading over 15 ms: a hard frequency switch would splatter energy
    # into the neighbouring bands.
    step = 0.08 / j.rate
    low_gate = _tone_gate(t, step, step, ramp_s=0.015)
    high_gate = _tone_gate(t + step, step, step, ramp_s=0.015)
    return low_gate * np.sin(2 * np.pi * 1700.0 * j.pitch * t) + high_gate * np.sin(2 * np.pi * 2100.0 * j.pitch * t)


def _beep(t, sr, j, rng):
    gate = _tone_gate(t, 0.07 / j.rate, 0.05 / j.rate, ramp_s=0.01)
    return gate * np.sin(2 * np.pi * 2800.0 * j.pitch * t)


def _whistle(t, sr, j, rng):
    return _sweep(t, 5000.0 * j.pitch, 3500.0 * j.pitch)


def _hiss(t, sr, j, rng):
    return band_noise(t.size, sr, 6000.0 * j.pitch, min(7800.0 * j.pitch, sr / 2 - 100), rng)


EVENTS: dict[str, EventSpec] = {
    spec.name: spec
    for spec in (
        EventSpec("rumble", "low-passed noise (30-150 Hz) with a slow swell", (0.0, 150.0), _rumble, gain=0.08),
        EventSpec("hum", "a steady 300 Hz tone", (250.0, 340.0), _hum, gain=0.12),
        EventSpec("knock", "damped 540 Hz pulses, about 7 per second", (480.0, 620.0), _knock, gain=0.3),
        EventSpec("chirp", "a rising sweep from 750 to 1250 Hz", (720.0, 1400.0), _chirp, gain=0.12),
        EventSpec("trill", "a 1700 / 2100 Hz alternation, 80 ms per tone", (1550.0, 2250.0), _trill, gain=0.18),
        EventSpec("beep", "a 2800 Hz tone, 70 ms on and 50 ms off", (2500.0, 3000.0), _beep, gain=0.25),
        EventSpec("whistle", "a falling sweep from 5000 to 3500 Hz", (3300.0, 5300.0), _whistle, gain=0.2),
        EventSpec("hiss", "band noise from 6000 to 7800 Hz", (5600.0, 8000.0), _hiss, gain=0.15),
    )
}

EVENT_NAMES: tuple[str, ...] = tuple(EVENTS)


def get_event(name: str) -> EventSpec:
    try:
        return EVENTS[name]
    except KeyError:
        raise UnknownEventError(f"unknown toy event '{name}' (known: {', '.join(EVENT_NAMES)})") from None


def render_event(name: str, seed: int | np.random.Generator | None = 0, sample_rate: int = 16000) -> np.ndarray:
    """One varied rendering of event `name` (deterministic for a given seed)."""
    return get_event(name).render(seed, sample_rate)
