"""The `run` stage: the whole BATON loop, one stage after another, in one run folder.

    prompts -> generate -> ratings -> export -> reward -> label -> finetune [-> online rounds] -> evaluate

In the toy world (`world: toy`, the default of `accelerate launch -m baton_trainer`) the oracle
annotator rates a share of the clips as people would, through the same annotation store; with a
real model (`world: real`) the run stops after generation and asks for ratings from the
`annotate` app, then continues from there when started again. Every stage keeps its output, so a
killed run resumes where it stopped: rerun the same command. A stage's output moved by its config
(`--reward.output_dir X`) is where every later stage looks for it.

Imports inside the functions keep `python -m baton_trainer --help` fast: the CLI imports every
stage module at start.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..config import build_config
from ..layout import RunLayout
from .evaluate import EvaluateConfig, evaluate
from .export import ExportConfig, export_feedback
from .finetune import FinetuneConfig, finetune
from .generate import GenerateConfig, generate
from .label import LabelConfig, label_unrated
from .prompts import PromptsConfig, build_captions
from .reward import RewardTrainingConfig, train_reward_model

TOY_PRETRAINED = Path(__file__).resolve().parents[1] / "toyworld" / "pretrained"
TOY_MODELS = ("toy_tango", "toy_flow")  # shipped base models a toy run names by folder name
STAGE_ORDER = ("prompts", "generate", "ratings", "export", "reward", "label", "finetune", "evaluate")


@dataclass
class RunConfig:
    run_dir: str = field(default="runs/toy", metadata={"help": "the run folder every stage reads and writes"})
    world: Literal["toy", "real"] = field(default="toy", metadata={"help": "toy: the embedded world with the oracle as annotator"})
    model: str | None = field(
        default=None, metadata={"help": "base text-to-audio model (default: the shipped toy TANGO; toy_flow: the shipped toy flow model)"}
    )
    clap_model: str | None = field(default=None, metadata={"help": "CLAP for the reward model and CLAP score (default: the toy CLAP)"})
    seed: int = 0
    stages: list[str] = field(default_factory=lambda: list(STAGE_ORDER), metadata={"help": "stages to run, in order"})
    rated_fraction: float = field(default=0.1, metadata={"help": "toy: share of the clips or captions the oracle rates (the rest get reward labels)"})
    rate_by: Literal["clip", "caption"] = field(
        default="caption", metadata={"help": "toy: rate a random share of all clips, or all clips of a random share of the captions"}
    )
    oracle_error_rate: float = field(default=0.0, metadata={"help": "toy: chance that the oracle answers wrongly"})
    oracle_skip_rate: float = field(default=0.0, metadata={"help": "toy: chance that the oracle skips a clip"})
    rounds: int = field(
        default=1,
        metadata={
            "help": "online rounds: after the fine-tune, R - 1 more of fresh clips from the current model, reward labels and a fine-tune from its weights"
        },
    )
    round_ratings: int = field(default=0, metadata={"help": "toy: new oracle ratings per online round (the rating budget)"})
    judge_model: str | None = field(default=None, metadata={"help": "real models: the held-out judge of the rounds, a reward model other than the run's"})
    judge_split: Literal["train", "heldout"] = field(
        default="train", metadata={"help": "captions the rounds' judge hears, on fresh seeds (train: the held-out ones stay for the final evaluation)"}
    )
    judge_clips_per_caption: int = field(default=4, metadata={"help": "clips per caption the rounds' judge hears"})
    stop_margin_se: float = field(
        default=1.0,
        metadata={"help": "online rounds stop when the judge falls by more than this many standard errors while the training reward rises (0: any fall)"},
    )
    judge_captions: int | None = field(default=None, metadata={"help": "at most this many captions for the rounds' judge (default all)"})
    pretrain_clips: int = field(default=512, metadata={"help": "toy: rendered (caption, audio) clips for the pretraining term (pretrain_weight)"})
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
        if self.rounds < 1 or self.round_ratings < 0:
            raise ValueError(f"config keys 'rounds' (>= 1) and 'round_ratings' (>= 0): got {self.rounds} and {self.round_ratings}")
        if self.world == "real" and self.rounds > 1 and not self.judge_model:
            raise ValueError("online rounds on a real model need a held-out judge that is not the training reward: --judge_model REWARD_MODEL_FOLDER")
        if self.world == "real" and self.round_ratings:
            raise ValueError(
                "round_ratings: new ratings each round come from the toy world's oracle; with a real model, rate with the annotate app between runs"
            )
        if self.world == "toy":
            self.model = str(TOY_PRETRAINED / (self.model or "toy_tango")) if self.model in (None, *TOY_MODELS) else self.model
            self.clap_model = self.clap_model or str(TOY_PRETRAINED / "toy_clap")
        elif not self.model:
            raise ValueError("world 'real' needs a model (e.g. --model declare-lab/tango-full-ft-audiocaps)")
        self.clap_model = self.clap_model or "laion/clap-htsat-unfused"
        # Build every stage config now: a wrong key fails before hours of work, not after.
        self.stage_configs()

    def layout(self) -> RunLayout:
        """The run folder with every output a stage config moved."""
        return RunLayout.of(
            self.run_dir,
            generations=self.generate.get("out_dir"),
            annotations=self.export.get("store"),
            feedback=self.export.get("out"),
            reward_model=self.reward.get("output_dir"),
            reward_labeled=self.label.get("output_dir"),
            aligned=self.finetune.get("output_dir"),
            eval=self.evaluate.get("out_dir"),
        )

    def stage_configs(self) -> dict[str, Any]:
        """Each stage's config: the run's model, seed and layout first, then the stage's own keys."""

        layout, toy = self.layout(), self.world == "toy"
        paths = {name: str(getattr(layout, name)) for name in ("generations", "annotations", "feedback", "reward_model", "reward_labeled", "aligned")}
        defaults = {
            "prompts": (PromptsConfig, {"seed": self.seed, **({"labels_file": str(layout.toy_labels)} if toy else {})}),
            "generate": (GenerateConfig, {"model": self.model, "seed": self.seed, "split": "train"}),
            "export": (ExportConfig, {"generations_dir": paths["generations"]}),
            "reward": (RewardTrainingConfig, {"clap_model": self.clap_model, "seed": self.seed, "feedback": paths["feedback"]}),
            "label": (LabelConfig, {"generations": paths["generations"], "feedback": paths["feedback"], "reward_model": paths["reward_model"]}),
            "finetune": (
                FinetuneConfig,
                {
                    "model": self.model,
                    "seed": self.seed,
                    "feedback_dataset": paths["feedback"],
                    # moved reward labels are passed on; by default finetune takes RUN/reward_labeled if it is there
                    **({"reward_dataset": paths["reward_labeled"]} if self.label.get("output_dir") else {}),
                    **({"pretrain_dataset": str(layout.pretrain)} if toy else {}),
                },
            ),
            "evaluate": (
                EvaluateConfig,
                {
                    "model": self.model,
                    "clap_model": self.clap_model,
                    "aligned": paths["aligned"],
                    "reward_model": paths["reward_model"],
                    "seed": self.seed + 1000,  # evaluation seeds differ from the seeds of the training clips
                    **({"captions": "heldout", "oracle": True, "fd_embedding": "clap", "reference_audio": str(layout.reference)} if toy else {}),
                },
            ),
        }
        configs = {}
        for name, (cls, base) in defaults.items():
            values = {"run_dir": self.run_dir, **base, **getattr(self, name)}
            configs[name] = build_config(cls, values, prefix=f"{name}.")
        return configs


