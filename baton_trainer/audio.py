"""Audio I/O shared by every stage: read, resample, crop, write.

soundfile reads and writes; soxr resamples. datasets >= 4 decodes audio through torchcodec, which
needs FFmpeg and a torch-matching build, so the project reads audio bytes itself
(`Audio(decode=False)`) and never depends on datasets' decoder.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr

from .atomic import atomic_write_bytes


class AudioError(ValueError):
    """An audio input that cannot be used; the message names the file or row."""


def _describe(source: Any) -> str:
    if isinstance(source, dict):
        return str(source.get("path") or "<bytes>")
    if isinstance(source, (bytes, bytearray)):
        return "<bytes>"
    return str(source)


def load_audio(source: Any, target_sr: int | None = None, what: str | None = None) -> tuple[np.ndarray, int]:
    """Read mono float32 audio from a path, raw bytes, or a datasets `{"bytes", "path"}` dict.

    Returns `(waveform, sample_rate)`; with `target_sr` the waveform is resampled to it. `what`
    names the row or clip in error messages.
    """
    name = what or _describe(source)
    try:
        if isinstance(source, dict):
            data = source.get("bytes")
            source = io.BytesIO(data) if data else source.get("path")
            if source is None:
                raise AudioError(f"{name}: audio entry has neither bytes nor path")
        elif isinstance(source, (bytes, bytearray)):
            source = io.BytesIO(source)
        elif isinstance(source, (str, os.PathLike)) and not Path(source).is_file():
            raise AudioError(f"{name}: audio file not found")
        wav, sr = sf.read(source, dtype="float32", always_2d=True)
    except AudioError:
        raise
    except Exception as exc:  # soundfile raises LibsndfileError, RuntimeError, TypeError...
        raise AudioError(f"{name}: unreadable audio ({exc})") from exc
    wav = wav.mean(axis=1)
    check_waveform(wav, name)
    if target_sr is not None and sr != target_sr:
        wav, sr = resample(wav, sr, target_sr), target_sr
    return wav, sr


def check_waveform(wav: np.ndarray, name: str = "audio") -> np.ndarray:
    """Refuse audio that no model should see: empty, non-finite, or not one-dimensional."""
    wav = np.asarray(wav)
    if wav.ndim != 1:
        raise AudioError(f"{name}: expected a mono waveform of shape (samples,), got shape {tuple(wav.shape)}")
    if wav.size == 0:
        raise AudioError(f"{name}: audio is empty (0 samples)")
    if not np.all(np.isfinite(wav)):
        raise AudioError(f"{name}: audio contains NaN or infinite samples")
    return wav


def resample(wav: np.ndarray, sr: int, target_sr: int) -> np.ndarray:
    """Resample along the last axis (1-D or 2-D batch) with soxr's high-quality filter."""
    if sr == target_sr:
        return np.asarray(wav, dtype=np.float32)
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim == 1:
        return soxr.resample(wav, sr, target_sr, quality="HQ").astype(np.float32)
    return np.stack([soxr.resample(w, sr, target_sr, quality="HQ") for w in wav]).astype(np.float32)


def crop_or_pad(wav: np.ndarray, num_samples: int) -> np.ndarray:
    """Deterministic length fix: keep the first `num_samples`, or pad with zeros at the end.

    CLAP's own `rand_trunc` crops long clips at a random offset, which makes rewards and CLAP
    scores random for TANGO's 10.24 s clips; cropping here first keeps them reproducible.
    """
    wav = np.asarray(wav, dtype=np.float32)
    if wav.shape[-1] >= num_samples:
        return wav[..., :num_samples]
    pad = [(0, 0)] * (wav.ndim - 1) + [(0, num_samples - wav.shape[-1])]
    return np.pad(wav, pad)


def slaney_mel_filters(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """The (n_mels, n_fft // 2 + 1) Slaney mel filter bank librosa builds by default, as TANGO,
    AudioLDM and PANNs use it (librosa itself is not a dependency: transformers builds the same bank)."""
    from transformers.audio_utils import mel_filter_bank  # lazy: only the mel filters need transformers, audio I/O does not

    bank = mel_filter_bank(
        num_frequency_bins=n_fft // 2 + 1,
        num_mel_filters=n_mels,
        min_frequency=fmin,
        max_frequency=fmax,
        sampling_rate=sample_rate,
        norm="slaney",
        mel_scale="slaney",
    )
    return np.ascontiguousarray(bank.T, dtype=np.float32)


def wav_bytes(wav: np.ndarray, sample_rate: int) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, np.asarray(wav, dtype=np.float32), sample_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def save_wav(path: str | os.PathLike, wav: np.ndarray, sample_rate: int) -> None:
    """Write a 16-bit PCM wav atomically (a killed run never leaves a half-written clip)."""
    atomic_write_bytes(path, wav_bytes(np.clip(wav, -1.0, 1.0), sample_rate))


def integrated_loudness(wav: np.ndarray, sample_rate: int, meter: Any = None) -> float:
    """Integrated loudness in LUFS (ITU-R BS.1770-4 through pyloudnorm: K-weighting, 400 ms blocks
    with 75 % overlap, absolute gate -70 LUFS, relative gate -10 LU); -inf for silence. A clip
    shorter than one block is measured repeated to that length."""
    import pyloudnorm  # lazy: only loudness needs it

    meter = meter or pyloudnorm.Meter(sample_rate)
    wav = np.asarray(wav, dtype=np.float64)
    block = int(np.ceil(0.4 * sample_rate)) + 1
    if wav.shape[0] < block:
        wav = np.tile(wav, int(np.ceil(block / max(1, wav.shape[0]))))
    return float(meter.integrated_loudness(wav))
