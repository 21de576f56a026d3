"""The `reward` and `label` stages.

`train_reward_model`: human-rated clips (RUN/feedback/) -> RUN/reward_model/. CLAP embeddings are
computed once and cached on disk (keyed by CLAP fingerprint, data fingerprint and preprocessing),
so the 50 paper epochs train only the small head. Validation holds out whole captions.

`label_unrated`: scores the clips in RUN/generations/ that no human rated -> RUN/reward_labeled/
(feedback -1, reward = score, source "reward_model"); resumable.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from baton_trainer.audio import atomic_folder, load_audio
from baton_trainer.config import config_to_dict

from .clap import CLAP_SAMPLE_RATE, ClapEmbedder
from .modeling_baton_reward import HEAD_TYPES, BatonRewardModel

EMBEDDING_CACHE_VERSION = 1


class RewardDataError(ValueError):
    """Rating data the reward model cannot be trained on or applied to; the message names it."""


def _default(value: str | None, run_dir: str, name: str) -> Path:
    return Path(value) if value else Path(run_dir) / name


@dataclass
class RewardTrainingConfig:
    run_dir: str = field(default="run", metadata={"help": "run folder (reads RUN/feedback/, writes RUN/reward_model/)"})
    feedback: str | None = field(default=None, metadata={"help": "preference dataset: folder or Hub id (default RUN/feedback)"})
    output_dir: str | None = field(default=None, metadata={"help": "where the model is saved (default RUN/reward_model)"})
    clap_model: str = field(default="laion/clap-htsat-unfused", metadata={"help": "CLAP checkpoint (Hub id or folder)"})
    head_type: str = field(
        default="mlp",
        metadata={"help": "mlp: the paper's MLP on [audio, text]; cosine_logistic: sigmoid(w * CLAP cosine + b), fit to "
                  "convergence, for a few hundred ratings or fewer"},
    )
    head_hidden_size: int = field(default=512, metadata={"help": "hidden width of the mlp head (paper: 512)"})
    learning_rate: float = field(default=0.01, metadata={"help": "Adam learning rate (paper: 0.01)"})
    weight_decay: float = field(default=1e-5, metadata={"help": "Adam weight decay (paper: 1e-5)"})
    batch_size: int = field(default=64, metadata={"help": "training batch size (paper: 64)"})
    epochs: int = field(default=50, metadata={"help": "training epochs (paper: 50)"})
    seed: int = field(default=0, metadata={"help": "seed for the split, the head's init and shuffling"})
    validation_fraction: float = field(default=0.2, metadata={"help": "share of captions held out (all clips of a caption go to one side)"})
    cache_embeddings: bool = field(default=True, metadata={"help": "compute CLAP embeddings once and cache them on disk"})
    cache_dir: str | None = field(default=None, metadata={"help": "embedding cache folder (default RUN/cache/clap_embeddings)"})
    embed_batch_size: int = field(default=16, metadata={"help": "clips per CLAP forward pass"})
    device: str | None = field(default=None, metadata={"help": "torch device (default: cuda if available, else cpu)"})


@dataclass
class LabelConfig:
    run_dir: str = field(default="run", metadata={"help": "run folder"})
    generations: str | None = field(default=None, metadata={"help": "generations folder with metadata.jsonl (default RUN/generations)"})
    feedback: str | None = field(default=None, metadata={"help": "human ratings dataset (default RUN/feedback; missing = none rated)"})
    reward_model: str | None = field(default=None, metadata={"help": "reward model folder or Hub id (default RUN/reward_model)"})
    output_dir: str | None = field(default=None, metadata={"help": "output preference dataset (default RUN/reward_labeled)"})
    batch_size: int = field(default=16, metadata={"help": "clips scored per forward pass"})
    device: str | None = field(default=None, metadata={"help": "torch device (default: cuda if available, else cpu)"})


def _device(name: str | None) -> torch.device:
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


# ----------------------------------------------------------------------------------------------
# Rated rows and the split


def load_rated_rows(source: str | os.PathLike):
    """Human-rated rows (feedback 0/1) of a preference dataset; refuses data with one class."""
    try:
        from baton_trainer.data import load_preference_dataset
    except ImportError:  # the data module is optional for this stage
        load_preference_dataset = None
    if load_preference_dataset is not None:
        ds = load_preference_dataset(str(source))
    else:
        import datasets

        if not Path(source).is_dir():
            raise RewardDataError(f"{source}: feedback dataset folder not found")
        ds = datasets.load_from_disk(str(source))
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
    audio_column = ds.with_format("arrow")["audio"].to_pylist()
    captions = list(ds["caption"])
    unique = sorted({captions[i] for i in rows})
    text_table = dict(zip(unique, embedder.embed_text(unique))) if unique else {}
    text = torch.stack([text_table[captions[i]] for i in rows]) if len(rows) else torch.zeros(0, embedder.dim)
    chunks = []
    step = embedder.batch_size
    for start in tqdm(range(0, len(rows), step), desc="CLAP audio", disable=not progress, leave=False):
        batch = rows[start : start + step]
        chunks.append(embedder.embed_audio([_read_clip(audio_column[i], int(i)) for i in batch], CLAP_SAMPLE_RATE))
    audio = torch.cat(chunks) if chunks else torch.zeros(0, embedder.dim)
    return audio, text


def cached_embeddings(embedder: ClapEmbedder, ds, cache_dir: Path) -> tuple[torch.Tensor, torch.Tensor, Path, bool]:
    """Embeddings of every row, read from `cache_dir/<key>.safetensors` or computed and written there."""
    from safetensors.torch import load_file, save_file

    path = Path(cache_dir) / f"{embedding_cache_key(embedder, ds)}.safetensors"
    if path.is_file():
        tensors = load_file(str(path))
        if tensors["audio"].shape[0] == len(ds):
            return tensors["audio"], tensors["text"], path, True
    audio, text = embed_rows(embedder, ds)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({"audio": audio.contiguous(), "text": text.contiguous()}, str(tmp), metadata={"clap": embedder.name_or_path})
    os.replace(tmp, path)
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
        # Mann-Whitney form of ROC AUC, ties counted half (no sklearn import on the stage's path).
        order = np.argsort(rewards, kind="mergesort")
        ranks = np.empty(rewards.size)
        sorted_r = rewards[order]
        i = 0
        while i < sorted_r.size:
            j = i
            while j + 1 < sorted_r.size and sorted_r[j + 1] == sorted_r[i]:
                j += 1
            ranks[order[i : j + 1]] = (i + j) / 2 + 1
            i = j + 1
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = np.linspace(0, 1, 21)
    for value, name, color in ((1, f"{judge}: aligned (1)", "tab:green"), (0, f"{judge}: not aligned (0)", "tab:red")):
        ax.hist(rewards[labels == value], bins=bins, alpha=0.6, label=name, color=color)
    ax.set_xlabel("predicted reward")
    ax.set_ylabel("clips")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------
# The reward stage


def fit_head(
    model: BatonRewardModel,
    embed_batch: Callable[[np.ndarray], tuple[torch.Tensor, torch.Tensor]],
    labels: torch.Tensor,
    train_rows: np.ndarray,
    config: RewardTrainingConfig,
    device: torch.device,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Train the head with BCE; `embed_batch(rows)` gives the CLAP embeddings of those rows
    (from the cache, or encoded afresh every epoch). Returns per-epoch mean losses."""
    if model.config.head_type == "cosine_logistic":
        return fit_cosine_logistic(model, embed_batch, labels, train_rows, config, device)
    torch.manual_seed(config.seed)
    optimizer = torch.optim.Adam(model.head.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    history = []
    model.train()
    for epoch in tqdm(range(config.epochs), desc="reward head", disable=not progress):
        order = train_rows[torch.randperm(len(train_rows), generator=generator).numpy()]
        total, seen = 0.0, 0
        for start in range(0, len(order), config.batch_size):
            rows = order[start : start + config.batch_size]
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


def fit_cosine_logistic(
    model: BatonRewardModel,
    embed_batch: Callable[[np.ndarray], tuple[torch.Tensor, torch.Tensor]],
    labels: torch.Tensor,
    train_rows: np.ndarray,
    config: RewardTrainingConfig,
    device: torch.device,
) -> list[dict[str, float]]:
    """The two-parameter head fit to its optimum by full-batch L-BFGS (BCE plus the same L2
    weight decay): a convex problem with one answer, so epochs, batches and learning rate do not
    apply. Returns the loss before and after, in fit_head's format."""
    audio, text = (x.to(device) for x in embed_batch(train_rows))
    target = labels[train_rows].to(device)
    params = list(model.head.parameters())
    optimizer = torch.optim.LBFGS(params, lr=1.0, max_iter=200, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def bce() -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(model.logits_from_embeddings(audio, text), target)

    def objective():
        optimizer.zero_grad(set_to_none=True)
        loss = bce() + 0.5 * config.weight_decay * sum((p**2).sum() for p in params)
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


def train_reward_model(config: RewardTrainingConfig) -> Path:
    """The `reward` stage: human ratings -> a saved BatonRewardModel with metrics and a histogram."""
    from . import build_reward_model

    if config.epochs < 1 or config.batch_size < 1:
        raise RewardDataError(f"epochs and batch_size must be >= 1, got {config.epochs} and {config.batch_size}")
    if config.head_type not in HEAD_TYPES:
        raise RewardDataError(f"head_type must be one of {', '.join(HEAD_TYPES)}, got {config.head_type!r}")
    feedback = _default(config.feedback, config.run_dir, "feedback")
    out = _default(config.output_dir, config.run_dir, "reward_model")
    cache_dir = _default(config.cache_dir, config.run_dir, "cache/clap_embeddings")
    device = _device(config.device)

    ds = load_rated_rows(feedback)
    labels = torch.tensor(list(ds["feedback"]), dtype=torch.float32)
    captions, tasks = list(ds["caption"]), list(ds["task"])
    train_rows, val_rows = split_by_caption(captions, config.validation_fraction, config.seed)

    embedder = ClapEmbedder(config.clap_model, device=device, batch_size=config.embed_batch_size)
    started = time.perf_counter()
    cache_path, cache_hit = None, False
    if config.cache_embeddings:
        audio_all, text_all, cache_path, cache_hit = cached_embeddings(embedder, ds, cache_dir)

        def embed_batch(rows):
            return audio_all[rows], text_all[rows]

    else:

        def embed_batch(rows):
            return embed_rows(embedder, ds, rows, progress=False)

    embed_seconds = time.perf_counter() - started
    model = build_reward_model(
        embedder, head_hidden_size=config.head_hidden_size, seed=config.seed, head_type=config.head_type
    ).to(device)
    started = time.perf_counter()
    history = fit_head(model, embed_batch, labels, train_rows, config, device)
    train_seconds = time.perf_counter() - started

    with torch.no_grad():
        rewards = np.zeros(len(ds), dtype=np.float64)
        for start in range(0, len(ds), 256):
            rows = np.arange(start, min(start + 256, len(ds)))
            audio, text = embed_batch(rows)
            rewards[rows] = model.score_embeddings(audio.to(device), text.to(device)).cpu().numpy()
    y = labels.numpy()
    tasks_arr = list(tasks)
    metrics = {
        "train": metrics_by_task(rewards[train_rows], y[train_rows], [tasks_arr[i] for i in train_rows]),
        "validation": metrics_by_task(rewards[val_rows], y[val_rows], [tasks_arr[i] for i in val_rows]),
        "split": {
            "by": "caption",
            "train_clips": int(len(train_rows)),
            "validation_clips": int(len(val_rows)),
            "train_captions": len({captions[i] for i in train_rows}),
            "validation_captions": len({captions[i] for i in val_rows}),
        },
        "history": history,
        "timing": {"embedding_seconds": embed_seconds, "training_seconds": train_seconds, "cache_hit": cache_hit},
        "embedding_cache": str(cache_path) if cache_path else None,
        "feedback": str(feedback),
        "clap_model": config.clap_model,
        "config": config_to_dict(config),
        "versions": _versions(),
    }

    held = val_rows if len(val_rows) else train_rows
    with atomic_folder(out) as tmp:
        model.save_pretrained(tmp)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
        (tmp / "training_config.json").write_text(json.dumps(config_to_dict(config), indent=2), encoding="utf-8")
        plot_reward_histogram(
            rewards[held], y[held], tmp / "reward_histogram.png",
            title=f"Predicted rewards on {'held-out' if len(val_rows) else 'training'} clips ({len(held)})",
        )
    val = metrics["validation"]["overall"]
    print(
        f"reward model saved to {out}: validation accuracy {_fmt(val['accuracy'])}, AUC {_fmt(val['auc'])}, "
        f"BCE {_fmt(val['bce'])} on {val['count']} clips"
    )
    return out


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for name in ("torch", "transformers", "datasets", "numpy"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


# ----------------------------------------------------------------------------------------------
# The label stage


def _rated_keys(feedback: Path) -> set[tuple[int, int]]:
    if not feedback.exists():
        print(f"{feedback} not found: treating every generated clip as unrated")
        return set()
    from baton_trainer.data import load_preference_dataset

    ds = load_preference_dataset(str(feedback), validate=False)
    return {
        (int(c), int(k))
        for c, k, fb, src in zip(list(ds["caption_id"]), list(ds["clip_index"]), list(ds["feedback"]), list(ds["source"]))
        if src == "human" and fb in (0, 1)
    }


def label_unrated(config: LabelConfig) -> Path:
    """The `label` stage: reward-model scores for every generated clip without a human rating."""
    from baton_trainer.data import PREFERENCE_FEATURES, build_dataset, save_dataset_atomic
    from baton_trainer.generate import read_generations

    from . import load

    generations = _default(config.generations, config.run_dir, "generations")
    feedback = _default(config.feedback, config.run_dir, "feedback")
    model_path = _default(config.reward_model, config.run_dir, "reward_model")
    out = _default(config.output_dir, config.run_dir, "reward_labeled")

    rows = read_generations(generations)
    rated = _rated_keys(feedback)
    todo = [r for r in rows if (int(r["caption_id"]), int(r["clip_index"])) not in rated]
    print(f"{len(rows)} generated clips, {len(rows) - len(todo)} rated by people, {len(todo)} to score")

    # Progress survives a kill: one JSON line per scored clip, appended and flushed per batch.
    progress_file = out.with_name(f".{out.name}.scores.jsonl")
    scores: dict[str, float] = {}
    if progress_file.is_file():
        for line in progress_file.read_text(encoding="utf-8").splitlines():
            try:
                item = json.loads(line)
                scores[item["file_name"]] = float(item["reward"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                continue  # a torn last line from a kill: that clip is scored again
    pending = [r for r in todo if r["file_name"] not in scores]
    if pending:
        if not model_path.exists() and (config.reward_model is None or str(model_path).count("/") != 1):
            raise RewardDataError(f"{model_path}: reward model not found (run the reward stage first)")
        model = load(str(model_path), device=_device(config.device))
        progress_file.parent.mkdir(parents=True, exist_ok=True)
        with open(progress_file, "a", encoding="utf-8") as handle:
            for start in tqdm(range(0, len(pending), config.batch_size), desc="reward labels"):
                batch = pending[start : start + config.batch_size]
                clips = [load_audio(generations / r["file_name"], target_sr=CLAP_SAMPLE_RATE, what=str(generations / r["file_name"]))[0] for r in batch]
                rewards = model.score([r["caption"] for r in batch], clips, CLAP_SAMPLE_RATE, batch_size=config.batch_size)
                for r, value in zip(batch, rewards.tolist()):
                    scores[r["file_name"]] = value
                    handle.write(json.dumps({"file_name": r["file_name"], "reward": value}) + "\n")
                handle.flush()
                os.fsync(handle.fileno())

    columns: dict[str, list[Any]] = {name: [] for name in PREFERENCE_FEATURES}
    for r in todo:
        columns["caption"].append(r["caption"])
        columns["audio"].append({"bytes": (generations / r["file_name"]).read_bytes(), "path": r["file_name"]})
        columns["feedback"].append(-1)
        columns["reward"].append(float(min(max(scores[r["file_name"]], 0.0), 1.0)))
        columns["source"].append("reward_model")
        columns["task"].append(r.get("task", "integrity"))
        columns["labels"].append(list(r.get("labels", [])))
        columns["caption_id"].append(int(r["caption_id"]))
        columns["clip_index"].append(int(r["clip_index"]))
        columns["annotator"].append(f"reward_model:{model_path}")
    ds = build_dataset(columns)
    save_dataset_atomic(ds, out)
    progress_file.unlink(missing_ok=True)
    if len(ds):
        r = np.asarray(columns["reward"])
        print(f"{len(ds)} clips labeled -> {out} (mean reward {r.mean():.3f}, {np.mean(r >= 0.5):.0%} >= 0.5)")
    else:
        print(f"no unrated clips: wrote an empty dataset to {out}")
    return out
