"""The CLI's stages, one file each: a `...Config` dataclass and the function that runs it.

Each stage takes a typed config and writes a folder; stages talk only through files in a run
folder (`baton_trainer.layout`), so any stage can be rerun, resumed, or run on another machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from . import annotate, convert_tango, evaluate, export, finetune, generate, import_baton, label, listen, prompts, push, reward, run


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
    "run": Stage(run.RunConfig, run.run, "the whole loop (default: the toy world)"),
    "push": Stage(push.PushConfig, push.push, "upload a reward model, aligned model or dataset to the Hub"),
    "import-baton": Stage(import_baton.ImportBatonConfig, import_baton.import_baton_release, "BATON release JSON -> preference dataset"),
    "convert-tango": Stage(convert_tango.ConvertTangoConfig, convert_tango.convert_tango, "original TANGO checkpoint -> diffusers-style folder"),
}

__all__ = ["STAGES", "Stage"]
