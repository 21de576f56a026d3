"""Training a reward model's head on human ratings, and the checks of it (the `reward` stage's parts).

CLAP embeddings are computed once and cached on disk (keyed by CLAP fingerprint, data fingerprint
and preprocessing), so the paper's 50 epochs train only the small head. Validation holds out whole
captions. The stage itself is `baton_trainer.stages.reward`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from scipy.stats import rankdata
from tqdm.auto import tqdm

from reward_hub.modeling_baton_reward import BatonRewardModel

from .atomic import atomic_save_figure
from .audio import load_audio
from .clap import CLAP_SAMPLE_RATE, ClapEmbedder
from .data import load_preference_dataset

EMBEDDING_CACHE_VERSION = 1


class RewardDataError(ValueError):
    """Rating data the reward model cannot be trained on or applied to; the message names it."""


# ----------------------------------------------------------------------------------------------
# Rated rows and the split


def load_rated_rows(source: str | os.PathLike):
    """Human-rated rows (feedback 0/1) of a preference dataset; refuses data with one class."""

    ds = load_preference_dataset(str(source))
    keep = [i for i, (fb, src) in enumerate(zip(list(ds["feedback"]), list(ds["source"]))) if fb in (0, 1) and src == "human"]
    if not keep:
        raise RewardDataError(f"{source}: no human-rated rows (feedback 0 or 1, source 'human')")
    ds = ds.select(keep)
    counts = {label: int(sum(1 for fb in list(ds["feedback"]) if fb == label)) for label in (0, 1)}
    if min(counts.values()) == 0:
        only = 1 if counts[1] else 0
        raise RewardDataError(
            f"{source}: all {len(ds)} human ratings are {only} ({'aligned' if only else 'not aligned'}); "
            "a reward model needs both aligned (1) and not-aligned (0) examples"
        )
    return ds


def split_by_caption(captions: list[str], fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, validation) with no caption on both sides."""
    unique = sorted(set(captions))
    if not 0.0 <= fraction < 1.0:
        raise RewardDataError(f"validation_fraction must be in [0, 1), got {fraction}")
    n_val = int(round(fraction * len(unique)))
    if fraction > 0 and len(unique) >= 2:
        n_val = min(max(n_val, 1), len(unique) - 1)
    order = np.random.default_rng(seed).permutation(len(unique))
    held = {unique[i] for i in order[:n_val]}
    rows = np.arange(len(captions))
    is_val = np.array([c in held for c in captions], dtype=bool)
    return rows[~is_val], rows[is_val]


# ----------------------------------------------------------------------------------------------
# Embeddings and their cache


def _rows_fingerprint(ds) -> str:
    digest = hashlib.sha256()
    digest.update(str(getattr(ds, "_fingerprint", "")).encode())
    digest.update(json.dumps(list(ds["caption"])).encode())
    # Audio identity without decoding: path and byte length plus a hash of the first bytes.
    for audio in ds.with_format("arrow")["audio"].to_pylist():
        data = audio.get("bytes") or b""
        digest.update(f"{audio.get('path')}|{len(data)}|".encode())
        digest.update(hashlib.sha256(data[:65536]).digest() if data else b"")
        if not data and audio.get("path") and Path(audio["path"]).is_file():
            stat = Path(audio["path"]).stat()
            digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def embedding_cache_key(embedder: ClapEmbedder, ds) -> str:
    parts = [f"v{EMBEDDING_CACHE_VERSION}", embedder.fingerprint(), _rows_fingerprint(ds), "float32"]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


def _read_clip(audio: dict, row: int) -> np.ndarray:
    # Resampling to 48 kHz here is the same soxr call ClapEmbedder would make.
    wav, _ = load_audio(audio, target_sr=CLAP_SAMPLE_RATE, what=f"row {row} ({audio.get('path') or 'bytes'})")
    return wav


def embed_rows(embedder: ClapEmbedder, ds, rows: np.ndarray | list[int] | None = None, progress: bool = True):
    """(audio (N, D), text (N, D)) CLAP embeddings for the given rows (all rows by default)."""
    rows = np.arange(len(ds)) if rows is None else np.asarray(rows)
    return embed_audio_rows(embedder, ds, rows, progress), embed_text_rows(embedder, ds, rows)


