"""A toy quality judge: the toy world's stand-in for MOS-Q, from artifacts the clean renderer never makes.

    scores = toy_quality(clips, 16000)                      # (N,) in [1, 5]; 5 = as clean as the renderer's own clips
    scores = toy_quality(clips, 16000, reference=clean)     # against clean renderings of the same captions
    measures = artifact_measures(clips, 16000)              # the four measures behind the score, per clip

The toy renderer (`baton_trainer.toyworld.render`) makes band-limited events with smooth edges over
a white noise floor about 45 dB below them, never clipped. What a generator or a vocoder adds on
top of that is an artifact. Four are measured, each on a level-normalised copy of the clip (DC
removed, unit RMS), so loudness, which the evaluation reports separately, does not move the score:

- `clipped_fraction`: the share of the clip's samples that sit on a flat top at its extreme value
  (hard clipping).
- `transient_rate`: broadband transients (clicks, dropout edges) per second: samples of the
  second-difference signal that stand far out of their 2 ms neighbourhood.
- `noise_floor_db`: the level of the quietest part of every frequency bin (broadband noise),
  relative to the level of the clip's events.
- `frame_buzz`: how strongly the clip's band envelopes repeat at the mel frame rate (100 Hz for
  every 16 kHz model the project trains): the buzz of a vocoder whose phases do not agree from one
  frame to the next (Griffin-Lim run for too few iterations).

Each measure's excess over clean renderings, in units of that measure's scale, adds up to a badness
D >= 0, and the score is `1 + 4 exp(-D)`: 5 when no measure exceeds what clean renderings show, and
about 1.25 at the badness of a clearly broken clip (see CALIBRATION below for the numbers and how
they were obtained). It is no MOS: it ranks artifact energy, and knows nothing of what the clip
depicts or whether it sounds natural.

Pure NumPy/SciPy: it imports nothing from the reward models, CLAP or the training code, so it is an
independent judge of what alignment does to audio quality.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
from scipy import fft, ndimage, signal

MEASURES = ("clipped_fraction", "transient_rate", "noise_floor_db", "frame_buzz")

# Calibration, re-derived by `python benchmarks/quality_judge_calibration.py` (which writes
# benchmarks/results/quality_judge_calibration.json): for each measure, `clean` is its 95th
# percentile over 256 clean renderings (`render_dataset(256, seed=2024)`, the renderer's faithful
# world at 16 kHz), so that 95 % of the renderer's own clips add nothing; `broken` is its median over
# the same clips made clearly broken by one degradation each: hard clipping at 1 % of the peak (40 dB
# of drive), 20 clicks per second at the clip's peak, white noise as loud as the clip (0 dB SNR), and
# Griffin-Lim resynthesis of the clip's log-mel with no iterations (zero phase in every frame). The
# scale puts `broken` at D = ln 16, a score of 1.25.
CALIBRATION: dict[str, dict[str, float]] = {
    "clipped_fraction": {"clean": 0.0, "broken": 0.47},
    "transient_rate": {"clean": 0.0, "broken": 16.41},
    "noise_floor_db": {"clean": -41.221, "broken": -16.82},
    "frame_buzz": {"clean": -3.71, "broken": 13.67},
}
# The same clean renderings' medians: a reference (toy_quality's `reference`) sets a clip's clean
# level at its own caption's median plus the margin CALIBRATION clean - CLEAN_MEDIAN.
CLEAN_MEDIAN: dict[str, float] = {"clipped_fraction": 0.0, "transient_rate": 0.0, "noise_floor_db": -47.101, "frame_buzz": -4.618}
BROKEN_BADNESS = math.log(16.0)  # D at a calibration's broken clips: 1 + 4 exp(-D) = 1.25

FRAME_RATE_HZ = 100.0  # the mel frame rate of TANGO, AudioLDM 2 and the toy models (hop 160 at 16 kHz)
_EPS = 1e-12


class QualityInputError(ValueError):
    """Clips the judge cannot score (wrong shape, sample rate, reference); the message says which."""


def _as_clips(clips: np.ndarray, what: str = "clips") -> np.ndarray:
    array = np.asarray(clips, dtype=np.float64)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2:
        raise QualityInputError(f"{what} must be (N, samples) or (samples,), got shape {array.shape}")
    return array


def normalise_level(clips: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Remove each clip's mean and scale it to unit RMS.

    Returns `(normalised, usable)`: `usable[i]` is False for a clip with a non-finite sample or no
    signal (RMS below 1e-9), whose row is left at zero; the judge scores such clips 1.
    """
    clips = _as_clips(clips)
    finite = np.isfinite(clips).all(axis=1)
    safe = np.where(finite[:, None], clips, 0.0)
    centred = safe - safe.mean(axis=1, keepdims=True)
    rms = np.sqrt(np.mean(centred**2, axis=1))
    usable = finite & (rms > 1e-9)
    return np.where(usable[:, None], centred / np.where(usable, rms, 1.0)[:, None], 0.0), usable


