"""The `run` stage: the whole BATON loop, one stage after another, in one run folder.

    prompts -> generate -> ratings -> export -> reward -> label -> finetune -> evaluate

In the toy world (`world: toy`, the default of `accelerate launch -m baton_trainer`) the oracle
annotator rates a share of the clips as people would, through the same annotation store; with a
real model (`world: real`) the run stops after generation and asks for ratings from the
`annotate` app, then continues from there when started again. Every stage keeps its output, so a
killed run resumes where it stopped: rerun the same command.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .audio import atomic_write_bytes
from .config import build_config

TOY_CHECKPOINTS = Path(__file__).parent / "toyworld" / "checkpoints"
STAGE_ORDER = ("prompts", "generate", "ratings", "export", "reward", "label", "finetune", "evaluate")


@dataclass
class RunConfig:
    run_dir: str = field(default="runs/toy", metadata={"help": "the run folder every stage reads and writes"})
    world: Literal["toy", "real"] = field(default="toy", metadata={"help": "toy: the embedded world with the oracle as annotator"})
    model: str | None = field(default=None, metadata={"help": "base text-to-audio model (default: the shipped toy TANGO)"})
    clap_model: str | None = field(default=None, metadata={"help": "CLAP for the reward model and CLAP score (default: the toy CLAP)"})
    seed: int = 0
    stages: list[str] = field(default_factory=lambda: list(STAGE_ORDER), metadata={"help": "stages to run, in order"})
    rated_fraction: float = field(default=0.1, metadata={"help": "toy: share of the clips or captions the oracle rates (the rest get reward labels)"})
    rate_by: Literal["clip", "caption"] = field(
        default="caption", metadata={"help": "toy: rate a random share of all clips, or all clips of a random share of the captions"}
    )
    oracle_error_rate: float = field(default=0.0, metadata={"help": "toy: chance that the oracle answers wrongly"})
    oracle_skip_rate: float = field(default=0.0, metadata={"help": "toy: chance that the oracle skips a clip"})
    pretrain_clips: int = field(default=512, metadata={"help": "toy: rendered (caption, audio) clips for the beta term"})
    reference_clips: int = field(default=256, metadata={"help": "toy: rendered reference clips for FD"})
    prompts: dict = field(default_factory=dict, metadata={"help": "PromptsConfig keys"})
    generate: dict = field(default_factory=dict, metadata={"help": "GenerateConfig keys"})
    export: dict = field(default_factory=dict, metadata={"help": "ExportConfig keys"})
    reward: dict = field(default_factory=dict, metadata={"help": "RewardTrainingConfig keys"})
    label: dict = field(default_factory=dict, metadata={"help": "LabelConfig keys"})
    finetune: dict = field(default_factory=dict, metadata={"help": "FinetuneConfig keys"})
    evaluate: dict = field(default_factory=dict, metadata={"help": "EvaluateConfig keys"})

    def __post_init__(self):
        unknown = [s for s in self.stages if s not in STAGE_ORDER]
        if unknown:
            raise ValueError(f"config key 'stages': unknown stage '{unknown[0]}' (known: {', '.join(STAGE_ORDER)})")
        if self.world == "toy":
            self.model = self.model or str(TOY_CHECKPOINTS / "toy_tango")
            self.clap_model = self.clap_model or str(TOY_CHECKPOINTS / "toy_clap")
        elif not self.model:
            raise ValueError("world 'real' needs a model (e.g. --model declare-lab/tango-full-ft-audiocaps)")
        self.clap_model = self.clap_model or "laion/clap-htsat-unfused"
        # Build every stage config now: a wrong key fails before hours of work, not after.
        self.stage_configs()

    def stage_configs(self) -> dict[str, Any]:
        from reward_hub.training import LabelConfig, RewardTrainingConfig

        from .annotation import ExportConfig
        from .evaluation.stage import EvaluateConfig
        from .generate import GenerateConfig
        from .prompts import PromptsConfig
        from .trainer import FinetuneConfig

        run = Path(self.run_dir)
        toy = self.world == "toy"
        defaults = {
            "prompts": (PromptsConfig, {"seed": self.seed, **({"labels_file": str(run / "toy_labels.txt")} if toy else {})}),
            "generate": (GenerateConfig, {"model": self.model, "seed": self.seed, "split": "train"}),
            "export": (ExportConfig, {}),
            "reward": (RewardTrainingConfig, {"clap_model": self.clap_model, "seed": self.seed}),
            "label": (LabelConfig, {}),
            "finetune": (
                FinetuneConfig,
                {"model": self.model, "seed": self.seed, **({"pretrain_dataset": str(run / "pretrain")} if toy else {})},
            ),
            "evaluate": (
                EvaluateConfig,
                {
                    "model": self.model,
                    "clap_model": self.clap_model,
                    "seed": self.seed + 1000,  # evaluation seeds differ from the seeds of the training clips
                    **({"captions": "heldout", "oracle": True, "fd_embedding": "clap", "reference_audio": str(run / "reference")} if toy else {}),
                },
            ),
        }
        configs = {}
        for name, (cls, base) in defaults.items():
            values = {"run_dir": self.run_dir, **base, **getattr(self, name)}
            configs[name] = build_config(cls, values, prefix=f"{name}.")
        return configs


def _write_toy_inputs(config: RunConfig) -> None:
    """The toy world's own inputs: its label vocabulary, rendered pretraining and reference clips."""
    from .data import PRETRAIN_FEATURES, build_dataset, save_dataset_atomic
    from .audio import save_wav, wav_bytes
    from .toyworld.events import EVENT_NAMES
    from .toyworld.render import PRETRAIN_WORLD, iter_dataset

    run = Path(config.run_dir)
    labels = run / "toy_labels.txt"
    if not labels.is_file():
        atomic_write_bytes(labels, ("# the toy world's sound events (baton_trainer.toyworld.events)\n" + "\n".join(EVENT_NAMES) + "\n").encode())
    settings = json.loads((Path(config.model) / "baton_model.json").read_text())
    duration = float(settings.get("duration_s", 2.56))
    if not (run / "pretrain").is_dir():
        items = list(iter_dataset(config.pretrain_clips, seed=config.seed + 7, duration_s=duration, **PRETRAIN_WORLD))
        columns = {"caption": [i["caption"] for i in items], "audio": [{"bytes": wav_bytes(i["audio"], 16000), "path": f"pretrain_{i['index']}.wav"} for i in items]}
        save_dataset_atomic(build_dataset(columns, PRETRAIN_FEATURES), run / "pretrain")
    reference = run / "reference"
    if not (reference / "done").is_file():
        for item in iter_dataset(config.reference_clips, seed=config.seed + 11, duration_s=duration, **PRETRAIN_WORLD):
            save_wav(reference / f"reference_{item['index']:05d}.wav", item["audio"], 16000)
        (reference / "done").write_text("rendered\n")