def embed_text_rows(embedder: ClapEmbedder, ds, rows) -> torch.Tensor:
    """Each row's caption embedding (N, D); every distinct caption is embedded once."""
    captions = list(ds["caption"])
    unique = sorted({captions[i] for i in rows})
    table = dict(zip(unique, embedder.embed_text(unique))) if unique else {}
    return torch.stack([table[captions[i]] for i in rows]) if len(rows) else torch.zeros(0, embedder.dim)


def embed_audio_rows(embedder: ClapEmbedder, ds, rows, progress: bool = True) -> torch.Tensor:
    """The rows' clip embeddings (N, D), `embedder.batch_size` consecutive rows per forward."""
    rows = np.asarray(rows)
    audio_column = ds.with_format("arrow")["audio"].to_pylist()
    chunks = []
    step = embedder.batch_size
    for start in tqdm(range(0, len(rows), step), desc="CLAP audio", disable=not progress, leave=False):
        batch = rows[start : start + step]
        chunks.append(embedder.embed_audio([_read_clip(audio_column[i], int(i)) for i in batch], CLAP_SAMPLE_RATE))
    return torch.cat(chunks) if chunks else torch.zeros(0, embedder.dim)


def cached_embeddings(embedder: ClapEmbedder, ds, cache_dir: Path, ranks=None) -> tuple[torch.Tensor, torch.Tensor, Path, bool] | None:
    """Embeddings of every row, read from `cache_dir/<key>.safetensors` or computed and written there.

    Under several processes (`ranks`, a `runtime.Ranks`) each embeds the clips of its whole batches
    (so every clip sits in the batch it has in one process, and its embedding is the same bytes)
    and hands them to the main process in a file; the main process joins them, embeds the captions
    and writes the cache. The other processes get None."""

    path = Path(cache_dir) / f"{embedding_cache_key(embedder, ds)}.safetensors"
    if path.is_file():
        tensors = load_file(str(path))
        if tensors["audio"].shape[0] == len(ds):
            return tensors["audio"], tensors["text"], path, True
    path.parent.mkdir(parents=True, exist_ok=True)
    shared = ranks is not None and ranks.count > 1
    markers, part = path.with_name(f".{path.stem}.ranks"), lambda i: path.with_name(f".{path.stem}.rank{i}.safetensors")
    if not shared:
        audio, text = embed_rows(embedder, ds)
    else:
        if ranks.is_main:
            ranks.clear(markers)
        ranks.barrier()  # no rank reports to the finish line of an earlier, killed run
        rows = [r for batch in ranks.shard_batches(list(range(len(ds))), embedder.batch_size) for r in batch]
        mine = {"rows": torch.tensor(rows, dtype=torch.long), "audio": embed_audio_rows(embedder, ds, rows, progress=ranks.is_main).contiguous()}
        tmp = part(ranks.index).with_suffix(f".{os.getpid()}.tmp")
        save_file(mine, str(tmp))
        os.replace(tmp, part(ranks.index))
        ranks.finish(markers, len(rows), len(rows), f"reward-model embeddings {path}")
        if not ranks.is_main:
            return None
        audio = torch.zeros(len(ds), embedder.dim)
        for i in range(ranks.count):
            shard = load_file(str(part(i)))
            audio[shard["rows"]] = shard["audio"]
        text = embed_text_rows(embedder, ds, np.arange(len(ds)))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({"audio": audio.contiguous(), "text": text.contiguous()}, str(tmp), metadata={"clap": embedder.name_or_path})
    os.replace(tmp, path)
    if shared:
        for i in range(ranks.count):
            part(i).unlink(missing_ok=True)
        ranks.clear(markers)
    return audio, text, path, False


# ----------------------------------------------------------------------------------------------
# Metrics


