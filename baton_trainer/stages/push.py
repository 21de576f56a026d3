"""The `push` stage: share a reward model, an aligned model or a preference dataset on the Hub.

    python -m baton_trainer push RUN/reward_model --repo_id me/baton-reward --run_dir RUN
    python -m baton_trainer push RUN/feedback --repo_id me/baton-feedback --private
    python -m baton_trainer push RUN/reward_model --repo_id file:///tmp/share   # a local folder

Every upload gets a card written from the run (base model, data, metrics as machine-readable
results, license, how to load; `baton_trainer.cards`). Datasets saved with `save_to_disk` are
uploaded as parquet, the layout `datasets.load_dataset` reads from the Hub. A `file://`
destination writes the same files to a folder (no network, no token), which tests and air-gapped
clusters use.

Imports inside the functions keep `python -m baton_trainer --help` fast: the CLI imports every
stage module at start.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..layout import RunLayout

KINDS = ("auto", "reward_model", "model", "dataset")


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


def push(config: PushConfig) -> str:
    """Upload `config.path` with a generated card; returns the repo URL or the local folder."""

    from ..atomic import atomic_folder
    from ..backends.base import EXPORT_FILE
    from ..cards import aligned_model_card, dataset_card, reward_model_card
    from ..hub import PushError, detect_kind, resolve_token, stage_dataset_as_parquet, upload_folder

    if not config.path:
        raise PushError("push: give the folder to upload (e.g. RUN/reward_model)")
    if not config.repo_id:
        raise PushError("push: --repo_id is required ('owner/name' on the Hub, or file:///folder)")
    folder = Path(config.path)
    if not folder.is_dir():
        raise PushError(f"{folder}: folder to push not found")
    kind = detect_kind(folder) if config.kind == "auto" else config.kind
    if kind == "model" and (folder / "finetune_config.json").is_file() and not (folder / EXPORT_FILE).is_file():
        raise PushError(f"{folder}: a fine-tune's folder without {EXPORT_FILE}: its export did not finish (rerun finetune to complete it)")
    destination = Path(config.repo_id[len("file://") :]) if config.repo_id.startswith("file://") else None
    card_repo_id = config.repo_id if destination is None else str(destination)
    token = None if destination is not None else resolve_token(config.token, config.repo_id)

    with tempfile.TemporaryDirectory(prefix="baton-push-") as tmp:
        staging = Path(tmp) / "upload"
        if kind == "dataset":
            ds = stage_dataset_as_parquet(folder, config.split, staging)
            card = dataset_card(ds, card_repo_id, config.license, config.split)
        else:
            shutil.copytree(folder, staging, ignore=shutil.ignore_patterns(".*", "__pycache__", "checkpoints", "logs"))
            if kind == "reward_model":
                card = reward_model_card(folder, card_repo_id, config.license, config.base_model)
            else:
                eval_dir = RunLayout.of(config.run_dir).eval if config.run_dir else None
                card = aligned_model_card(folder, card_repo_id, config.license, config.base_model, eval_dir)
        (staging / "README.md").write_text(str(card), encoding="utf-8")

        if destination is not None:
            with atomic_folder(destination) as partial:
                shutil.copytree(staging, partial, dirs_exist_ok=True)
            print(f"{kind} from {folder} written to {destination}")
            return str(destination)
        repo_type = "dataset" if kind == "dataset" else "model"
        url = upload_folder(staging, config.repo_id, repo_type, config.private, token, config.commit_message or f"Upload BATON {kind.replace('_', ' ')}")
        print(f"{kind} from {folder} pushed to {url}")
        return url
