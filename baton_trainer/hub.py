"""The `push` stage: share a reward model, an aligned model or a preference dataset on the Hub.

    python -m baton_trainer push RUN/reward_model --repo_id me/baton-reward --run_dir RUN
    python -m baton_trainer push RUN/feedback --repo_id me/baton-feedback --private
    python -m baton_trainer push RUN/reward_model --repo_id file:///tmp/share   # a local folder

Every upload gets a card written from the run (base model, data, metrics, license, how to load).
Datasets saved with `save_to_disk` are uploaded as parquet, the layout `datasets.load_dataset`
reads from the Hub. A `file://` destination writes the same files to a folder (no network, no
token), which tests and air-gapped clusters use.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .audio import atomic_folder

KINDS = ("auto", "reward_model", "model", "dataset")


class PushError(ValueError):
    """A push that cannot proceed; the message names the folder, repo or setting."""


@dataclass
class PushConfig:
    path: str = field(default="", metadata={"positional": True, "help": "folder to upload (RUN/reward_model, RUN/aligned, RUN/feedback, ...)"})
    repo_id: str = field(default="", metadata={"help": "Hub repo 'owner/name', or file:///folder to write a local copy"})
    kind: Literal["auto", "reward_model", "model", "dataset"] = field(default="auto", metadata={"help": "what the folder holds (auto: detect)"})
    private: bool = field(default=False, metadata={"help": "create the Hub repo as private"})
    token: str | None = field(default=None, metadata={"help": "Hub token (default: HF_TOKEN, then the saved login)"})
    run_dir: str | None = field(default=None, metadata={"help": "run folder whose files describe the upload in its card"})
    license: str = field(default="cc-by-nc-4.0", metadata={"help": "license in the card (match your base model and data)"})
    base_model: str | None = field(default=None, metadata={"help": "base model named in the card (default: read from the folder)"})
    commit_message: str | None = field(default=None, metadata={"help": "Hub commit message"})
    split: str = field(default="train", metadata={"help": "split name for a dataset upload"})


def detect_kind(folder: Path) -> str:
    config = folder / "config.json"
    if config.is_file():
        try:
            model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
        except json.JSONDecodeError:
            model_type = None
        if model_type == "baton_reward":
            return "reward_model"
    if any((folder / name).is_file() for name in ("dataset_info.json", "state.json", "dataset_dict.json")):
        return "dataset"
    if any(folder.rglob("*.parquet")) and not any(folder.rglob("*.safetensors")):
        return "dataset"
    return "model"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except json.JSONDecodeError:
        return {}


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else ("n/a" if value is None else str(value))


def _hub_id(value: Any) -> str | None:
    """Only Hub ids (owner/name) go into card metadata; local paths do not resolve there."""
    if isinstance(value, str) and value.count("/") == 1 and not Path(value).exists() and not value.startswith((".", "/")):
        return value
    return None


def reward_model_card(folder: Path, config: PushConfig, repo_id: str):
    from huggingface_hub import ModelCard, ModelCardData

    model_config = _read_json(folder / "config.json")
    metrics = _read_json(folder / "metrics.json")
    clap = config.base_model or model_config.get("clap_model_name_or_path") or "laion/clap-htsat-unfused"
    feedback = metrics.get("feedback", "human ratings")
    val = metrics.get("validation", {})
    rows = [
        f"| {name} | {_fmt(m.get('count'))} | {_fmt(m.get('accuracy'))} | {_fmt(m.get('auc'))} | {_fmt(m.get('bce'))} |"
        for name, m in val.items()
    ]
    table = "\n".join(["| split | clips | accuracy | AUC | BCE |", "|---|---|---|---|---|", *rows]) if rows else "No metrics recorded."
    data = ModelCardData(
        license=config.license,
        library_name="transformers",
        base_model=_hub_id(clap),
        datasets=[_hub_id(feedback)] if _hub_id(feedback) else None,
        tags=["baton", "reward-model", "text-to-audio", "clap", "rlhf"],
    )
    content = f"""---
{data.to_yaml()}
---

# BATON reward model

Scores how well a generated audio clip matches its caption, r(caption, clip) in [0, 1], after
BATON (Liao et al., IJCAI 2024, arXiv 2402.00744): frozen CLAP text and audio encoders
(`{clap}`), L2-normalised embeddings concatenated [audio, text] -> Linear -> ReLU -> Linear ->
sigmoid, trained with binary cross-entropy on human ratings (1 aligned, 0 not aligned).