def classification_metrics(rewards: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    rewards = np.asarray(rewards, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    if rewards.size == 0:
        return {"count": 0, "accuracy": None, "auc": None, "bce": None, "positives": 0}
    clipped = np.clip(rewards, 1e-7, 1 - 1e-7)
    bce = float(-np.mean(labels * np.log(clipped) + (1 - labels) * np.log(1 - clipped)))
    auc = None
    if 0 < labels.sum() < labels.size:
        # Mann-Whitney form of ROC AUC; tied rewards share their mean rank (count half).
        ranks = rankdata(rewards)
        pos = labels == 1
        n_pos, n_neg = int(pos.sum()), int((~pos).sum())
        auc = float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return {
        "count": int(labels.size),
        "positives": int(labels.sum()),
        "accuracy": float(np.mean((rewards >= 0.5) == (labels == 1))),
        "auc": auc,
        "bce": bce,
    }


def metrics_by_task(rewards: np.ndarray, labels: np.ndarray, tasks: list[str]) -> dict[str, Any]:
    out = {"overall": classification_metrics(rewards, labels)}
    tasks_arr = np.asarray(tasks)
    for task in sorted(set(tasks)):
        mask = tasks_arr == task
        out[task] = classification_metrics(rewards[mask], labels[mask])
    return out


def plot_reward_histogram(rewards: np.ndarray, labels: np.ndarray, path: Path, title: str, judge: str = "human") -> None:
    """Predicted rewards on held-out clips split by the `judge`'s label (the paper's Figure 4)."""
    from matplotlib.figure import Figure  # lazy: matplotlib is slow to import and picks a backend

    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    bins = np.linspace(0, 1, 21)
    for value, name, color in ((1, f"{judge}: aligned (1)", "tab:green"), (0, f"{judge}: not aligned (0)", "tab:red")):
        ax.hist(rewards[labels == value], bins=bins, alpha=0.6, label=name, color=color)
    ax.set_xlabel("predicted reward")
    ax.set_ylabel("clips")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=120)


# ----------------------------------------------------------------------------------------------
# Fitting the head


def fit_head(
    model: BatonRewardModel,
    embed_batch: Callable[[np.ndarray], tuple[torch.Tensor, torch.Tensor]],
    labels: torch.Tensor,
    train_rows: np.ndarray,
    device: torch.device,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    weight_decay: float,
    seed: int,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Train the head with BCE (Adam; the reward stage's settings); `embed_batch(rows)` gives the
    CLAP embeddings of those rows (from the cache, or encoded afresh every epoch). Returns
    per-epoch mean losses."""
    if model.config.head_type == "cosine_logistic":
        audio, text = embed_batch(train_rows)
        return fit_cosine_logistic(model, audio.to(device), text.to(device), labels[train_rows].to(device), weight_decay)
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.head.parameters(), lr=learning_rate, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    history = []
    model.train()
    for epoch in tqdm(range(epochs), desc="reward head", disable=not progress):
        order = train_rows[torch.randperm(len(train_rows), generator=generator).numpy()]
        total, seen = 0.0, 0
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            audio, text = embed_batch(rows)
            logits = model.logits_from_embeddings(audio.to(device), text.to(device))
            loss = F.binary_cross_entropy_with_logits(logits, labels[rows].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(rows)
            seen += len(rows)
        history.append({"epoch": epoch + 1, "train_bce": total / max(seen, 1)})
    model.eval()
    return history


def fit_cosine_logistic(model: BatonRewardModel, audio: torch.Tensor, text: torch.Tensor, target: torch.Tensor, weight_decay: float) -> list[dict[str, float]]:
    """The two-parameter head fit to its optimum on the training rows' embeddings by full-batch
    L-BFGS (BCE plus the same L2 weight decay): a convex problem with one answer, so epochs,
    batches and learning rate do not apply. Returns the loss before and after, in fit_head's format."""
    params = list(model.head.parameters())
    optimizer = torch.optim.LBFGS(params, lr=1.0, max_iter=200, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def bce() -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(model.logits_from_embeddings(audio, text), target)

    def objective():
        optimizer.zero_grad(set_to_none=True)
        loss = bce() + 0.5 * weight_decay * sum((p**2).sum() for p in params)
        loss.backward()
        return loss

    model.train()
    with torch.no_grad():
        before = bce().item()
    optimizer.step(objective)
    model.eval()
    with torch.no_grad():
        after = bce().item()
    return [{"epoch": 0, "train_bce": before}, {"epoch": 1, "train_bce": after}]
