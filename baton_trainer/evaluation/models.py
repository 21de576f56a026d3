"""Audio classifiers and embedders behind FD, KL, IS (PANNs Cnn14, 16 kHz) and FAD (VGGish).

Why the model definitions live here: the PyPI packages that carry them do not fit this stack.
`panns-inference` 0.1.1 imports librosa and runs `wget` for a label CSV at import time;
`torchvggish` 0.2 on PyPI imports modules its own sdist does not contain and needs `resampy`.
audioldm_eval (whose numbers AudioLDM, TANGO and BATON report) downloads both at run time. So the
architectures are written here from their published descriptions (Kong et al. 2020, PANNs
Cnn14; Hershey et al. 2017, VGGish) with parameter names that match the published checkpoints,
which load with `torch.load(weights_only=True)` and strict key checking.

Checkpoints (the user downloads them once and points the evaluate stage at them):

- PANNs Cnn14 16 kHz: `Cnn14_16k_mAP=0.438.pth`, Zenodo record 3987831 (`PANNS_CNN14_16K_URL`).
- VGGish, the PyTorch port of the TensorFlow AudioSet model: `vggish-10086976.pth` from the
  `harritaylor/torchvggish` GitHub release v0.1 (`VGGISH_URL`), as `audioldm_eval` loads it.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers.audio_utils import mel_filter_bank

from ..audio import check_waveform, resample, slaney_mel_filters
from ..runtime import pick_device
from ..weight_files import load_state_dict_file, load_state_strict

PANNS_CNN14_16K_FILE = "Cnn14_16k_mAP=0.438.pth"
PANNS_CNN14_16K_URL = "https://zenodo.org/record/3987831/files/Cnn14_16k_mAP%3D0.438.pth"
PANNS_SED_FILE = "Cnn14_DecisionLevelMax_mAP=0.385.pth"
PANNS_SED_URL = "https://zenodo.org/record/3987831/files/Cnn14_DecisionLevelMax_mAP%3D0.385.pth"
VGGISH_FILE = "vggish-10086976.pth"
VGGISH_URL = "https://github.com/harritaylor/torchvggish/releases/download/v0.1/vggish-10086976.pth"


class MissingCheckpointError(FileNotFoundError):
    """A metric's model checkpoint is not where the config says; the message says where to get it."""


def load_metric_model(cls, path: str | os.PathLike | None, config: Any, device: Any, filename: str, url: str, metrics: str, what: str):
    """`cls(config)` with the weights of its published checkpoint (a file, or a folder holding
    `filename`), frozen, in eval mode, on `device`; a missing file says where to download it."""
    if path is None or str(path) == "":
        raise MissingCheckpointError(f"{metrics} need(s) the {what} checkpoint {filename}; none was given. Download it from {url} and pass its path")
    path = Path(path)
    if path.is_dir():
        path = path / filename
    if not path.is_file():
        raise MissingCheckpointError(f"{metrics} need(s) the {what} checkpoint {filename}, not found at {path}; download it from {url}")
    model = cls(config)
    name = what.split(" (")[0]
    load_state_strict(model, load_state_dict_file(path, name), f"{path} (not a {name} checkpoint)")
    return model.to(pick_device(device)).eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------------
# PANNs Cnn14
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Cnn14Config:
    """Front end and widths of PANNs Cnn14; the defaults are the 16 kHz model `audioldm_eval` uses."""

    sample_rate: int = 16_000
    window_size: int = 512
    hop_size: int = 160
    mel_bins: int = 64
    fmin: float = 50.0
    fmax: float = 8_000.0
    classes_num: int = 527
    channels: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048)
    min_samples: int = 32_000  # audioldm_eval zero-pads clips shorter than 2 s


class _StftConv(nn.Module):
    """STFT as two strided 1-d convolutions with window-weighted DFT kernels (the published
    checkpoints store these kernels as `conv_real`/`conv_imag`, so the layout is kept)."""

    def __init__(self, n_fft: int, hop: int):
        super().__init__()
        bins = n_fft // 2 + 1
        self.conv_real = nn.Conv1d(1, bins, n_fft, stride=hop, bias=False)
        self.conv_imag = nn.Conv1d(1, bins, n_fft, stride=hop, bias=False)
        n = np.arange(n_fft)
        window = 0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft)  # periodic Hann
        angle = -2 * np.pi * np.outer(np.arange(bins), n) / n_fft
        with torch.no_grad():
            self.conv_real.weight.copy_(torch.from_numpy(np.cos(angle) * window)[:, None, :])
            self.conv_imag.weight.copy_(torch.from_numpy(np.sin(angle) * window)[:, None, :])


