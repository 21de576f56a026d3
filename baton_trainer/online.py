"""Online rounds of the `run` stage (`--rounds R`): after the offline fine-tune (round 1), each
round r = 2..R

    generates fresh training clips from the current aligned model  -> RUN/rounds/round_r/generations
    (toy, with --round_ratings N) the oracle rates N of them        -> round_r/feedback
    labels the rest with the run's reward model                      -> round_r/reward_labeled
    fine-tunes from the current weights on them                      -> round_r/aligned

and every round, the first included, is measured by a judge that is not the training reward, on
fresh clips (their own seeds) of the training captions by default (`--judge_split heldout` for the
held-out ones, which the final evaluation then no longer sees untouched): the toy world's oracle
(the mean of integrity and temporal accuracy), or for real models a second scorer
(`--judge_model`, a reward model folder other than the run's).
The training reward's mean on the same clips sits beside it. The run keeps the best round by the
judge and stops early when the judge falls, by more than `stop_margin_se` standard errors of the
difference, while the reward rises (reward hacking). Every
round's clips, labels, weights and judge scores stay in its folder; a killed run resumes in the
round it was in, and a finished round is never redone (its `judge.json` marks it done).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import datasets
import numpy as np

from reward_hub.rewards import RewardSet

from .atomic import atomic_write_json
from .backends import EXPORT_FILE, load_backend
from .clap import CLAP_SAMPLE_RATE
from .data import load_preference_dataset, save_dataset_atomic
from .evaluation.clips import oracle_metrics, read_clips, read_waves
from .evaluation.intervals import reward_hacking
from .hub import resolve_folder
from .rewards import run_rewards
from .stages.export import ExportConfig, export_feedback
from .stages.finetune import finetune as finetune_stage
from .stages.generate import generate
from .stages.label import label_unrated
from .toyworld.loop import oracle_ratings_of

if TYPE_CHECKING:
    from .layout import RunLayout


class RoundsConfig(Protocol):
    """What the rounds read of the run's config: the `run` stage's `RunConfig` (which calls them)
    has every key, and is not imported here, so that this module does not import the stage back."""

    world: Literal["toy", "real"]
    seed: int
    rounds: int
    round_ratings: int
    oracle_error_rate: float
    oracle_skip_rate: float
    judge_model: str | None
    judge_split: Literal["train", "heldout"]
    judge_clips_per_caption: int
    judge_captions: int | None
    stop_margin_se: float

    def layout(self) -> RunLayout: ...


def judge_round(config: RoundsConfig, configs: dict[str, Any], export: Path, folder: Path) -> dict[str, float]:
    """The judge's and the training reward's view of one round's model, on held-out clips."""

    done = folder / "judge.json"
    if done.is_file():
        return json.loads(done.read_text())
    # Fresh seeds (not the training clips', not the evaluation's) on the judge's split: by default
    # the training captions, so that choosing the best round never looks at the held-out captions
    # the final evaluation reports on.
    gen = dataclasses.replace(
        configs["generate"],
        export=str(export),
        captions_file=str(config.layout().captions),
        split=config.judge_split,
        clips_per_caption=config.judge_clips_per_caption,
        max_captions=config.judge_captions,
        seed=config.seed + 2000,
        out_dir=str(folder / "judge_clips"),
    )
    clips_folder = generate(gen)
    rows, clips = read_clips(clips_folder, 16000)
    waves = read_waves(clips_folder, rows, CLAP_SAMPLE_RATE)
    captions = [r["caption"] for r in rows]
    device = configs["label"].device
    # The reward the rounds' labels come from (the label stage's `rewards`, default the run's reward model).
    rewards = run_rewards(configs["label"].rewards, config.layout(), device)
    result: dict[str, float] = {"reward": float(np.mean(rewards.weighted_mean(rewards.score(captions, waves, CLAP_SAMPLE_RATE))))}
    if config.world == "toy":
        accuracies = oracle_metrics(rows, clips, 16000)
        tasks = [k for k in accuracies if k.endswith("_accuracy")]
        result.update({k: accuracies[k] for k in tasks})
        result["judge"] = float(np.mean([accuracies[k] for k in tasks]))
        result["judge_se"] = float(np.sqrt(sum(accuracies[f"{k}_se"] ** 2 for k in tasks)) / len(tasks))  # of a mean of independent accuracies
    else:
        judge = RewardSet([{"name": "baton", "model": str(resolve_folder(config.judge_model, "judge model"))}], device=device)
        scores = judge.score(captions, waves, CLAP_SAMPLE_RATE)["baton"]
        result["judge"], result["judge_se"] = float(scores.mean()), float(scores.std(ddof=1) / np.sqrt(len(scores))) if len(scores) > 1 else 0.0
    result["clips"] = len(rows)
    atomic_write_json(done, result)
    return result


