"""Command line: `python -m baton_trainer [STAGE] [--config FILE.yaml] [--key value ...]`.

Also `accelerate launch -m baton_trainer ...`. With no stage, `run` executes the whole BATON loop
on the embedded toy world (`baton_trainer/configs/toy.yaml`).
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

from .config import ConfigError, config_help, parse_config

CONFIG_DIR = Path(__file__).parent / "configs"

# stage -> (module, config class, function, one-line description). Each stage is one function
# with a typed config in and a folder out; stages talk only through files in a run folder.
STAGES: dict[str, tuple[str, str, str, str]] = {
    "prompts": ("baton_trainer.prompts", "PromptsConfig", "build_captions", "label groups x conjunctions -> RUN/captions.jsonl"),
    "generate": ("baton_trainer.generate", "GenerateConfig", "generate", "k clips per caption -> RUN/generations/"),
    "annotate": ("baton_trainer.annotation_app", "AnnotateConfig", "annotate", "Gradio app for human ratings -> RUN/annotations.sqlite"),
    "export": ("baton_trainer.annotation", "ExportConfig", "export_feedback", "annotation store -> RUN/feedback/ preference dataset"),
    "reward": ("reward_hub.training", "RewardTrainingConfig", "train_reward_model", "human-rated clips -> RUN/reward_model/"),
    "label": ("reward_hub.training", "LabelConfig", "label_unrated", "reward model scores unrated clips -> RUN/reward_labeled/"),
    "finetune": ("baton_trainer.trainer", "FinetuneConfig", "finetune", "reward-weighted denoising fine-tuning -> RUN/aligned/"),
    "evaluate": ("baton_trainer.evaluation.stage", "EvaluateConfig", "evaluate", "base vs aligned metrics -> RUN/eval/"),
    "run": ("baton_trainer.pipeline", "RunConfig", "run", "the whole loop (default: the toy world)"),
    "push": ("baton_trainer.hub", "PushConfig", "push", "upload a reward model, aligned model or dataset to the Hub"),
    "import-baton": ("baton_trainer.data", "ImportBatonConfig", "import_baton_release", "BATON release JSON -> preference dataset"),
    "convert-tango": ("baton_trainer.backends.tango_original", "ConvertTangoConfig", "convert_tango", "original TANGO checkpoint -> diffusers-style folder"),
}


def _usage() -> str:
    width = max(len(s) for s in STAGES)
    rows = "\n".join(f"  {name.ljust(width)}  {desc}" for name, (*_, desc) in STAGES.items())
    return (
        "usage: python -m baton_trainer [STAGE] [--config FILE.yaml] [--key value ...]\n"
        "       accelerate launch -m baton_trainer [STAGE] ...\n\n"
        f"stages:\n{rows}\n\n"
        "With no stage, 'run' executes the whole loop on the embedded toy world.\n"
        "'python -m baton_trainer STAGE --help' lists a stage's keys."
    )


def _load_stage(stage: str):
    module_name, config_name, function_name, _ = STAGES[stage]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name) or exc.name == module_name:
            raise NotImplementedError(f"stage '{stage}' is not built yet ({module_name} does not exist)") from None
        raise
    if not hasattr(module, config_name) or not hasattr(module, function_name):
        raise NotImplementedError(f"stage '{stage}' is not built yet ({module_name}.{function_name} missing)")
    return getattr(module, config_name), getattr(module, function_name)


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
    try:
        config_cls, function = _load_stage(stage)
    except NotImplementedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    if "-h" in argv or "--help" in argv:
        print(f"usage: python -m baton_trainer {stage} [--config FILE.yaml] [--key value ...]\n\n{STAGES[stage][3]}\n\nkeys:")
        print(config_help(config_cls))
        return 0
    default_file = None
    if stage == "run" and "--config" not in argv and not any(a.startswith("--config=") for a in argv):
        default_file = CONFIG_DIR / "toy.yaml"
    try:
        config = parse_config(config_cls, argv, default_file=default_file)
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
