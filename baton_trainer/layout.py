"""The run folder: the one object that names every path inside it.

    RUN/captions.jsonl        prompts      the captions, with their labels, task and split
    RUN/generations/          generate     clips (wav) + metadata.jsonl + generation_config.json
    RUN/annotations.sqlite    annotate     every rating people (or the toy oracle) gave
    RUN/feedback/             export       human-rated preference dataset
    RUN/feedback_agreement.json export     rater agreement statistics
    RUN/reward_model/         reward       the reward model (Hub format) with metrics.json and a histogram
    RUN/reward_labeled/       label        the unrated clips with reward-model scores
    RUN/aligned/              finetune     the trained export, its checkpoints and logs
    RUN/eval/                 evaluate     report.md, metrics.json, plots, the clips it judged
    RUN/cache/                finetune, reward  latents, text and CLAP embeddings (keyed by fingerprint)
    RUN/run_summary.json      run          each stage's time and result
    RUN/rounds/               run --rounds round_<r>/ (clips, labels, weights, judge.json), summary.json, rounds.png
    RUN/live_votes/           finetune     the human_votes reward's live campaign: clips/, metadata.jsonl, votes.sqlite

The toy world adds its own inputs (`toy_labels.txt`, `pretrain/`, `reference/`) and the oracle's
check of the reward labels (`reward_label_check.json`, `.png`, `reward_labeled_oracle/`).

A stage's outputs can be moved (`--reward.output_dir X`); a layout built with the moved paths
gives every later stage the new place:

    layout = RunLayout.of("runs/toy", reward_model="elsewhere/rm")
    layout.reward_model  # Path("elsewhere/rm"); layout.feedback stays Path("runs/toy/feedback")
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# The paths a stage config may move, and where they are by default.
MOVABLE = {
    "captions": "captions.jsonl",
    "generations": "generations",
    "annotations": "annotations.sqlite",
    "feedback": "feedback",
    "reward_model": "reward_model",
    "reward_labeled": "reward_labeled",
    "aligned": "aligned",
    "eval": "eval",
    "cache": "cache",
}
# Files with a fixed place in the run folder (the last five are the toy world's).
FIXED = {
    "live_votes": "live_votes",
    "feedback_agreement": "feedback_agreement.json",
    "run_summary": "run_summary.json",
    "rounds": "rounds",
    "rounds_summary": "rounds/summary.json",
    "rounds_plot": "rounds/rounds.png",
    "toy_labels": "toy_labels.txt",
    "pretrain": "pretrain",
    "reference": "reference",
    "reward_label_check": "reward_label_check.json",
    "reward_label_check_plot": "reward_label_check.png",
    "reward_labeled_oracle": "reward_labeled_oracle",
}


@dataclass(frozen=True)
class RunLayout:
    root: Path
    captions: Path
    generations: Path
    annotations: Path
    feedback: Path
    reward_model: Path
    reward_labeled: Path
    aligned: Path
    eval: Path
    cache: Path
    clap_embeddings: Path  # inside `cache`
    reward_scores: Path  # inside `cache`: every reward score a stage computed, keyed by clip content and reward
    live_votes: Path
    feedback_agreement: Path
    run_summary: Path
    rounds: Path
    rounds_summary: Path
    rounds_plot: Path
    toy_labels: Path
    pretrain: Path
    reference: Path
    reward_label_check: Path
    reward_label_check_plot: Path
    reward_labeled_oracle: Path

    @classmethod
    def of(cls, run_dir: str | os.PathLike, **moved: str | os.PathLike | None) -> "RunLayout":
        """The layout of `run_dir`, with the movable paths given in `moved` (None keeps the default)."""
        unknown = sorted(set(moved) - set(MOVABLE))
        if unknown:
            raise ValueError(f"RunLayout: '{unknown[0]}' is not a movable run path (movable: {', '.join(MOVABLE)})")
        root = Path(run_dir)
        paths = {name: Path(moved[name]) if moved.get(name) else root / default for name, default in MOVABLE.items()}
        paths.update({name: root / default for name, default in FIXED.items()})
        return cls(root=root, clap_embeddings=paths["cache"] / "clap_embeddings", reward_scores=paths["cache"] / "reward_scores.jsonl", **paths)

    def round_folder(self, r: int) -> Path:
        """Online round r's folder (round 1 is the offline fine-tune: only its judge lives there)."""
        return self.rounds / f"round_{r}"
