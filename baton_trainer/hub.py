"""The one place a model name becomes a local folder: a folder as it is, a Hub id through
`huggingface_hub.snapshot_download` (offline: the local cache only). Errors are one line that names
what was asked for and why it failed."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Sequence

from huggingface_hub import HfApi, get_token, snapshot_download

from .textfiles import read_json

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def is_hub_id(value: Any) -> bool:
    """True for an 'owner/name' string that is not a local path."""
    return isinstance(value, str) and bool(_HUB_ID.fullmatch(value)) and not Path(value).exists()


def resolve_folder(
    name_or_path: str | os.PathLike,
    what: str = "model",
    revision: str | None = None,
    allow_patterns: Sequence[str] | None = None,
) -> Path:
    """A local folder for `name_or_path`: the folder itself, or a snapshot of the Hub repo of that id."""
    name = str(name_or_path)
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise FileNotFoundError(f"{what} '{name}': is a file, expected a folder")
    if not is_hub_id(name):
        raise FileNotFoundError(f"{what} '{name}': not found (neither a folder nor a Hub id 'owner/name')")

    try:
        return Path(snapshot_download(name, revision=revision, allow_patterns=list(allow_patterns) if allow_patterns else None))
    except Exception as exc:  # network, auth, unknown repo, offline without a cached copy
        reason = (str(exc).splitlines() or [""])[0]
        raise FileNotFoundError(f"{what} '{name}': not a local folder and not loadable from the Hub ({type(exc).__name__}: {reason})") from None


# ----------------------------------------------------------------------------------------------
# Uploads (the `push` stage)


class PushError(ValueError):
    """A push that cannot proceed; the message names the folder, repo or setting."""


def detect_kind(folder: Path) -> str:
    """What a folder to upload holds: "reward_model", "dataset" or "model"."""

    if read_json(folder / "config.json").get("model_type") == "baton_reward":
        return "reward_model"
    if any((folder / name).is_file() for name in ("dataset_info.json", "state.json", "dataset_dict.json")):
        return "dataset"
    if any(folder.rglob("*.parquet")) and not any(folder.rglob("*.safetensors")):
        return "dataset"
    return "model"


def resolve_token(token: str | None, repo_id: str) -> str:
    """The token given, else HF_TOKEN, else the saved login."""
    token = token or os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if not token:
        token = get_token()
    if not token:
        raise PushError(f"no Hugging Face token to push to '{repo_id}': set HF_TOKEN, run `hf auth login`, or pass --token")
    return token


def stage_dataset_as_parquet(folder: Path, split: str, staging: Path):
    """Parquet shards under staging/data/ (the Hub's layout for datasets); returns the dataset."""
    # lazy: only a dataset push needs `datasets`; resolve_folder's users (every model load) do not
    from .data import load_preference_dataset

    try:
        ds = load_preference_dataset(str(folder), split=split)
    except ValueError:
        import datasets  # lazy, as above; not a preference dataset: push it as it is

        ds = datasets.load_from_disk(str(folder))
    data_dir = staging / "data"
    data_dir.mkdir(parents=True)
    rows_per_shard = 500
    shards = max(1, -(-len(ds) // rows_per_shard))
    for i in range(shards):
        part = ds.shard(num_shards=shards, index=i, contiguous=True)
        part.to_parquet(str(data_dir / f"{split}-{i:05d}-of-{shards:05d}.parquet"))
    return ds


def upload_folder(staging: Path, repo_id: str, repo_type: str, private: bool, token: str, commit_message: str) -> str:
    """Create the Hub repo if needed and upload `staging` in one commit; returns the repo URL."""

    api = HfApi(token=token)
    url = api.create_repo(repo_id, private=private, repo_type=repo_type, exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=str(staging), repo_type=repo_type, commit_message=commit_message)
    return str(url)