Clips are resampled to 48 kHz and the first 10 s are kept (shorter clips are zero-padded), so
the same clip always gets the same reward.

## Training data

Human-rated clips from `{feedback}`; validation holds out whole captions
({_fmt(metrics.get('split', {}).get('validation_captions'))} captions,
{_fmt(metrics.get('split', {}).get('validation_clips'))} clips).

## Validation metrics

{table}

![Predicted rewards on held-out clips by human label](reward_histogram.png)

## How to use

With only `transformers` installed (runs the pipeline code stored in this repo):

```python
from transformers import pipeline

scorer = pipeline("text-audio-reward", model="{repo_id}", trust_remote_code=True)
scorer({{"caption": "a dog barks then a car passes", "audio": waveform, "sampling_rate": 16000}})
# {{'score': 0.87}}
```

With the `baton-trainer` package (no remote code):

```python
import reward_hub

model = reward_hub.load("{repo_id}")
rewards = model.score(captions, waveforms, sampling_rate=16000)
```

## License

{config.license}. The CLAP weights inside keep their own license; check it and the license of
the rated audio before redistributing.
"""
    return ModelCard(content)


def aligned_model_card(folder: Path, config: PushConfig, repo_id: str):
    from huggingface_hub import ModelCard, ModelCardData

    info: dict[str, Any] = {}
    for name in ("training_config.json", "finetune_config.json", "config.json", "run_info.json"):
        info.update({k: v for k, v in _read_json(folder / name).items() if k not in info})
    base = config.base_model or info.get("base_model") or info.get("pretrained_model_name_or_path") or info.get("model")
    data_source = info.get("feedback") or info.get("human_feedback") or info.get("train_data")
    report = Path(config.run_dir) / "eval" / "report.md" if config.run_dir else None
    evaluation = report.read_text(encoding="utf-8") if report and report.is_file() else "No evaluation report was found in the run folder."
    data = ModelCardData(
        license=config.license,
        library_name="diffusers",
        base_model=_hub_id(base),
        tags=["baton", "text-to-audio", "rlhf", "diffusion"],
    )
    content = f"""---
{data.to_yaml()}
---

# BATON-aligned text-to-audio model

Fine-tuned from `{base or 'unknown base model'}` with BATON's reward-weighted denoising loss
(Liao et al., IJCAI 2024): human-rated and reward-model-rated clips weight the diffusion loss,
and a pretraining term (beta) keeps the model close to its original data.

Feedback data: `{data_source or 'see the training config'}`.

## Evaluation

{evaluation}

## How to use

```python
# with the baton-trainer package
python -m baton_trainer evaluate --aligned {repo_id}
```

The folder holds the weights and the training config; see `training_config.json` for the full
settings and seeds.

## License