def _oracle_ratings(config: RunConfig, generations: Path) -> dict[str, int]:
    import numpy as np

    from .annotation import AnnotationStore
    from .toyworld.oracle import OracleAnnotator, annotate_store

    from .generate import read_generations

    rows = read_generations(generations)
    # The unit drawn is a clip, or a caption with all its clips (reward labels then reach captions nobody rated).
    unit = "caption_id" if config.rate_by == "caption" else "clip_id"
    units = sorted({r[unit] for r in rows})
    picked = np.random.default_rng(config.seed).permutation(len(units))[: int(round(config.rated_fraction * len(units)))]
    chosen = {units[i] for i in picked}
    clip_ids = sorted(r["clip_id"] for r in rows if r[unit] in chosen)
    store = AnnotationStore(Path(config.run_dir) / "annotations.sqlite")
    try:
        oracle = OracleAnnotator(error_rate=config.oracle_error_rate, skip_rate=config.oracle_skip_rate, seed=config.seed)
        return annotate_store(store, generations, annotator="oracle", oracle=oracle, clip_ids=clip_ids)
    finally:
        store.close()


def check_reward_labels(run_dir: Path) -> dict[str, Any]:
    """Toy world: the noise-free oracle judges every clip the reward model labelled (none of which
    it was trained on), the largest held-out test a reward model gets here.

    Writes RUN/reward_labeled_oracle (the same rows with the oracle's 1/0 as their reward: the
    benchmark's `oracle_rewards` diagnostic trains on it), RUN/reward_label_check.json (accuracy
    of reward > 0.5, and the share of the rows' total reward that sits on misaligned clips, the
    part of the reward-weighted loss that teaches the wrong thing; overall and by task) and
    RUN/reward_label_check.png (the rewards by the oracle's answer).
    """
    import numpy as np
    from reward_hub.training import plot_reward_histogram

    from .audio import load_audio
    from .data import load_preference_dataset, save_dataset_atomic
    from .toyworld.oracle import alignment_outcomes

    out, report, plot = run_dir / "reward_labeled_oracle", run_dir / "reward_label_check.json", run_dir / "reward_label_check.png"
    ds = load_preference_dataset(run_dir / "reward_labeled")
    labels_digest = hashlib.sha256(json.dumps([list(ds["caption"]), list(ds["reward"])]).encode()).hexdigest()[:16]
    if out.is_dir() and report.is_file() and plot.is_file():
        done = json.loads(report.read_text())
        if done.get("reward_labels") == labels_digest:  # else the reward labels were made again: judge them again
            return done
    audio = ds.with_format("arrow")["audio"].to_pylist()
    wavs = [load_audio(a, 16000, what=f"reward_labeled row {i}")[0] for i, a in enumerate(audio)]
    truth = alignment_outcomes(wavs, ds["labels"], ds["task"])
    rewards = list(ds["reward"])

    def summary(rows: list[int]) -> dict[str, Any]:
        total = sum(rewards[i] for i in rows)
        return {
            "clips": len(rows),
            "accuracy": sum((rewards[i] > 0.5) == truth[i] for i in rows) / len(rows) if rows else None,
            "aligned_share": sum(truth[i] for i in rows) / len(rows) if rows else None,
            "reward_share_on_misaligned": sum(rewards[i] for i in rows if not truth[i]) / total if total > 0 else None,
        }

    result = {"reward_labels": labels_digest, **summary(list(range(len(ds)))), "by_task": {task: summary([i for i, t in enumerate(ds["task"]) if t == task])
                                                          for task in sorted(set(ds["task"]))}}
    save_dataset_atomic(ds.map(lambda _, i: {"reward": float(truth[i]), "feedback": int(truth[i])}, with_indices=True), out)
    plot_reward_histogram(np.array(rewards), np.array(truth, dtype=int), plot, title=f"Reward labels on the {len(ds)} clips nobody rated", judge="oracle")
    atomic_write_bytes(report, json.dumps(result, indent=2).encode())
    return result


