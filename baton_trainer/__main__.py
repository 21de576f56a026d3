"""Command line: `python -m baton_trainer [STAGE] [--config FILE.yaml] [--key value ...]`.

Also `accelerate launch -m baton_trainer ...`. With no stage, `run` executes the whole BATON loop
on the embedded toy world (`baton_trainer/configs/toy.yaml`).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .config import ConfigError, config_help, parse_config
from .stages import annotate, convert_tango, evaluate, export, finetune, generate, import_baton, label, listen, plan, prompts, push, reward, run, users

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass(frozen=True)
class Stage:
    config: type
    function: Callable[[Any], Any]
    summary: str


STAGES: dict[str, Stage] = {
    "prompts": Stage(prompts.PromptsConfig, prompts.build_captions, "label groups x conjunctions -> RUN/captions.jsonl"),
    "generate": Stage(generate.GenerateConfig, generate.generate, "k clips per caption -> RUN/generations/"),
    "annotate": Stage(annotate.AnnotateConfig, annotate.annotate, "Gradio app for human ratings -> RUN/annotations.sqlite"),
    "export": Stage(export.ExportConfig, export.export_feedback, "annotation store -> RUN/feedback/ preference dataset"),
    "reward": Stage(reward.RewardTrainingConfig, reward.train_reward_model, "human-rated clips -> RUN/reward_model/"),
    "label": Stage(label.LabelConfig, label.label_unrated, "reward model scores unrated clips -> RUN/reward_labeled/"),
    "finetune": Stage(finetune.FinetuneConfig, finetune.finetune, "reward-weighted denoising fine-tuning -> RUN/aligned/"),
    "evaluate": Stage(evaluate.EvaluateConfig, evaluate.evaluate, "base vs aligned metrics -> RUN/eval/"),
    "listen": Stage(listen.ListenConfig, listen.listen, "blinded listening test (MOS-Q, MOS-F, A/B) over RUN/eval/clips/"),
    "users": Stage(users.UsersConfig, users.add_login, "add a login with a bcrypt-hashed password to a users file"),
    "run": Stage(run.RunConfig, run.run, "the whole loop (default: the toy world)"),
    "push": Stage(push.PushConfig, push.push, "upload a reward model, aligned model or dataset to the Hub"),
    "import-baton": Stage(import_baton.ImportBatonConfig, import_baton.import_baton_release, "BATON release JSON -> preference dataset"),
    "plan": Stage(plan.PlanConfig, plan.plan, "memory of full, LoRA and online fine-tuning, from the model's configs alone"),
    "convert-tango": Stage(convert_tango.ConvertTangoConfig, convert_tango.convert_tango, "original TANGO checkpoint -> diffusers-style folder"),
}


def _usage() -> str:
    width = max(len(s) for s in STAGES)
    rows = "\n".join(f"  {name.ljust(width)}  {stage.summary}" for name, stage in STAGES.items())
    return (
        "usage: python -m baton_trainer [STAGE] [--config FILE.yaml] [--key value ...]\n"
        "       accelerate launch -m baton_trainer [STAGE] ...\n\n"
        f"stages:\n{rows}\n\n"
        "With no stage, 'run' executes the whole loop on the embedded toy world.\n"
        "'python -m baton_trainer STAGE --help' lists a stage's keys."
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    stage = "run"
    if argv and not argv[0].startswith("-"):
        stage = argv.pop(0)
    if stage not in STAGES:
        print(f"error: unknown stage '{stage}'\n\n{_usage()}", file=sys.stderr)
        return 2
    config_cls, function = STAGES[stage].config, STAGES[stage].function
    if "-h" in argv or "--help" in argv:
        print(f"usage: python -m baton_trainer {stage} [--config FILE.yaml] [--key value ...]\n\n{STAGES[stage].summary}\n\nkeys:")
        print(config_help(config_cls))
        return 0
    default_file = None
    if stage == "run" and "--config" not in argv and not any(a.startswith("--config=") for a in argv):
        default_file = CONFIG_DIR / "toy.yaml"
    try:
        config = parse_config(config_cls, argv, default_file=default_file)
        from .runtime import use_the_cores_accelerate_launch_took  # here, not at the top: `--help` stays fast without torch

        threads = use_the_cores_accelerate_launch_took()
        if threads:
            print(f"accelerate launch gave this single CPU process 1 thread (OMP_NUM_THREADS=1): using {threads}, one per core", file=sys.stderr)
        function(config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished work is kept; rerun the same command to resume", file=sys.stderr)
        return 130
    except (ValueError, OSError, RuntimeError) as exc:
        # Bad input (a file, row, key, or setting) is one line naming it; BATON_DEBUG=1 shows the traceback.
        if os.environ.get("BATON_DEBUG"):
            raise
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