def train_round(config: RoundsConfig, configs: dict[str, Any], r: int, previous: Path) -> Path:
    """Round r's clips from the model of round r - 1, their labels, and the fine-tune from its weights."""

    layout = config.layout()
    folder = layout.round_folder(r)
    aligned = folder / "aligned"
    if (aligned / EXPORT_FILE).is_file():
        return aligned
    generations = generate(dataclasses.replace(configs["generate"], export=str(previous), seed=config.seed + 7919 * r, out_dir=str(folder / "generations")))
    human = [load_preference_dataset(layout.feedback)] if layout.feedback.exists() else []
    if config.round_ratings:  # the toy world's oracle rates this round's budget of new clips
        oracle_ratings_of(generations, folder / "annotations.sqlite", config.round_ratings, config.oracle_error_rate, config.oracle_skip_rate, config.seed + r)
        export_feedback(
            ExportConfig(run_dir=str(layout.root), store=str(folder / "annotations.sqlite"), generations_dir=str(generations), out=str(folder / "feedback"))
        )
        human.append(load_preference_dataset(folder / "feedback"))
    feedback = folder / "feedback_all"
    if human and not feedback.exists():
        save_dataset_atomic(datasets.concatenate_datasets(human), feedback)
    # Only this round's own ratings are left out of its reward labels (the run's feedback rates other clips).
    label = dataclasses.replace(configs["label"], generations=str(generations), feedback=str(folder / "feedback"), output_dir=str(folder / "reward_labeled"))
    label_unrated(label)
    finetune = dataclasses.replace(
        configs["finetune"],
        output_dir=str(aligned),
        cache_dir=str(folder / "cache"),
        reward_dataset=str(folder / "reward_labeled"),
        feedback_dataset=str(feedback) if human else "none",
        resume_from_checkpoint="latest",
    )
    finetune_stage(finetune, backend=load_backend(finetune.model, export=previous))
    return aligned


def run_rounds(config: RoundsConfig, configs: dict[str, Any]) -> Path:
    """Rounds 1..R (round 1 is the offline fine-tune in RUN/aligned); returns the best round's export."""
    layout = config.layout()
    history: list[dict[str, Any]] = []
    export = layout.aligned
    best = 1
    for r in range(1, config.rounds + 1):
        if r > 1:
            print(f"--- online round {r}/{config.rounds}: clips from round {r - 1}, reward labels, fine-tune from its weights", flush=True)
            export = train_round(config, configs, r, export)
        scores = judge_round(config, configs, export, layout.round_folder(r))
        history.append({"round": r, "export": os.path.relpath(export, layout.root), **scores})  # relative: the run folder can move
        print(f"    round {r}: judge {scores['judge']:.4f}, training reward {scores['reward']:.4f}", flush=True)
        if scores["judge"] > history[best - 1]["judge"]:
            best = r
        if r > 1 and reward_hacking(history[-2], scores, config.stop_margin_se):
            print(f"    stopping: the judge fell while the training reward rose (reward hacking); keeping round {best}", flush=True)
            break
    summary = {
        "rounds": history,
        "best_round": best,
        "best_export": history[best - 1]["export"],
        "judge": "the toy world's oracle (mean of integrity and temporal accuracy)" if config.world == "toy" else f"reward model {config.judge_model}",
    }
    atomic_write_json(layout.rounds_summary, summary)
    plot_rounds(history, layout.rounds_plot)
    return layout.root / summary["best_export"]


def plot_rounds(history: list[dict[str, Any]], path: Path) -> None:
    """The judge and the training reward by round: a rising reward over a falling judge is hacking."""
    import matplotlib  # lazy: slow to import, and the backend must be set before pyplot loads

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt  # lazy: after matplotlib.use

    rounds = [h["round"] for h in history]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(rounds, [h["judge"] for h in history], "o-", label="held-out judge")
    ax.plot(rounds, [h["reward"] for h in history], "s--", label="training reward")
    ax.set_xlabel("round")
    ax.set_xticks(rounds)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