def _power_spectrogram(x: np.ndarray, n_fft: int, hop: int, dtype=np.float64) -> np.ndarray:
    """|STFT|^2 with a periodic Hann window, frames inside the clip only: (N, frames, n_fft // 2 + 1)."""
    frames = np.lib.stride_tricks.sliding_window_view(x.astype(dtype, copy=False), n_fft, axis=1)[:, ::hop]
    return np.abs(np.fft.rfft(frames * signal.get_window("hann", n_fft).astype(dtype), axis=-1)) ** 2


def clipped_fraction(x: np.ndarray, tolerance: float = 1e-3) -> np.ndarray:
    """Share of the clip's samples that sit on a flat top at its highest or lowest value.

        top_n    = x_n >= max(x) - tolerance * (max(x) - min(x)),  bottom_n likewise at min(x)
        at_edge_n = top_n or bottom_n
        clipped_fraction = share of n with at_edge_n and (at_edge_{n-1} or at_edge_{n+1})   (flat runs of 2+)

    About 0 for clean renderings (a genuine extreme is one or a few samples out of tens of
    thousands). Hard clipping at a level L flattens every sample that was beyond L, so the share only
    grows with the drive: about 7 % of the toy clips' samples at 6 dB, 21 % at 14 dB, 34 % at 26 dB,
    47 % at 40 dB, where the noise floor reaches the limit too. Each side is measured on its own, so an offset does not hide it.
    """
    high, low = x.max(axis=1, keepdims=True), x.min(axis=1, keepdims=True)
    span = tolerance * (high - low)
    at_edge = (x >= high - span) | (x <= low + span)
    neighbour = np.zeros_like(at_edge)
    neighbour[:, 1:] |= at_edge[:, :-1]
    neighbour[:, :-1] |= at_edge[:, 1:]
    return (at_edge & neighbour).mean(axis=1)


def transient_rate(x: np.ndarray, sample_rate: int, threshold: float = 8.0, ring_s: float = 0.001, guard: int = 2) -> np.ndarray:
    """Broadband transients (clicks) per second.

        e_n = x_{n+1} - 2 x_n + x_{n-1}                   (second difference: a high-pass that
                                                          leaves tones, hums and rumbles small)
        s_n = sqrt(mean of e_m^2 over guard < |m - n| <= ring_s * sample_rate)
        outlier_n = |e_n| > threshold * s_n
        transient_rate = (runs of outliers, runs closer than 1 ms merged) / duration in seconds

    A click is one sample far above its 1 ms neighbourhood; the renderer's events rise and fall over
    5-15 ms and its floor is Gaussian, so clean renderings have almost none (2 of 256 calibration
    clips showed one transient, 0.4 per second).
    """
    e = np.zeros_like(x)
    e[:, 1:-1] = x[:, 2:] - 2 * x[:, 1:-1] + x[:, :-2]
    half = max(guard + 1, int(round(ring_s * sample_rate)))
    kernel = np.ones(2 * half + 1)
    kernel[half - guard : half + guard + 1] = 0.0
    kernel /= kernel.sum()
    local = np.sqrt(ndimage.convolve1d(e**2, kernel, axis=1, mode="reflect"))
    outliers = np.abs(e) > threshold * local + _EPS
    merge = max(1, int(round(0.001 * sample_rate)))
    counts = np.zeros(len(x))
    for row, hits in enumerate(outliers):
        where = np.flatnonzero(hits)
        counts[row] = 0 if where.size == 0 else 1 + int(np.count_nonzero(np.diff(where) > merge))
    return counts / (x.shape[1] / sample_rate)


