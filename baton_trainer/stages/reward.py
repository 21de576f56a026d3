"""The `reward` stage: human-rated clips (RUN/feedback/) -> a reward model (RUN/reward_model/).

    python -m baton_trainer reward --run_dir RUN [--clap_model laion/clap-htsat-unfused]

Under `accelerate launch --num_processes N` the processes split the clips' CLAP embeddings (each
clip in the batch it has in one process) and the main process trains the head and writes the
model: the same files as one process.

Frozen CLAP embeddings of each (caption, clip), cached on disk, and a small head trained with
binary cross-entropy on the ratings (Adam, lr 0.01, weight decay 1e-5, batch 64, 50 epochs: the
paper's Stage 2). Validation holds out whole captions. The folder is a Hub-ready
`reward_hub.BatonRewardModel` with `metrics.json`, `training_config.json` and a histogram of the
held-out rewards by rating.

Imports inside the functions keep `python -m baton_trainer --help` fast: the CLI imports every
stage module at start.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from ..config import config_to_dict
from ..layout import RunLayout


@dataclass
class RewardTrainingConfig:
    run_dir: str = field(default="run", metadata={"help": "run folder (reads RUN/feedback/, writes RUN/reward_model/)"})
    feedback: str | None = field(default=None, metadata={"help": "preference dataset: folder or Hub id (default RUN/feedback)"})
    output_dir: str | None = field(default=None, metadata={"help": "where the model is saved (default RUN/reward_model)"})
    clap_model: str = field(default="laion/clap-htsat-unfused", metadata={"help": "CLAP checkpoint (Hub id or folder)"})
    head_type: str = field(
        default="mlp",
        metadata={
            "help": "mlp: the paper's MLP on [audio, text]; cosine_logistic: sigmoid(w * CLAP cosine + b), fit to "
            "convergence, for a few hundred ratings or fewer"
        },
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

    def __post_init__(self) -> None:
        from reward_hub import HEAD_TYPES

        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"config keys 'epochs' and 'batch_size' must be >= 1, got {self.epochs} and {self.batch_size}")
        if self.head_type not in HEAD_TYPES:
            raise ValueError(f"config key 'head_type' must be one of {', '.join(HEAD_TYPES)}, got {self.head_type!r}")


def train_reward_model(config: RewardTrainingConfig) -> Path:
    """Human ratings -> a saved BatonRewardModel with metrics and a histogram."""
    import numpy as np
    import torch

    from reward_hub import build_reward_model

    from ..atomic import atomic_folder, atomic_write_json
    from ..clap import ClapEmbedder
    from ..formatting import format_number
    from ..reward_training import cached_embeddings, embed_rows, fit_head, load_rated_rows, metrics_by_task, plot_reward_histogram, split_by_caption
    from ..runtime import Ranks, library_versions

    layout = RunLayout.of(config.run_dir, feedback=config.feedback, reward_model=config.output_dir)
    feedback, out = layout.feedback, layout.reward_model
    cache_dir = Path(config.cache_dir) if config.cache_dir else layout.clap_embeddings
    # Several processes share the CLAP embeddings (the costly part); the main one trains the small head.
    ranks = Ranks.current()
    if ranks.count > 1 and not config.cache_embeddings and not ranks.is_main:
        return out
    device = ranks.device_for(config.device)

    ds = load_rated_rows(feedback)
    labels = torch.tensor(list(ds["feedback"]), dtype=torch.float32)
    captions, tasks = list(ds["caption"]), list(ds["task"])
    train_rows, val_rows = split_by_caption(captions, config.validation_fraction, config.seed)

    embedder = ClapEmbedder(config.clap_model, device=device, batch_size=config.embed_batch_size)
    started = time.perf_counter()
    cache_path, cache_hit = None, False
    if config.cache_embeddings:
        embedded = cached_embeddings(embedder, ds, cache_dir, ranks)
        if embedded is None:  # a helper process: its share of the embeddings went to the main one
            return out
        audio_all, text_all, cache_path, cache_hit = embedded

        def embed_batch(rows):
            return audio_all[rows], text_all[rows]

    else:

        def embed_batch(rows):
            return embed_rows(embedder, ds, rows, progress=False)

    embed_seconds = time.perf_counter() - started
    model = build_reward_model(
        embedder.model, processor=embedder.processor, head_hidden_size=config.head_hidden_size, seed=config.seed, head_type=config.head_type
    ).to(device)
    started = time.perf_counter()
    history = fit_head(
        model,
        embed_batch,
        labels,
        train_rows,
        device,
        epochs=config.epochs,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        seed=config.seed,
    )
    train_seconds = time.perf_counter() - started

    with torch.no_grad():
        rewards = np.zeros(len(ds), dtype=np.float64)
        for start in range(0, len(ds), 256):
            rows = np.arange(start, min(start + 256, len(ds)))
            audio, text = embed_batch(rows)
            rewards[rows] = model.score_embeddings(audio.to(device), text.to(device)).cpu().numpy()
    y = labels.numpy()
    metrics = {
        "train": metrics_by_task(rewards[train_rows], y[train_rows], [tasks[i] for i in train_rows]),
        "validation": metrics_by_task(rewards[val_rows], y[val_rows], [tasks[i] for i in val_rows]),
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
        "versions": library_versions(),
    }

    held = val_rows if len(val_rows) else train_rows
    with atomic_folder(out) as tmp:
        model.save_pretrained(tmp)
        atomic_write_json(tmp / "metrics.json", metrics)
        atomic_write_json(tmp / "training_config.json", config_to_dict(config))
        plot_reward_histogram(
            rewards[held],
            y[held],
            tmp / "reward_histogram.png",
            title=f"Predicted rewards on {'held-out' if len(val_rows) else 'training'} clips ({len(held)})",
        )
    val = metrics["validation"]["overall"]
    print(
        f"reward model saved to {out}: validation accuracy {format_number(val['accuracy'])}, AUC {format_number(val['auc'])}, "
        f"BCE {format_number(val['bce'])} on {val['count']} clips"
    )
    return out
