"""Spectrograms as people see them in this project (the annotation app, the Space, the report):
a 64-band log-mel in dB at 100 frames per second, drawn with time and frequency axes."""

from __future__ import annotations

import numpy as np
from transformers.audio_utils import hertz_to_mel, mel_to_hertz, power_to_db

from reward_hub.modeling_baton_reward import mel_power_spectrogram

from .audio import slaney_mel_filters

N_MELS = 64
FRAMES_PER_SECOND = 100


def log_mel_db(waveform: np.ndarray, sample_rate: int) -> np.ndarray:
    """A (64, frames) log-mel image in dB (80 dB range) of a mono clip; very short clips are zero-padded."""

    wav = np.asarray(waveform, dtype=np.float64)
    n_fft = 1024 if sample_rate >= 16_000 else 512
    if wav.size < n_fft:
        wav = np.pad(wav, (0, n_fft - wav.size))
    bank = slaney_mel_filters(sample_rate, n_fft, N_MELS, 0.0, sample_rate / 2).T.astype(np.float64)
    mel = mel_power_spectrogram(wav, bank, n_fft, max(1, sample_rate // FRAMES_PER_SECOND))
    return power_to_db(mel, 1.0, 1e-10, 80.0)


def draw_spectrogram(
    ax,
    waveform: np.ndarray | None,
    sample_rate: int,
    image: np.ndarray | None = None,
    labels: bool = True,
    vmin: float | None = None,
    vmax: float | None = None,
):
    """Draw a clip's log-mel (or a given (bands, frames) image) on matplotlib axes, with a time axis
    in seconds and a frequency axis in kHz at the mel bands' centres; `vmin`/`vmax` (dB) put several
    clips on one colour scale. Returns the image artist (for a colour bar)."""
    if image is None:
        image = log_mel_db(waveform, sample_rate)
    seconds = image.shape[1] / FRAMES_PER_SECOND if waveform is not None else image.shape[1]
    artist = ax.imshow(image, origin="lower", aspect="auto", cmap="magma", extent=(0.0, seconds, 0, image.shape[0]), vmin=vmin, vmax=vmax)
    if waveform is not None and image.shape[0] == N_MELS:
        bands = np.linspace(0, N_MELS - 1, 5).round().astype(int)
        centres = mel_band_centres_hz(sample_rate)
        ax.set_yticks(bands + 0.5, [f"{centres[b] / 1000:.1f}" for b in bands])
    if labels:
        ax.set_xlabel("time (s)" if waveform is not None else "frame")
        ax.set_ylabel("frequency (kHz)" if waveform is not None else "band")
    return artist


def mel_band_centres_hz(sample_rate: int) -> np.ndarray:
    """Centre frequencies of `log_mel_db`'s 64 Slaney mel bands (0 Hz to Nyquist)."""
    edges = mel_to_hertz(np.linspace(hertz_to_mel(0.0, "slaney"), hertz_to_mel(sample_rate / 2, "slaney"), N_MELS + 2), "slaney")
    return np.asarray(edges[1:-1], dtype=np.float64)


def spectrogram_image(waveform: np.ndarray, sample_rate: int, title: str = "") -> np.ndarray:
    """A clip's spectrogram drawn with matplotlib, as an RGB uint8 array (for Gradio images)."""
    # lazy: matplotlib is slow to import and picks a backend
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # Figure + Agg canvas, not pyplot: pyplot's global state is not safe in Gradio's worker threads.
    figure = Figure(figsize=(8, 2.6), dpi=80)
    canvas = FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    draw_spectrogram(axes, np.asarray(waveform, dtype=np.float32), sample_rate)
    if title:
        axes.set_title(title, fontsize=9)
    figure.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
