"""The `label` stage: the reward model scores every generated clip no person rated ->
RUN/reward_labeled/ (a preference dataset: feedback -1, reward = the score, source "reward_model").

    python -m baton_trainer label --run_dir RUN [--reward_model RUN/reward_model or a Hub id]

`rewards` (YAML: `label: {rewards: [baton, {name: events, checkpoint: ..., weight: 0.5}]}`) labels
with any rewards of docs/rewards.md instead: the label is their weighted mean, which must lie in
[0, 1] (a label is a probability that the clip is aligned).

Resumable: each scored clip is appended to a progress file (flushed per batch), so a killed run
scores only the clips that are left. Under `accelerate launch --num_processes N` the clips are
split between the processes (one progress file each) and the main process writes the dataset.

Imports inside the functions keep `python -m baton_trainer --help` fast: the CLI imports every
stage module at start.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..layout import RunLayout


@dataclass
class LabelConfig:
    run_dir: str = field(default="run", metadata={"help": "run folder"})
    generations: str | None = field(default=None, metadata={"help": "generations folder with metadata.jsonl (default RUN/generations)"})
    feedback: str | None = field(default=None, metadata={"help": "human ratings dataset (default RUN/feedback; missing = none rated)"})
    reward_model: str | None = field(default=None, metadata={"help": "reward model folder or Hub id (default RUN/reward_model)"})
    rewards: list[Any] | None = field(
        default=None,
        metadata={
            "help": "label with these rewards (names or {name, weight, options}, docs/rewards.md): their weighted mean, in [0, 1]; default the reward model"
        },
    )
    output_dir: str | None = field(default=None, metadata={"help": "output preference dataset (default RUN/reward_labeled)"})
    batch_size: int = field(default=16, metadata={"help": "clips scored per forward pass"})
    device: str | None = field(default=None, metadata={"help": "torch device (default: cuda if available, else cpu)"})
    rank_timeout_s: float = field(
        default=3600.0, metadata={"help": "several processes: how long the main process waits for the others to finish before naming them"}
    )


def read_scores(paths) -> dict[str, float]:
    """file_name -> reward from progress files; a torn last line from a kill is scored again."""
    scores: dict[str, float] = {}
    for path in paths:
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                item = json.loads(line)
                scores[item["file_name"]] = float(item["reward"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                continue
    return scores


def label_unrated(config: LabelConfig) -> Path:
    """Reward-model scores for every generated clip without a human rating."""
    import numpy as np
    from tqdm.auto import tqdm

    from ..audio import load_audio
    from ..clap import CLAP_SAMPLE_RATE
    from ..data import PREFERENCE_FEATURES, build_preference_dataset, human_rated_keys, load_preference_dataset, save_dataset_atomic
    from ..formatting import format_number
    from ..generations import read_generations
    from ..rewards import reward_model_spec, run_rewards
    from ..runtime import Ranks

    layout = RunLayout.of(
        config.run_dir,
        generations=config.generations,
        feedback=config.feedback,
        reward_model=config.reward_model,
        reward_labeled=config.output_dir,
    )
    generations, feedback, out = layout.generations, layout.feedback, layout.reward_labeled

    rows = read_generations(generations)
    if feedback.exists():
        rated = human_rated_keys(load_preference_dataset(str(feedback), validate=False))
    else:
        print(f"{feedback} not found: treating every generated clip as unrated")
        rated = set()
    todo = [r for r in rows if (int(r["caption_id"]), int(r["clip_index"])) not in rated]
    print(f"{len(rows)} generated clips, {len(rows) - len(todo)} rated by people, {len(todo)} to score")

    # Progress survives a kill: one JSON line per scored clip, appended and flushed per batch, one
    # file per process (several processes split the clips; the main process merges the files).
    ranks = Ranks.current()
    markers = out.with_name(f".{out.name}.ranks")

    def progress_files():
        return sorted(out.parent.glob(f".{out.name}.scores*.jsonl"))

    progress_file = out.with_name(f".{out.name}.scores.jsonl" if ranks.index == 0 else f".{out.name}.scores.rank{ranks.index}.jsonl")
    if ranks.is_main:
        ranks.clear(markers)
    scores = read_scores(progress_files())
    ranks.barrier()  # every rank has read the same scores before any rank appends new ones
    left = [r for r in todo if r["file_name"] not in scores]
    pending = [r for batch in ranks.shard_batches(left, config.batch_size) for r in batch]
    if pending:
        specs = config.rewards
        if specs is None:
            if config.reward_model is None and not layout.reward_model.exists():
                raise FileNotFoundError(f"{layout.reward_model}: reward model not found (run the reward stage first)")
            specs = [reward_model_spec(layout, config.batch_size)]
        # No score cache: the progress files below already keep every score (one per process).
        rewards = run_rewards(specs, layout, ranks.device_for(config.device), cache=False)
        progress_file.parent.mkdir(parents=True, exist_ok=True)
        with open(progress_file, "a", encoding="utf-8") as handle:
            if progress_file.stat().st_size and not progress_file.read_bytes().endswith(b"\n"):
                handle.write("\n")  # a torn last line from a kill stays a line of its own, not the start of the next one
            for start in tqdm(range(0, len(pending), config.batch_size), desc="reward labels", disable=not ranks.is_main):
                batch = pending[start : start + config.batch_size]
                clips = [load_audio(generations / r["file_name"], target_sr=CLAP_SAMPLE_RATE, what=str(generations / r["file_name"]))[0] for r in batch]
                values = rewards.weighted_mean(rewards.score([r["caption"] for r in batch], clips, CLAP_SAMPLE_RATE))
                outside = [i for i, value in enumerate(values) if not -1e-6 <= value <= 1 + 1e-6]
                if outside:
                    raise ValueError(
                        f"label: {rewards.describe()} gave {values[outside[0]]:.4g} for {generations / batch[outside[0]]['file_name']}: "
                        "a label must lie in [0, 1] (a probability of alignment); use rewards on that scale (baton, events, lalm_judge) or weights "
                        f"that keep their mean in it ({len(scores)} clips already labelled are kept)"
                    )
                for r, value in zip(batch, values.tolist()):
                    scores[r["file_name"]] = value
                    handle.write(json.dumps({"file_name": r["file_name"], "reward": value}) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
                ranks.progress(markers, start + len(batch), len(pending))
    ranks.finish(markers, len(pending), len(pending), f"label {out}", config.rank_timeout_s)
    if not ranks.is_main:
        return out
    scores = {**read_scores(progress_files()), **scores}  # the other ranks' scores beside this one's
    rewards_name = ", ".join(spec if isinstance(spec, str) else str(spec.get("name")) for spec in config.rewards or [])

    columns: dict[str, list[Any]] = {name: [] for name in PREFERENCE_FEATURES}
    lyrics: list[str] = []
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
        columns["annotator"].append(f"reward_model:{layout.reward_model}" if config.rewards is None else f"rewards:{rewards_name}")
        lyrics.append(r.get("lyrics", ""))
    ds = build_preference_dataset(columns, lyrics)
    # Every clip rated by people: an empty set, written where no labelled set with rows would be lost.
    save_dataset_atomic(ds, out, allow_empty=True, why=f"every one of the {len(rows)} generated clips is rated by people")
    for path in progress_files():
        path.unlink(missing_ok=True)
    ranks.clear(markers)
    if len(ds):
        r = np.asarray(columns["reward"])
        print(f"{len(ds)} clips labeled -> {out} (mean reward {format_number(float(r.mean()))}, {np.mean(r >= 0.5):.0%} >= 0.5)")
    else:
        print(f"no unrated clips: wrote an empty dataset to {out}")
    return out
