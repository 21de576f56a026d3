"""The `prompts` stage: label groups x conjunctions -> RUN/captions.jsonl.

    python -m baton_trainer prompts --run_dir RUN [--labels_file FILE] [--num_integrity 481 --num_temporal 481]

2 labels per caption for the integrity task, 3 for the temporal task, joined by the conjunctions
seen in the paper's released captions (`baton_trainer.captions`); a share of each task is held
out for evaluation. Each line: `{"caption_id", "caption", "task", "labels", "split"}`.

Imports inside the functions keep `python -m baton_trainer --help` fast: the CLI imports every
stage module at start.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..captions import TASK_LABEL_COUNTS, CaptionError, CaptionRewriter, generate_captions, load_labels
from ..layout import RunLayout


@dataclass
class PromptsConfig:
    run_dir: str = field(default="run", metadata={"help": "run folder; writes RUN/captions.jsonl"})
    labels_file: str | None = field(
        default=None, metadata={"help": "label vocabulary, one label per line ('#' comments); default: the shipped top-200 AudioCaps labels"}
    )
    num_integrity: int = field(default=481, metadata={"help": "2-label (integrity task) captions; the paper made 962 captions in all"})
    num_temporal: int = field(default=481, metadata={"help": "3-label (temporal task) captions"})
    heldout_fraction: float = field(
        default=0.1, metadata={"help": "fraction of each task's captions marked split 'heldout' (for evaluation), drawn with the seed"}
    )
    seed: int = field(default=0, metadata={"help": "seed for label groups, conjunctions and the held-out draw"})
    rewrite_model: str | None = field(
        default=None, metadata={"help": "optional transformers text-generation model (Hub id or folder) that paraphrases template captions"}
    )
    rewrite_device: str | None = field(default=None, metadata={"help": "device for the rewrite model (e.g. 'cuda:0'); default: transformers' choice"})
    overwrite: bool = field(
        default=False, metadata={"help": "replace an existing captions.jsonl whose content differs (downstream clips then no longer match)"}
    )

    def __post_init__(self) -> None:
        for name in ("num_integrity", "num_temporal"):
            if getattr(self, name) < 0:
                raise CaptionError(f"config key '{name}' must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise CaptionError(f"config key 'heldout_fraction' must be in [0, 1), got {self.heldout_fraction}")


def build_captions(config: PromptsConfig) -> Path:
    """Write RUN/captions.jsonl (atomically) and return its path.

    Rerunning with the same config writes the same file. A different existing file is refused
    unless `overwrite` is set, since clips generated from it would no longer match their captions.
    """
    from ..atomic import atomic_write_bytes

    labels = load_labels(config.labels_file)
    rewriter = CaptionRewriter(config.rewrite_model, device=config.rewrite_device) if config.rewrite_model else None
    rows = generate_captions(
        labels,
        config.num_integrity,
        config.num_temporal,
        seed=config.seed,
        heldout_fraction=config.heldout_fraction,
        rewriter=rewriter,
    )
    data = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")
    out = RunLayout.of(config.run_dir).captions
    if out.is_file() and out.read_bytes() != data and not config.overwrite:
        raise CaptionError(f"{out} exists with other captions; set overwrite=true to replace it (clips made from it would no longer match)")
    atomic_write_bytes(out, data)
    counts = {task: sum(r["task"] == task for r in rows) for task in TASK_LABEL_COUNTS}
    heldout = sum(r["split"] == "heldout" for r in rows)
    print(f"wrote {len(rows)} captions to {out} ({counts['integrity']} integrity, {counts['temporal']} temporal, {heldout} held out)")
    return out
