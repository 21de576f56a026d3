"""Hub cards for what the `push` stage uploads: `huggingface_hub.ModelCard` / `DatasetCard` from
the templates in `card_templates/`, with the run's numbers as machine-readable `EvalResult`
entries in the card metadata (the Hub's model-index), so leaderboards and search can read them."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from huggingface_hub import DatasetCard, DatasetCardData, EvalResult, ModelCard, ModelCardData

from .backends import EXPORT_FILE
from .formatting import format_number
from .hub import is_hub_id
from .textfiles import read_json

TEMPLATES = Path(__file__).parent / "card_templates"

# evaluation metric key -> (name on the card, scale the card shows it at)
CARD_METRICS = {
    "integrity_accuracy": ("integrity accuracy (%)", 100.0),
    "temporal_accuracy": ("temporal accuracy (%)", 100.0),
    "clap_score": ("CLAP score (x100)", 100.0),
    "fd": ("FD", 1.0),
    "fad": ("FAD", 1.0),
    "kl": ("KL", 1.0),
    "is": ("IS", 1.0),
    "event_presence": ("event presence (%)", 100.0),
    "event_order": ("event order (%)", 100.0),
    "event_parsimony": ("event parsimony (%)", 100.0),
    "mos_q": ("MOS-Q (1-5)", 1.0),
    "mos_f": ("MOS-F (1-5)", 1.0),
    "ab_win_rate": ("A/B win rate (%)", 100.0),
}


def _hub_id(value: Any) -> str | None:
    """Only Hub ids (owner/name) go into card metadata; local paths do not resolve there."""
    return value if is_hub_id(value) else None


def reward_model_card(folder: Path, repo_id: str, license: str, base_model: str | None = None):
    model_config = read_json(folder / "config.json")
    metrics = read_json(folder / "metrics.json")
    clap = base_model or model_config.get("clap_model_name_or_path") or "laion/clap-htsat-unfused"
    feedback = metrics.get("feedback", "human ratings")
    validation = metrics.get("validation", {})
    rows = [
        f"| {name} | {format_number(m.get('count'))} | {format_number(m.get('accuracy'))} | {format_number(m.get('auc'))} | {format_number(m.get('bce'))} |"
        for name, m in validation.items()
    ]
    table = "\n".join(["| split | clips | accuracy | AUC | BCE |", "|---|---|---|---|---|", *rows]) if rows else "No metrics recorded."
    overall = validation.get("overall", {})
    eval_results = [
        EvalResult(
            task_type="text-audio-reward",
            dataset_type="baton-ratings",
            dataset_name=f"held-out captions of {feedback}",
            dataset_split="validation",
            metric_type=key,
            metric_name=name,
            metric_value=float(overall[key]),
        )
        for key, name in (("accuracy", "accuracy"), ("auc", "ROC AUC"))
        if overall.get(key) is not None
    ]
    head = "sigmoid(w * CLAP cosine + b)" if model_config.get("head_type") == "cosine_logistic" else "Linear -> ReLU -> Linear -> sigmoid"
    data = ModelCardData(
        license=license,
        library_name="transformers",
        base_model=_hub_id(clap),
        datasets=[_hub_id(feedback)] if _hub_id(feedback) else None,
        tags=["baton", "reward-model", "text-to-audio", "clap", "rlhf"],
        model_name=repo_id.split("/")[-1] if eval_results else None,
        eval_results=eval_results or None,
    )
    split = metrics.get("split", {})
    return ModelCard.from_template(
        data,
        template_path=str(TEMPLATES / "reward_model.md"),
        clap=clap,
        head=head,
        feedback=feedback,
        validation_captions=format_number(split.get("validation_captions")),
        validation_clips=format_number(split.get("validation_clips")),
        metrics_table=table,
        repo_id=repo_id,
        license=license,
    )


def aligned_model_card(folder: Path, repo_id: str, license: str, base_model: str | None = None, eval_dir: Path | None = None):
    config = read_json(folder / "finetune_config.json")
    export = read_json(folder / EXPORT_FILE)
    base = base_model or export.get("base") or config.get("model")
    feedback = config.get("feedback_dataset") or "the run's human ratings (RUN/feedback)"
    evaluation = read_json(eval_dir / "metrics.json") if eval_dir else {}
    models = [m for m in ("base", "aligned") if isinstance(evaluation.get(m), dict)]
    shown = [k for k in CARD_METRICS if any(k in evaluation[m] for m in models)]
    if shown:
        lines = ["| metric | " + " | ".join(models) + " |", "|---|" + "---:|" * len(models)]
        for key in shown:
            name, scale = CARD_METRICS[key]
            cells = [format_number(evaluation[m][key] * scale, 2) if isinstance(evaluation[m].get(key), (int, float)) else "n/a" for m in models]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        info = evaluation.get("info", {})
        lines += [
            "",
            f"On {info.get('clips_per_model', '?')} clips per model of the `{info.get('captions', '?')}` captions, "
            f"{info.get('steps', '?')} sampling steps, guidance {info.get('guidance', '?')}, seed {info.get('seed', '?')}; "
            "definitions in the run's `eval/report.md`.",
        ]
        table = "\n".join(lines)
    else:
        table = "No evaluation was found in the run folder."
    captions = str(evaluation.get("info", {}).get("captions", ""))
    dataset_name = "AudioCaps test captions (BATON 2- and 3-label lists)" if captions == "paper" else f"held-out captions ({captions or 'run'})"
    aligned = evaluation.get("aligned", {}) if "aligned" in models else {}
    eval_results = [
        EvalResult(
            task_type="text-to-audio",
            dataset_type="baton-eval",
            dataset_name=dataset_name,
            metric_type=key,
            metric_name=CARD_METRICS[key][0],
            metric_value=float(aligned[key]),
        )
        for key in shown
        if isinstance(aligned.get(key), (int, float))
    ]
    data = ModelCardData(
        license=license,
        library_name="diffusers",
        base_model=_hub_id(base),
        tags=["baton", "text-to-audio", "rlhf", "diffusion"],
        model_name=repo_id.split("/")[-1] if eval_results else None,
        eval_results=eval_results or None,
    )
    mode = {"lora": "a LoRA adapter of the denoiser", "full": "the fine-tuned denoiser"}.get(export.get("mode"), "the trained export")
    return ModelCard.from_template(
        data,
        template_path=str(TEMPLATES / "aligned_model.md"),
        base=base or "the base model",
        mode=mode,
        feedback=feedback,
        evaluation=table,
        repo_id=repo_id,
        license=license,
        diffusers_usage=diffusers_usage(base or "BASE_MODEL", repo_id, export),
    )


def diffusers_usage(base: str, repo_id: str, export: dict) -> str:
    """Python lines that load the export with diffusers (and peft) alone, for the export's pipeline
    class: the pipeline's own LoRA loader where it has one, else the peft lines of docs/backends.md;
    a full export as the pipeline's denoiser component."""
    import diffusers  # lazy: cards are written at push time only

    pipeline, denoiser, mode = export.get("pipeline"), export.get("denoiser"), export.get("mode")
    if not pipeline or not denoiser or mode not in ("lora", "full"):
        return "This export does not name its pipeline class: load it with `baton-trainer` as above."
    component = "unet" if "UNet" in denoiser else "transformer"
    if hasattr(diffusers, pipeline):
        imports, opened, has_loader = (
            [f"from diffusers import {pipeline}"],
            f'pipe = {pipeline}.from_pretrained("{base}"',
            hasattr(getattr(diffusers, pipeline), "load_lora_weights"),
        )
    else:  # a pipeline whose code travels in the base model's folder (TANGO's), with diffusers' LoRA loader
        imports, opened, has_loader = (
            ["from diffusers import DiffusionPipeline"],
            f'pipe = DiffusionPipeline.from_pretrained("{base}", trust_remote_code=True',
            True,
        )
    if pipeline == "AudioLDM2Pipeline":  # its published folders name GPT2Model, which has no generation helpers in transformers 5
        imports.append("from transformers import GPT2LMHeadModel")
        opened += f', language_model=GPT2LMHeadModel.from_pretrained("{base}", subfolder="language_model")'
    if mode == "full":
        lines = [*imports, f"from diffusers import {denoiser}", "", f'{component} = {denoiser}.from_pretrained("{repo_id}", subfolder="{component}")']
        lines.append(f"{opened}, {component}={component})")
    elif has_loader:
        lines = [*imports, "", f"{opened})", f'pipe.load_lora_weights("{repo_id}")']
    else:  # the pipeline has no LoRA loader: the adapter's config and weights through peft
        lines = [
            "import json",
            "",
            "from diffusers.utils import convert_unet_state_dict_to_peft",
            "from huggingface_hub import hf_hub_download",
            "from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict",
            "from safetensors import safe_open",
            *imports,
            "",
            f"{opened})",
            f'path = hf_hub_download("{repo_id}", "pytorch_lora_weights.safetensors")',
            'with safe_open(path, framework="pt") as f:',
            '    meta = json.loads(f.metadata()["lora_adapter_metadata"])',
            f'    state = {{k.removeprefix("{component}."): f.get_tensor(k) for k in f.keys()}}',
            f'config = LoraConfig(r=meta["{component}.r"], lora_alpha=meta["{component}.lora_alpha"], target_modules=meta["{component}.target_modules"])',
            f"inject_adapter_in_model(config, pipe.{component})",
            f"set_peft_model_state_dict(pipe.{component}, convert_unet_state_dict_to_peft(state))",
        ]
    return "```python\n" + "\n".join(lines) + "\n```"


def dataset_card(ds, repo_id: str, license: str, split: str):
    columns = set(ds.column_names)
    counts = Counter(f"{s}, feedback {f}" for s, f in zip(ds["source"], ds["feedback"])) if {"source", "feedback"} <= columns else Counter()
    tasks = Counter(ds["task"]) if "task" in columns else Counter()
    data = DatasetCardData(
        license=license,
        task_categories=["text-to-audio"],
        tags=["baton", "human-feedback", "audio", "preference"],
        size_categories=["n<1K" if len(ds) < 1000 else "1K<n<10K" if len(ds) < 10_000 else "10K<n<100K"],
    )
    return DatasetCard.from_template(
        data,
        template_path=str(TEMPLATES / "dataset.md"),
        rows=len(ds),
        count_rows="\n".join(f"| {k} | {v} |" for k, v in sorted(counts.items())) or "| (none) | 0 |",
        task_rows="\n".join(f"| {k} | {v} |" for k, v in sorted(tasks.items())) or "| (none) | 0 |",
        repo_id=repo_id,
        split=split,
        license=license,
    )