def run(config: RunConfig) -> Path:
    """Every stage in `config.stages`, in order; a finished stage's output is kept."""

    from ..atomic import atomic_write_json
    from ..backends import EXPORT_FILE
    from ..toyworld.loop import check_reward_labels, oracle_ratings, write_toy_inputs

    layout = config.layout()
    layout.root.mkdir(parents=True, exist_ok=True)
    summary = json.loads(layout.run_summary.read_text()) if layout.run_summary.is_file() else {"stages": {}}
    if config.world == "toy":
        write_toy_inputs(layout, config.model, config.pretrain_clips, config.reference_clips, config.seed)
    total = len(config.stages)
    for number, stage in enumerate(config.stages, 1):
        print(f"\n=== [{number}/{total}] {stage} ===", flush=True)
        started = time.time()
        configs = config.stage_configs()
        if stage == "prompts":
            result: Any = build_captions(configs["prompts"])
        elif stage == "generate":
            result = generate(configs["generate"])
        elif stage == "ratings":
            if config.world == "toy":
                result = oracle_ratings(layout, config.rated_fraction, config.rate_by, config.oracle_error_rate, config.oracle_skip_rate, config.seed)
            elif not layout.annotations.is_file():
                print(
                    f"clips are ready in {layout.generations}. Collect ratings with\n"
                    f"  python -m baton_trainer annotate --run_dir {layout.root}\n"
                    f"then rerun this command to continue (finished stages are kept)."
                )
                break
            else:
                result = f"using the ratings in {layout.annotations}"
        elif stage == "export":
            result = export_feedback(configs["export"])
        elif stage == "reward":
            result = layout.reward_model if (layout.reward_model / "config.json").is_file() else train_reward_model(configs["reward"])
        elif stage == "label":
            # a finished labelled set is kept (its progress files are gone, so the stage itself would score every clip again)
            result = layout.reward_labeled if (layout.reward_labeled / "state.json").is_file() else label_unrated(configs["label"])
            if config.world == "toy":
                check = check_reward_labels(layout)
                if check["accuracy"] is not None:
                    result = f"{result} (the oracle agrees with {100 * check['accuracy']:.1f}% of {check['clips']} reward labels)"
        elif stage == "finetune":
            finetune_config = configs["finetune"]
            if (layout.aligned / EXPORT_FILE).is_file():
                result = layout.aligned  # already trained: keep it
            else:
                finetune_config.resume_from_checkpoint = finetune_config.resume_from_checkpoint or "latest"
                result = finetune(finetune_config)
            if config.rounds > 1:
                from ..online import run_rounds

                result = f"best of {config.rounds} rounds: {run_rounds(config, configs)}"
        else:
            evaluate_config = configs["evaluate"]
            if config.rounds > 1 and layout.rounds_summary.is_file():  # the best round is the aligned model
                evaluate_config.aligned = str(layout.root / json.loads(layout.rounds_summary.read_text())["best_export"])
            result = evaluate(evaluate_config)
        seconds = round(time.time() - started, 1)
        summary["stages"][stage] = {"seconds": seconds, "result": str(result)}
        atomic_write_json(layout.run_summary, summary)
        print(f"--- {stage} done in {seconds} s: {result}", flush=True)
    report = layout.eval / "report.md"
    if report.is_file():
        print(f"\nreport: {report}")
    return layout.root