def noise_floor_db(x: np.ndarray, sample_rate: int, floor_quantile: float = 0.1, event_quantile: float = 0.95) -> np.ndarray:
    """The noise floor relative to the events, in dB.

        P[f, t] = |STFT|^2 (32 ms Hann frames, 16 ms hop), E_t = sum_f P[f, t]
        floor   = median over f of (the `floor_quantile` quantile over t of P[f, t], the lower order statistic)
        events  = the `event_quantile` quantile over t of E_t, per bin (divided by the bin count)
        noise_floor_db = 10 log10(floor / events)

    Clean renderings sit near -48 dB (a floor of RMS 0.002 under events of RMS 0.1-0.2); added
    broadband noise raises every bin's quietest frames, so the measure rises towards 0 dB as the
    noise reaches the events' level. A clip with nothing above its floor also reads near 0 dB:
    only noise.
    """
    n_fft = int(round(0.032 * sample_rate))
    power = _power_spectrogram(x, n_fft, n_fft // 2)[:, :, 1:]  # (N, frames, bins), DC left out
    frames, bins = power.shape[1], power.shape[2]
    low = int(floor_quantile * (frames - 1))
    floor = np.median(np.partition(power, low, axis=1)[:, low, :], axis=1)
    events = np.quantile(power.sum(axis=2), event_quantile, axis=1) / bins
    return 10 * np.log10((floor + _EPS) / (events + _EPS))


def frame_buzz(x: np.ndarray, sample_rate: int, frame_rate_hz: float = FRAME_RATE_HZ, bands: int = 8) -> np.ndarray:
    """How strongly the band envelopes repeat at the frame rate, in dB: a line in their modulation spectrum.

        P[f, t]   = |STFT|^2 (4 ms Hann frames, 0.5 ms hop), summed into `bands` equal bands -> env_b(t)
        M_b(m)    = |DFT over t of (env_b(t) / mean(env_b) - 1)|^2             (modulation spectrum)
        line_b(h) = max of M_b within 1 bin of h / max of M_b 3-25 Hz either side of h
        frame_buzz = 10 log10(mean over bands b and harmonics h = k * frame_rate_hz < 480 Hz of line_b(h))

    A smooth or comb-like modulation spectrum (noise, tones, the renderer's gated events) reads
    about -5 dB. A vocoder whose frames disagree in phase amplitude-modulates every band at the frame
    rate, a line that grows as Griffin-Lim runs fewer iterations: medians about -2 dB at 32
    iterations, +7 dB at 8, +10 dB at 2, +14 dB at none. The line is compared with the strongest of
    its neighbours, not their median, so a comb of lines (a gated beep's harmonics, 8 Hz apart) does
    not read as a line at the frame rate; and the envelopes are sampled at 2 kHz, because a low tone's
    power ripples at twice its frequency inside a 4 ms frame (a 300 Hz hum at 600 Hz), which a 1 kHz
    envelope would fold onto 400 Hz, a harmonic of the frame rate.
    """
    n_fft = max(8, int(round(0.004 * sample_rate)))
    hop = max(1, n_fft // 8)
    power = _power_spectrogram(x, n_fft, hop, dtype=np.float32)[:, :, 1:]  # (N, frames, bins), float32: ratios only
    per_band = power.shape[2] // bands
    envelopes = power[:, :, : per_band * bands].reshape(len(x), power.shape[1], bands, per_band).sum(axis=3).transpose(0, 2, 1).astype(np.float64)
    envelopes = envelopes / (envelopes.mean(axis=-1, keepdims=True) + _EPS) - 1.0
    length = fft.next_fast_len(envelopes.shape[-1], real=True)  # zero-padded to a fast length
    modulation = np.abs(fft.rfft(envelopes, n=length, axis=-1)) ** 2
    rates = np.fft.rfftfreq(length, hop / sample_rate)
    top = min(480.0, rates[-1] - 30.0)
    harmonics = [h for h in frame_rate_hz * np.arange(1, 6) if h < top]
    if not harmonics:
        raise QualityInputError(f"frame_rate_hz {frame_rate_hz} is above what a {sample_rate} Hz clip's envelopes resolve")
    lines = []
    for h in harmonics:
        centre = int(np.argmin(np.abs(rates - h)))
        distance = np.abs(rates - h)
        neighbours = modulation[..., (distance >= 3.0) & (distance <= 25.0)]
        lines.append(modulation[..., centre - 1 : centre + 2].max(axis=-1) / (neighbours.max(axis=-1) + _EPS))
    return 10 * np.log10(np.mean(lines, axis=(0, 2)))


def artifact_measures(clips: np.ndarray, sample_rate: int, frame_rate_hz: float = FRAME_RATE_HZ, chunk: int = 32) -> dict[str, np.ndarray]:
    """The four artifact measures of each clip (N,), on its level-normalised copy (`normalise_level`).

    Keys as in MEASURES, each higher = worse; definitions in the functions of the same names.
    Unusable clips (non-finite samples, silence) get NaN. Clips are measured `chunk` at a time, so
    memory stays bounded (about 300 MB for 32 clips of 2.56 s) however many clips come.
    """
    if sample_rate < 8000:
        raise QualityInputError(f"sample_rate must be at least 8000 Hz, got {sample_rate}")
    clips = _as_clips(clips)
    if clips.shape[1] < int(0.25 * sample_rate):
        raise QualityInputError(f"clips must be at least 0.25 s long, got {clips.shape[1]} samples at {sample_rate} Hz")
    parts = []
    for start in range(0, len(clips), max(1, chunk)):
        x, usable = normalise_level(clips[start : start + max(1, chunk)])
        measured = {
            "clipped_fraction": clipped_fraction(x),
            "transient_rate": transient_rate(x, sample_rate),
            "noise_floor_db": noise_floor_db(x, sample_rate),
            "frame_buzz": frame_buzz(x, sample_rate, frame_rate_hz),
        }
        parts.append({name: np.where(usable, values, np.nan) for name, values in measured.items()})
    if not parts:
        return {name: np.zeros(0) for name in MEASURES}
    return {name: np.concatenate([part[name] for part in parts]) for name in MEASURES}


def badness(measures: Mapping[str, np.ndarray], baseline: Mapping[str, np.ndarray | float] | None = None) -> np.ndarray:
    """D = sum over measures k of max(0, m_k - clean_k) / scale_k, scale_k = (broken_k - clean_k) / ln 16.

    `clean_k` is CALIBRATION's, or `baseline[k]` (per clip) where given; NaN measures give D = inf.
    """
    total = 0.0
    for name in MEASURES:
        constants = CALIBRATION[name]
        clean = constants["clean"] if baseline is None else np.asarray(baseline[name], dtype=np.float64)
        scale = (constants["broken"] - constants["clean"]) / BROKEN_BADNESS
        excess = np.maximum(np.asarray(measures[name], dtype=np.float64) - clean, 0.0) / scale
        total = total + np.where(np.isnan(excess), np.inf, excess)
    return np.asarray(total, dtype=np.float64)


def score_from_badness(d: np.ndarray) -> np.ndarray:
    """The 1-5 score: 1 + 4 exp(-D). 5 at D = 0 (nothing beyond clean renderings), 1.25 at D = ln 16."""
    return 1.0 + 4.0 * np.exp(-np.asarray(d, dtype=np.float64))


def toy_quality(
    clips: np.ndarray,
    sample_rate: int,
    reference: np.ndarray | None = None,
    frame_rate_hz: float = FRAME_RATE_HZ,
) -> np.ndarray:
    """Quality scores in [1, 5] for clips (N, samples) or one clip (samples,); 5 = as clean as the
    toy renderer's own clips.

        D     = sum over the four measures k of max(0, m_k - clean_k) / scale_k     (`badness`)
        score = 1 + 4 exp(-D)                                                   (`score_from_badness`)

    `reference`, optional: clean renderings of the same captions, (N, samples') or (N, R, samples')
    for R renderings each (for a toy caption with labels L: `render_sequence(L, seed=s)` for a few
    seeds s). Each clip is then measured against its own caption's clean renderings: clean_k is the
    median over that caption's renderings plus the calibration's margin (its clean 95th percentile
    minus its clean median), so artifacts count beyond what the renderer makes of that caption
    rather than of the average caption. Without it, clean_k is CALIBRATION's. `frame_rate_hz` is the
    mel frame rate whose buzz `frame_buzz` looks for (the generator's vocoder hop in Hz).

    Clips with a non-finite sample, or silent ones, score 1. Each clip is normalised to unit RMS
    first, so the score does not depend on its level. Calibrated on 2.56 s clips at 16 kHz; other
    rates and lengths are measured the same way (windows are set in seconds) but not calibrated.
    `artifact_measures` gives the four measures behind the score, for a report.
    """
    clips = _as_clips(clips)
    measures = artifact_measures(clips, sample_rate, frame_rate_hz)
    baseline = None
    if reference is not None:
        baseline = reference_baseline(reference, sample_rate, len(clips), frame_rate_hz)
    d = badness(measures, baseline)
    return np.clip(score_from_badness(d), 1.0, 5.0)


def reference_baseline(reference: np.ndarray, sample_rate: int, n: int, frame_rate_hz: float = FRAME_RATE_HZ) -> dict[str, np.ndarray]:
    """Per-clip clean levels from clean renderings of the same captions: (n, samples) or (n, R, samples)."""
    reference = np.asarray(reference, dtype=np.float64)
    if reference.ndim == 2:
        reference = reference[:, None, :]
    if reference.ndim != 3 or reference.shape[0] != n:
        raise QualityInputError(f"reference must be ({n}, samples) or ({n}, R, samples): one row per clip, got shape {reference.shape}")
    rows, renders, samples = reference.shape
    measured = artifact_measures(reference.reshape(rows * renders, samples), sample_rate, frame_rate_hz)
    baseline = {}
    for name in MEASURES:
        values = measured[name].reshape(rows, renders)
        if np.isnan(values).any():
            raise QualityInputError(f"reference holds a silent or non-finite rendering (row {int(np.argwhere(np.isnan(values))[0, 0])})")
        margin = CALIBRATION[name]["clean"] - CLEAN_MEDIAN[name]
        baseline[name] = np.median(values, axis=1) + margin
    return baseline


# -- degradations the judge is validated on (tests/test_quality_judge.py, the calibration script) ---
# Each takes clips (N, samples) and returns degraded float32 copies. Griffin-Lim resynthesis needs
# the toy vocoder (torch), so the test and the calibration script make it themselves.

# Three levels per degradation type, mildest first: the judge's mean score must fall strictly from
# clean through level 1, 2 and 3 for each type, every step by more than the two sets' standard errors.
VALIDATION_LEVELS: dict[str, list[dict[str, float]]] = {
    "clicks": [{"rate_hz": 2.0, "amplitude": 0.2}, {"rate_hz": 5.0, "amplitude": 0.5}, {"rate_hz": 10.0, "amplitude": 1.0}],
    "noise": [{"snr_db": 20.0}, {"snr_db": 10.0}, {"snr_db": 0.0}],
    "clipping": [{"drive_db": 6.0}, {"drive_db": 14.0}, {"drive_db": 26.0}],
    "griffin_lim": [{"n_iter": 32}, {"n_iter": 8}, {"n_iter": 2}],
    "dropouts": [{"fraction": 0.03}, {"fraction": 0.15}, {"fraction": 0.5}],
}


def add_clicks(clips: np.ndarray, sample_rate: int, rate_hz: float, amplitude: float, seed: int = 0) -> np.ndarray:
    """Single-sample clicks of random sign at Poisson times, `rate_hz` per second, `amplitude` times the clip's peak."""
    rng = np.random.default_rng(seed)
    out = _as_clips(clips).copy()
    for row in out:
        count = rng.poisson(rate_hz * row.size / sample_rate)
        where = rng.integers(0, row.size, count)
        row[where] += amplitude * np.abs(row).max() * rng.choice([-1.0, 1.0], count)
    return out.astype(np.float32)


def add_white_noise(clips: np.ndarray, snr_db: float, seed: int = 0) -> np.ndarray:
    """White Gaussian noise `snr_db` below each clip's RMS."""
    rng = np.random.default_rng(seed)
    clips = _as_clips(clips)
    rms = np.sqrt(np.mean(clips**2, axis=1, keepdims=True))
    return (clips + rng.standard_normal(clips.shape) * rms * 10 ** (-snr_db / 20)).astype(np.float32)


def hard_clip(clips: np.ndarray, drive_db: float) -> np.ndarray:
    """Hard clipping at `drive_db` below each clip's peak (the clip driven `drive_db` into a limit at its old peak, then scaled back)."""
    clips = _as_clips(clips)
    limit = np.abs(clips).max(axis=1, keepdims=True) * 10 ** (-drive_db / 20)
    return np.clip(clips, -limit, limit).astype(np.float32)


def add_dropouts(clips: np.ndarray, sample_rate: int, fraction: float, seed: int = 0, min_s: float = 0.005, max_s: float = 0.02) -> np.ndarray:
    """Zero random gaps of `min_s`-`max_s` seconds until about `fraction` (at most 1) of each clip is silent (packet loss)."""
    rng = np.random.default_rng(seed)
    out = _as_clips(clips).copy()
    for row in out:
        silent, target = 0, min(fraction, 1.0) * np.count_nonzero(row)
        while silent < target:
            length = min(row.size, int(rng.integers(int(min_s * sample_rate), int(max_s * sample_rate) + 1)))
            start = int(rng.integers(0, row.size - length + 1))
            silent += np.count_nonzero(row[start : start + length])
            row[start : start + length] = 0.0
    return out.astype(np.float32)