{config.license} (it must be compatible with the base model's license).
"""
    return ModelCard(content)


def dataset_card(ds, config: PushConfig, repo_id: str):
    from huggingface_hub import DatasetCard, DatasetCardData

    counts: dict[str, int] = {}
    columns = set(ds.column_names)
    if {"source", "feedback"} <= columns:
        for source, feedback in zip(list(ds["source"]), list(ds["feedback"])):
            key = f"{source}, feedback {feedback}"
            counts[key] = counts.get(key, 0) + 1
    tasks: dict[str, int] = {}
    for task in list(ds["task"]) if "task" in columns else []:
        tasks[task] = tasks.get(task, 0) + 1
    count_rows = "\n".join(f"| {k} | {v} |" for k, v in sorted(counts.items())) or "| (none) | 0 |"
    task_rows = "\n".join(f"| {k} | {v} |" for k, v in sorted(tasks.items())) or "| (none) | 0 |"
    data = DatasetCardData(
        license=config.license,
        task_categories=["text-to-audio"],
        tags=["baton", "human-feedback", "audio", "preference"],
        size_categories=["n<1K" if len(ds) < 1000 else "1K<n<10K" if len(ds) < 10_000 else "10K<n<100K"],
    )
    content = f"""---
{data.to_yaml()}
---

# BATON preference dataset

(caption, clip) pairs with binary alignment feedback for text-to-audio models, after BATON
(Liao et al., IJCAI 2024). {len(ds)} rows.

| source, feedback | rows |
|---|---|
{count_rows}

| task | rows |
|---|---|
{task_rows}

## Columns

- `caption` (str), `audio` (16 kHz wav bytes), `feedback` (int8: 1 aligned, 0 not, -1 unrated),
  `reward` (float32 in [0, 1], the training weight), `source` ("human" or "reward_model"),
  `task` ("integrity": all events present; "temporal": events in order), `labels` (the event
  labels in intended order), `caption_id`, `clip_index`, `annotator`.

## How to load

```python
from baton_trainer.data import load_preference_dataset
ds = load_preference_dataset("{repo_id}")
```

or with `datasets` alone: `datasets.load_dataset("{repo_id}", split="{config.split}")` (read the
`audio` column undecoded, e.g. `ds.cast_column("audio", Audio(decode=False))`, and decode the
bytes with soundfile if torchcodec is not installed).

## License

{config.license}. The audio was generated by a text-to-audio model; its license applies too.
"""
    return DatasetCard(content)


def resolve_token(config: PushConfig) -> str:
    token = config.token or os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if not token:
        from huggingface_hub import get_token

        token = get_token()
    if not token:
        raise PushError(
            f"no Hugging Face token to push to '{config.repo_id}': set HF_TOKEN, run `hf auth login`, or pass --token"
        )
    return token


def _local_destination(repo_id: str) -> Path | None:
    if repo_id.startswith("file://"):
        return Path(repo_id[len("file://") :])
    return None


def _stage_dataset(folder: Path, config: PushConfig, staging: Path):
    """Parquet shards under data/ (the Hub layout for datasets) and the loaded dataset for the card."""
    from baton_trainer.data import load_preference_dataset

    try:
        ds = load_preference_dataset(str(folder), split=config.split)
    except ValueError:
        import datasets  # not a preference dataset: push it as it is

        ds = datasets.load_from_disk(str(folder))
    data_dir = staging / "data"
    data_dir.mkdir(parents=True)
    rows_per_shard = 500
    shards = max(1, -(-len(ds) // rows_per_shard))
    for i in range(shards):
        part = ds.shard(num_shards=shards, index=i, contiguous=True)
        part.to_parquet(str(data_dir / f"{config.split}-{i:05d}-of-{shards:05d}.parquet"))
    return ds


def push(config: PushConfig) -> str:
    """The `push` stage: upload `config.path` with a generated card; returns the repo URL or folder."""
    if not config.path:
        raise PushError("push: give the folder to upload (e.g. RUN/reward_model)")
    if not config.repo_id:
        raise PushError("push: --repo_id is required ('owner/name' on the Hub, or file:///folder)")
    folder = Path(config.path)
    if not folder.is_dir():
        raise PushError(f"{folder}: folder to push not found")
    kind = detect_kind(folder) if config.kind == "auto" else config.kind
    destination = _local_destination(config.repo_id)
    card_repo_id = config.repo_id if destination is None else str(destination)
    token = None if destination is not None else resolve_token(config)

    with tempfile.TemporaryDirectory(prefix="baton-push-") as tmp:
        staging = Path(tmp) / "upload"
        if kind == "dataset":
            ds = _stage_dataset(folder, config, staging)
            card = dataset_card(ds, config, card_repo_id)
        else:
            shutil.copytree(folder, staging, ignore=shutil.ignore_patterns(".*", "__pycache__"))
            card = (reward_model_card if kind == "reward_model" else aligned_model_card)(folder, config, card_repo_id)
        (staging / "README.md").write_text(str(card), encoding="utf-8")

        if destination is not None:
            with atomic_folder(destination) as partial:
                shutil.copytree(staging, partial, dirs_exist_ok=True)
            print(f"{kind} from {folder} written to {destination}")
            return str(destination)

        from huggingface_hub import HfApi

        api = HfApi(token=token)
        repo_type = "dataset" if kind == "dataset" else "model"
        url = api.create_repo(config.repo_id, private=config.private, repo_type=repo_type, exist_ok=True)
        api.upload_folder(
            repo_id=config.repo_id,
            folder_path=str(staging),
            repo_type=repo_type,
            commit_message=config.commit_message or f"Upload BATON {kind.replace('_', ' ')}",
        )
        print(f"{kind} from {folder} pushed to {url}")
        return str(url)