def run(config: RunConfig) -> Path:
    from reward_hub.training import label_unrated, train_reward_model

    from .annotation import export_feedback
    from .evaluation.stage import evaluate
    from .generate import generate
    from .prompts import build_captions
    from .trainer import finetune

    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    summary_file = run_dir / "run_summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {"stages": {}}
    if config.world == "toy":
        _write_toy_inputs(config)
    total = len(config.stages)
    for number, stage in enumerate(config.stages, 1):
        print(f"\n=== [{number}/{total}] {stage} ===", flush=True)
        started = time.time()
        # Built per stage: defaults that depend on earlier outputs (RUN/reward_labeled) then exist.
        configs = config.stage_configs()
        if stage == "prompts":
            result: Any = build_captions(configs["prompts"])
        elif stage == "generate":
            result = generate(configs["generate"])
        elif stage == "ratings":
            generations = Path(configs["generate"].out_dir or run_dir / "generations")
            if config.world == "toy":
                result = _oracle_ratings(config, generations)
            elif not (run_dir / "annotations.sqlite").is_file():
                print(
                    f"clips are ready in {generations}. Collect ratings with\n"
                    f"  python -m baton_trainer annotate --run_dir {run_dir}\n"
                    f"then rerun this command to continue (finished stages are kept)."
                )
                break
            else:
                result = "using the ratings in annotations.sqlite"
        elif stage == "export":
            result = export_feedback(configs["export"])
        elif stage == "reward":
            reward_dir = Path(configs["reward"].output_dir or run_dir / "reward_model")
            result = reward_dir if (reward_dir / "config.json").is_file() else train_reward_model(configs["reward"])
        elif stage == "label":
            result = label_unrated(configs["label"])
            if config.world == "toy":
                check = check_reward_labels(run_dir)
                if check["accuracy"] is not None:
                    result = f"{result} (the oracle agrees with {100 * check['accuracy']:.1f}% of {check['clips']} reward labels)"
        elif stage == "finetune":
            finetune_config = configs["finetune"]
            if (Path(finetune_config.output_dir) / "baton_export.json").is_file():
                result = finetune_config.output_dir  # already trained: keep it
            else:
                finetune_config.resume_from_checkpoint = finetune_config.resume_from_checkpoint or "latest"
                result = finetune(finetune_config)
        else:
            result = evaluate(configs["evaluate"])
        seconds = round(time.time() - started, 1)
        summary["stages"][stage] = {"seconds": seconds, "result": str(result)}
        atomic_write_bytes(summary_file, json.dumps(summary, indent=2).encode())
        print(f"--- {stage} done in {seconds} s: {result}", flush=True)
    report = Path(config.stage_configs()["evaluate"].out_dir) / "report.md"
    if report.is_file():
        print(f"\nreport: {report}")
    return run_dir
