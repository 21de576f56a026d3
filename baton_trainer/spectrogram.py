"""Spectrograms as people see them in this project (the annotation app, the Space, the report):
a 64-band log-mel in dB at 100 frames per second, drawn with time and frequency axes."""

from __future__ import annotations

import numpy as np
from transformers.audio_utils import spectrogram, window_function

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
    return spectrogram(
        wav, window_function(n_fft, "hann"), frame_length=n_fft, hop_length=max(1, sample_rate // FRAMES_PER_SECOND),
        power=2.0, mel_filters=bank, log_mel="dB", db_range=80.0,
    )  # fmt: skip


def draw_spectrogram(ax, waveform: np.ndarray | None, sample_rate: int, image: np.ndarray | None = None, labels: bool = True) -> None:
    """Draw a clip's log-mel (or a given (bands, frames) image) on matplotlib axes, with a time
    axis in seconds and the mel bands' frequency range."""
    if image is None:
        image = log_mel_db(waveform, sample_rate)
    seconds = image.shape[1] / FRAMES_PER_SECOND if waveform is not None else image.shape[1]
    ax.imshow(image, origin="lower", aspect="auto", cmap="magma", extent=(0.0, seconds, 0, image.shape[0]))
    if labels:
        ax.set_xlabel("time (s)" if waveform is not None else "frame")
        ax.set_ylabel(f"mel band (0-{sample_rate / 2000:g} kHz)" if waveform is not None else "band")


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
