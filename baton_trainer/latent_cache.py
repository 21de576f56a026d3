"""Training examples ready for the denoiser: latents and caption conditioning, encoded once and
cached on disk, so epochs 2..N skip the VAE and the text encoder.

The cache key holds everything that changes an encoding: the backend's fingerprint (encoders, their
dtypes, the mel front end), the clip length, the captions and the data's fingerprint. Cached
latents made at another precision or from other preprocessing are never reused (kohya-ss 1413 had
NaNs from exactly that: kohya-ss/sd-scripts issue 1413).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .audio import crop_or_pad, load_audio
from .backends.base import TextConditioning, TextToAudioBackend
from .data import lyrics_column

CACHE_FORMAT = 2  # 2: the conditioning stored under the denoiser's own keyword names
TEXT_PREFIX = "text."


@dataclass
class EncodedSet:
    """Training examples: latents and caption conditioning (or raw audio when the cache is off and
    every step encodes), plus the feedback weights."""

    captions: list[str]
    weights: torch.Tensor  # (N,)
    latents: torch.Tensor | None = None  # (N, C, H, W)
    text: TextConditioning | None = None
    waveforms: torch.Tensor | None = None  # (N, samples), only without the cache
    lyrics: list[str] | None = None  # each caption's lyrics, where the dataset has them (data.LYRICS_COLUMN)

    def __len__(self) -> int:
        return len(self.captions)

    def subset(self, rows: list[int]) -> "EncodedSet":
        index = torch.as_tensor(rows, dtype=torch.long)
        pick = lambda t: None if t is None else t[index]  # noqa: E731
        lyrics = None if self.lyrics is None else [self.lyrics[i] for i in rows]
        return EncodedSet([self.captions[i] for i in rows], self.weights[index], pick(self.latents), pick(self.text), pick(self.waveforms), lyrics)


@dataclass
class PairedSet:
    """(preferred, rejected) clips of one caption each, row i of `chosen` against row i of `rejected`."""

    chosen: EncodedSet
    rejected: EncodedSet

    def __len__(self) -> int:
        return len(self.chosen)


class LatentCache:
    """Encodes preference or pretraining datasets with a backend's encoders, through a disk cache.

    Only the main process encodes and writes; the others wait at a barrier and read the file, so
    every collective runs on every rank (a rank-gated collective hangs DDP: TRL issues 1270 and 2090, ddpo-pytorch issue 13)."""

    def __init__(self, backend: TextToAudioBackend, accelerator, folder: str | os.PathLike, duration_s: float, enabled: bool = True):
        self.backend = backend
        self.accelerator = accelerator
        self.folder = Path(folder)
        self.duration_s = float(duration_s)
        self.enabled = enabled

    def read_audio(self, ds, name: str) -> torch.Tensor:
        """(N, samples) waveforms at the backend's rate, cut or zero-padded to the clip length.

        An unreadable clip is named by its row's `origin` (data.ORIGIN_COLUMN: the dataset and the
        row and column it is stored at) where the rows have one, as mixed and shuffled feedback does."""
        sr = self.backend.sample_rate
        samples = int(round(self.duration_s * sr))
        table = ds.with_format("arrow")
        rows = table["audio"].to_pylist()
        where = table["origin"].to_pylist() if "origin" in ds.column_names else [f"{name}: row {i}, column 'audio'" for i in range(len(rows))]
        return torch.stack([torch.from_numpy(crop_or_pad(load_audio(a, sr, what=w)[0], samples)) for a, w in zip(rows, where)])

    def key(self, captions: list[str], ds, lyrics: list[str] | None = None) -> str:
        h = hashlib.sha256()
        h.update(f"{CACHE_FORMAT}:{self.backend.fingerprint()}".encode())
        h.update(json.dumps([self.duration_s, captions] + ([lyrics] if lyrics else [])).encode())
        h.update(str(getattr(ds, "_fingerprint", "")).encode())
        return h.hexdigest()[:20]

    def encode(self, ds, weights: torch.Tensor, name: str) -> EncodedSet:
        """Latents and caption embeddings for `ds`, from the disk cache when they are there."""
        captions, lyrics = list(ds["caption"]), lyrics_column(ds)
        if not captions:
            raise ValueError(f"{name}: 0 rows to train on (the datasets it is drawn from are empty, or nothing of them was selected)")
        if not self.backend.takes_lyrics:
            self.backend.captions_only(lyrics)  # before any clip is read: a model without lyrics says so now
        if not self.enabled:
            return EncodedSet(captions, weights, waveforms=self.read_audio(ds, name), lyrics=lyrics)

        acc = self.accelerator
        path = self.folder / f"{name}-{self.key(captions, ds, lyrics)}.safetensors"
        if acc.is_main_process and not path.is_file():
            waveforms = self.read_audio(ds, name)
            latents, texts = [], []
            for start in tqdm(range(0, len(captions), 16), desc=f"encoding {name}", disable=not acc.is_local_main_process):
                chunk = waveforms[start : start + 16].to(acc.device)
                latents.append(self.backend.encode_audio(chunk).float().cpu())
                chunk_lyrics = lyrics and lyrics[start : start + 16]
                texts.append(self.backend.encode_text(captions[start : start + 16], self.duration_s, lyrics=chunk_lyrics).to("cpu", torch.float32))
            text = TextConditioning.cat(texts)
            tensors = {"latents": torch.cat(latents), **{f"{TEXT_PREFIX}{k}": v for k, v in text.tensors.items()}}
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
            os.replace(tmp, path)  # readers see no file or a whole one
        acc.wait_for_everyone()
        tensors = load_file(str(path))
        text = TextConditioning(**{k.removeprefix(TEXT_PREFIX): v for k, v in tensors.items() if k.startswith(TEXT_PREFIX)})
        return EncodedSet(captions, weights, tensors["latents"], text, lyrics=lyrics)