class _Spectrogram(nn.Module):
    def __init__(self, n_fft: int, hop: int):
        super().__init__()
        self.n_fft = n_fft
        self.stft = _StftConv(n_fft, hop)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        x = F.pad(waveform[:, None, :], (self.n_fft // 2, self.n_fft // 2), mode="reflect")  # centred frames
        real, imag = self.stft.conv_real(x), self.stft.conv_imag(x)
        return (real**2 + imag**2).transpose(1, 2)[:, None]  # (B, 1, frames, bins) power


class _LogMel(nn.Module):
    def __init__(self, config: Cnn14Config):
        super().__init__()
        # Slaney-style mel bank as librosa builds it (PANNs used librosa.filters.mel).
        bank = slaney_mel_filters(config.sample_rate, config.window_size, config.mel_bins, config.fmin, config.fmax).T
        self.melW = nn.Parameter(torch.from_numpy(np.ascontiguousarray(bank)), requires_grad=False)

    def forward(self, power: torch.Tensor) -> torch.Tensor:
        return 10.0 * torch.log10(torch.clamp(power @ self.melW, min=1e-10))  # ref 1.0, no top_db


class _ConvBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor, pool: int) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return F.avg_pool2d(x, pool) if pool > 1 else x


class PannsCnn14(nn.Module):
    """PANNs Cnn14 audio tagger: waveform -> 2048-d embedding and 527 AudioSet logits.

    Inference only (no SpecAugment, mixup or dropout). `embedding` is relu(fc1(.)) and `logits`
    the pre-sigmoid AudioSet scores: the "2048" and "logits" features of `audioldm_eval`.
    """

    def __init__(self, config: Cnn14Config | None = None):
        super().__init__()
        self.config = config = config or Cnn14Config()
        self.spectrogram_extractor = _Spectrogram(config.window_size, config.hop_size)
        self.logmel_extractor = _LogMel(config)
        self.bn0 = nn.BatchNorm2d(config.mel_bins)
        widths = (1,) + tuple(config.channels)
        for i in range(len(config.channels)):
            self.add_module(f"conv_block{i + 1}", _ConvBlock(widths[i], widths[i + 1]))
        width = config.channels[-1]
        self.fc1 = nn.Linear(width, width)
        self.fc_audioset = nn.Linear(width, config.classes_num)
        self.eval()

    @property
    def embedding_dim(self) -> int:
        return self.config.channels[-1]

    def trunk(self, waveform: torch.Tensor) -> torch.Tensor:
        """(B, samples) -> (B, channels, segments): the conv blocks' output averaged over frequency,
        one segment per 2^(blocks - 1) log-mel frames."""
        x = self.logmel_extractor(self.spectrogram_extractor(waveform))  # (B, 1, frames, mels)
        x = self.bn0(x.transpose(1, 3)).transpose(1, 3)  # batch norm per mel bin
        blocks = len(self.config.channels)
        for i in range(blocks):
            x = getattr(self, f"conv_block{i + 1}")(x, pool=2 if i < blocks - 1 else 1)
        return x.mean(dim=3)  # over frequency

    def forward(self, waveform: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.trunk(waveform)
        x = x.max(dim=2).values + x.mean(dim=2)  # over time
        embedding = F.relu(self.fc1(x))
        return {"embedding": embedding, "logits": self.fc_audioset(embedding)}

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike | None, config: Cnn14Config | None = None, device: str | torch.device | None = None) -> "PannsCnn14":
        """Load `Cnn14_16k_mAP=0.438.pth` (a file, or a folder holding it)."""
        return load_metric_model(cls, path, config, device, PANNS_CNN14_16K_FILE, PANNS_CNN14_16K_URL, "FD, KL and IS", "PANNs Cnn14 (16 kHz)")

    def prepare(self, waveform: np.ndarray, sample_rate: int, name: str = "audio") -> np.ndarray:
        """As audioldm_eval reads a clip: remove the mean, resample, zero-pad to at least 2 s."""
        wav = check_waveform(np.asarray(waveform, dtype=np.float32), name)
        wav = resample(wav - wav.mean(), int(sample_rate), self.config.sample_rate)
        if wav.shape[0] < self.config.min_samples:
            wav = np.pad(wav, (0, self.config.min_samples - wav.shape[0]))
        return wav.astype(np.float32)

    def _batches(self, waveforms: Sequence[np.ndarray], sample_rate: int, batch_size: int):
        """(clip indices, forward outputs) for the prepared clips, batched among clips of equal length."""
        clips = [self.prepare(w, sample_rate, name=f"audio {i}") for i, w in enumerate(waveforms)]
        device = next(self.parameters()).device
        by_length: dict[int, list[int]] = {}
        for i, clip in enumerate(clips):
            by_length.setdefault(clip.shape[0], []).append(i)
        for indices in by_length.values():
            for start in range(0, len(indices), batch_size):
                rows = indices[start : start + batch_size]
                yield rows, self(torch.from_numpy(np.stack([clips[i] for i in rows])).to(device))

    @torch.no_grad()
    def embed(self, waveforms: Sequence[np.ndarray], sample_rate: int, batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings (N, 2048), logits (N, 527)) float32 for mono clips at `sample_rate`.

        Clips of equal length are batched; global pooling makes the result independent of it.
        """
        embeddings = np.zeros((len(waveforms), self.embedding_dim), dtype=np.float32)
        logits = np.zeros((len(waveforms), self.config.classes_num), dtype=np.float32)
        for rows, out in self._batches(waveforms, sample_rate, batch_size):
            embeddings[rows] = out["embedding"].float().cpu().numpy()
            logits[rows] = out["logits"].float().cpu().numpy()
        return embeddings, logits


PANNS_SED_CONFIG = Cnn14Config(sample_rate=32_000, window_size=1024, hop_size=320, fmax=14_000.0, min_samples=32_000)


class PannsCnn14Sed(PannsCnn14):
    """PANNs `Cnn14_DecisionLevelMax`, the sound event detection model (Kong et al. 2020): Cnn14's
    layers and parameter names at 32 kHz (window 1024, hop 320, 64 mels 50-14000 Hz), read out per
    segment instead of per clip:

        x = trunk(wav)                                   (B, 2048, segments), 1 segment = 32 frames = 0.32 s
        x = max_pool1d(x, 3, 1, 1) + avg_pool1d(x, 3, 1, 1)
        p = sigmoid(fc_audioset(relu(fc1(x^T))))          (B, segments, 527) segment-wise probabilities
        clipwise = max over segments of p

    The published model repeats each segment's row 32 times to give 10 ms "frames"; that adds no
    resolution, so the segments are returned as they are (`segment_seconds`).
    """

    def __init__(self, config: Cnn14Config | None = None):
        super().__init__(config or PANNS_SED_CONFIG)

    @property
    def segment_seconds(self) -> float:
        return self.config.hop_size * 2 ** (len(self.config.channels) - 1) / self.config.sample_rate

    def forward(self, waveform: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.trunk(waveform)
        x = F.max_pool1d(x, 3, stride=1, padding=1) + F.avg_pool1d(x, 3, stride=1, padding=1)
        segments = torch.sigmoid(self.fc_audioset(F.relu(self.fc1(x.transpose(1, 2)))))
        return {"segmentwise": segments, "clipwise": segments.max(dim=1).values}

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike | None, config: Cnn14Config | None = None, device: str | torch.device | None = None) -> "PannsCnn14Sed":
        """Load `Cnn14_DecisionLevelMax_mAP=0.385.pth` (a file, or a folder holding it)."""
        return load_metric_model(cls, path, config, device, PANNS_SED_FILE, PANNS_SED_URL, "Event scores", "PANNs Cnn14_DecisionLevelMax (32 kHz)")

    @torch.no_grad()
    def segment_probabilities(self, waveforms: Sequence[np.ndarray], sample_rate: int, batch_size: int = 8) -> list[np.ndarray]:
        """Per clip, (segments, 527) float32 AudioSet probabilities, one row per `segment_seconds`."""
        out: list[np.ndarray | None] = [None] * len(waveforms)
        for rows, result in self._batches(waveforms, sample_rate, batch_size):
            for i, probs in zip(rows, result["segmentwise"].float().cpu().numpy()):
                out[i] = probs
        return out  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# VGGish
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class VGGishConfig:
    """VGGish front end (16 kHz, 25 ms windows, 10 ms hop, 64 HTK mel bands 125-7500 Hz, log
    offset 0.01, 0.96 s examples without overlap) and widths; defaults are the published model."""

    sample_rate: int = 16_000
    window_samples: int = 400
    hop_samples: int = 160
    mel_bins: int = 64
    fmin: float = 125.0
    fmax: float = 7_500.0
    log_offset: float = 0.01
    example_frames: int = 96
    channels: tuple[int, int, int, int] = (64, 128, 256, 512)
    hidden: int = 4096
    embedding_dim: int = 128


class VGGish(nn.Module):
    """VGGish: 0.96 s log-mel examples -> 128-d embeddings, one per example (frame).

    The output is the last linear layer *before* its ReLU and without the PCA/quantisation
    post-processing: `audioldm_eval`'s FAD configuration (`use_pca=False, use_activation=False`).
    """

    def __init__(self, config: VGGishConfig | None = None):
        super().__init__()
        self.config = config = config or VGGishConfig()
        c1, c2, c3, c4 = config.channels
        # Module indices match the published state dict: features.{0,3,6,8,11,13}, embeddings.{0,2,4}.
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(), nn.Conv2d(c3, c3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Conv2d(c3, c4, 3, padding=1), nn.ReLU(), nn.Conv2d(c4, c4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2),
        )  # fmt: skip
        flat = c4 * (config.example_frames // 16) * (config.mel_bins // 16)
        self.embeddings = nn.Sequential(
            nn.Linear(flat, config.hidden), nn.ReLU(),
            nn.Linear(config.hidden, config.hidden), nn.ReLU(),
            nn.Linear(config.hidden, config.embedding_dim),
        )  # fmt: skip
        self.fft_length = 1 << int(np.ceil(np.log2(config.window_samples)))
        bank = mel_filter_bank(
            num_frequency_bins=self.fft_length // 2 + 1,
            num_mel_filters=config.mel_bins,
            min_frequency=config.fmin,
            max_frequency=config.fmax,
            sampling_rate=config.sample_rate,
            norm=None,
            mel_scale="htk",
            triangularize_in_mel_space=True,
        )
        bank[0, :] = 0.0  # VGGish drops the DC bin
        self.register_buffer("mel_bank", torch.from_numpy(bank), persistent=False)
        self.eval()

    def forward(self, examples: torch.Tensor) -> torch.Tensor:
        """(N, 1, 96, 64) log-mel examples -> (N, 128)."""
        x = self.features(examples)
        # Flatten in (time, frequency, channel) order, as the TensorFlow original.
        return self.embeddings(x.permute(0, 2, 3, 1).reshape(x.shape[0], -1))

    def log_mel_examples(self, waveform: np.ndarray) -> np.ndarray:
        """(examples, 96, 64) float32 log-mel patches of a 16 kHz mono waveform (no padding:
        a clip shorter than one 0.96 s example gives none)."""
        cfg = self.config
        wav = np.asarray(waveform, dtype=np.float64)
        frames_count = 1 + (wav.shape[0] - cfg.window_samples) // cfg.hop_samples
        if frames_count < cfg.example_frames:
            return np.zeros((0, cfg.example_frames, cfg.mel_bins), dtype=np.float32)
        index = np.arange(cfg.window_samples)[None, :] + cfg.hop_samples * np.arange(frames_count)[:, None]
        window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(cfg.window_samples) / cfg.window_samples)  # periodic Hann
        magnitude = np.abs(np.fft.rfft(wav[index] * window, self.fft_length))
        log_mel = np.log(magnitude @ self.mel_bank.cpu().numpy() + cfg.log_offset)
        count = frames_count // cfg.example_frames
        return log_mel[: count * cfg.example_frames].reshape(count, cfg.example_frames, cfg.mel_bins).astype(np.float32)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike | None, config: VGGishConfig | None = None, device: str | torch.device | None = None) -> "VGGish":
        """Load `vggish-10086976.pth` (a file, or a folder holding it)."""
        return load_metric_model(cls, path, config, device, VGGISH_FILE, VGGISH_URL, "FAD", "VGGish (PyTorch port)")

    @torch.no_grad()
    def embed(self, waveforms: Sequence[np.ndarray], sample_rate: int, batch_size: int = 64) -> list[np.ndarray]:
        """Per clip, a (frames, 128) float32 array of embeddings of its 0.96 s examples."""
        device = next(self.parameters()).device
        out = []
        for i, waveform in enumerate(waveforms):
            wav = check_waveform(np.asarray(waveform, dtype=np.float32), f"audio {i}")
            examples = self.log_mel_examples(resample(wav, int(sample_rate), self.config.sample_rate))
            chunks = [np.zeros((0, self.config.embedding_dim), dtype=np.float32)]
            for start in range(0, examples.shape[0], batch_size):
                batch = torch.from_numpy(examples[start : start + batch_size])[:, None].to(device)
                chunks.append(self(batch).float().cpu().numpy())
            out.append(np.concatenate(chunks))
        return out
