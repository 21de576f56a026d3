"""Preference data: the schema, loading from the Hub or a folder, validation and 1:1 mixing.

A preference dataset is a `datasets.Dataset` with the columns of `PREFERENCE_FEATURES`. Audio is
kept undecoded (`Audio(decode=False)`: a dict of bytes and path) and read with soundfile, because
datasets >= 4 decodes through torchcodec, which does not load beside every torch build.
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow.parquet as pq
from datasets import Audio, Dataset, Features, Sequence, Value
from datasets.table import InMemoryTable

from .atomic import atomic_folder

SAMPLE_RATE = 16_000
TASKS = ("integrity", "temporal")
SOURCES = ("human", "reward_model")

PREFERENCE_FEATURES = Features(
    {
        "caption": Value("string"),
        "audio": Audio(sampling_rate=SAMPLE_RATE, decode=False),
        "feedback": Value("int8"),  # 1 aligned, 0 not aligned, -1 unrated
        "reward": Value("float32"),  # the training weight w_i in [0, 1]
        "source": Value("string"),  # "human" | "reward_model"
        "task": Value("string"),  # "integrity" | "temporal"
        "labels": Sequence(Value("string")),
        "caption_id": Value("int64"),
        "clip_index": Value("int64"),
        "annotator": Value("string"),
    }
)
REQUIRED_COLUMNS = ("caption", "audio", "feedback", "reward", "source", "task")

PRETRAIN_FEATURES = Features({"caption": Value("string"), "audio": Audio(sampling_rate=SAMPLE_RATE, decode=False)})

# Optional in either schema: each caption's lyrics, for a model conditioned on lyrics beside the
# caption (ACE-Step; `TextToAudioBackend.takes_lyrics`). Kept where a dataset has it, "" for none.
LYRICS_COLUMN = "lyrics"

# Where a training row's audio came from ("SOURCE: row N, column 'audio'"), for the rows the
# fine-tune stage mixes, shuffles and selects before any clip is decoded: an unreadable clip is
# reported by the row of the dataset it is stored in. Only on request (`origin=True`,
# `pairwise_to_preference(source=...)`), so no dataset is saved or pushed with it.
ORIGIN_COLUMN = "origin"
_WITH_ORIGIN = Features({**PREFERENCE_FEATURES, ORIGIN_COLUMN: Value("string")})


class PreferenceDataError(ValueError):
    """A preference dataset that cannot be trained on; the message names the row and column."""


def build_dataset(columns: dict[str, list[Any]], features: Features = PREFERENCE_FEATURES) -> Dataset:
    """`Dataset.from_dict` for columns whose audio is `{"bytes", "path"}` dicts.

    datasets 5 imports torchcodec to encode any Audio value, even bytes it only stores; building
    the column as a plain struct and casting it to Audio afterwards is an Arrow-level cast that
    needs no decoder.
    """
    audio_columns = [name for name, feature in features.items() if isinstance(feature, Audio)]
    plain = Features({name: ({"bytes": Value("binary"), "path": Value("string")} if name in audio_columns else feature) for name, feature in features.items()})
    ds = Dataset.from_dict(columns, features=plain)
    for name in audio_columns:
        ds = ds.cast_column(name, features[name])
    return ds


# ----------------------------------------------------------------------------------------------
# Loading


def _empty(features: Features | None) -> Dataset:
    return Dataset(InMemoryTable(features.arrow_schema.empty_table())) if features else Dataset.from_dict({})


def _load_saved(path: Path, split: str) -> Dataset:
    """A `save_to_disk` folder (a Dataset, or a DatasetDict's `split`). datasets 5 saves an empty
    dataset as no shards at all and `load_from_disk` fails on it (IndexError); it loads as 0 rows."""
    if (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text(encoding="utf-8")).get("splits", [])
        if split not in splits:
            raise PreferenceDataError(f"{path}: no split '{split}' (has {splits})")
        path = path / split
    state = path / "state.json"
    if state.is_file() and not json.loads(state.read_text(encoding="utf-8")).get("_data_files"):
        return _empty(datasets.DatasetInfo.from_directory(str(path)).features)
    return datasets.load_from_disk(str(path))


def _load_parquet(files: list[Path]) -> Dataset:
    """Parquet files as one split; files of 0 rows load as 0 rows (datasets refuses them:
    'Instruction "train" corresponds to no data!')."""
    if not sum(pq.ParquetFile(f).metadata.num_rows for f in files):
        return Dataset(InMemoryTable(pq.read_table(files[0])))
    return datasets.load_dataset("parquet", data_files=[str(f) for f in files], split="train")


def _load_any(source: str | Path, split: str) -> Dataset:
    path = Path(source)
    if path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
            return _load_saved(path, split)
        parquet = sorted(path.rglob("*.parquet"))
        if parquet:
            return _load_parquet(parquet)
        metadata = [p for p in (path / "metadata.jsonl", path / "metadata.csv") if p.is_file()]
        if metadata:
            return audio_folder_to_dataset(path)
        raise PreferenceDataError(f"{path}: not a saved dataset, a parquet folder, or an audio folder with metadata.jsonl")
    if path.suffix == ".parquet" and path.is_file():
        return _load_parquet([path])
    if path.exists():
        raise PreferenceDataError(f"{path}: expected a dataset folder or a .parquet file")
    if re.fullmatch(r"[\w.-]+/[\w.-]+", str(source)):
        return datasets.load_dataset(str(source), split=split)
    raise PreferenceDataError(f"{source}: no such folder or file, and not a Hub dataset id (owner/name)")


def audio_folder_to_dataset(folder: str | Path) -> Dataset:
    """An audio folder with `metadata.jsonl` (a `file_name` column per row, as datasets' audiofolder)."""
    folder = Path(folder)
    meta = folder / "metadata.jsonl"
    if not meta.is_file():
        with open(folder / "metadata.csv", newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    else:
        rows = [json.loads(line) for line in meta.read_text(encoding="utf-8").splitlines() if line.strip()]
    if rows and "file_name" not in rows[0]:
        raise PreferenceDataError(f"{meta}: rows need a 'file_name' column")
    columns: dict[str, list[Any]] = {k: [r.get(k) for r in rows] for k in rows[0]} if rows else {}
    columns["audio"] = [{"path": str(folder / r["file_name"]), "bytes": None} for r in rows]
    columns.pop("file_name", None)
    return Dataset.from_dict(columns)


def _conform(ds: Dataset, features: Features) -> Dataset:
    """Give optional columns their defaults and cast to the schema, keeping audio undecoded."""
    n = len(ds)
    defaults = {"labels": [[]] * n, "caption_id": list(range(n)), "clip_index": [0] * n, "annotator": [""] * n}
    for name, values in defaults.items():
        if name in features and name not in ds.column_names:
            ds = ds.add_column(name, values)
    if "audio" in ds.column_names:
        ds = ds.cast_column("audio", Audio(sampling_rate=SAMPLE_RATE, decode=False))
    if LYRICS_COLUMN in ds.column_names:
        features = with_lyrics(features)
    extra = [c for c in ds.column_names if c not in features]
    wanted = Features({k: v for k, v in features.items() if k in ds.column_names})
    ds = ds.remove_columns(extra) if extra else ds
    return ds.cast(wanted) if ds.features != wanted else ds


def with_lyrics(features: Features) -> Features:
    """`features` with the optional lyrics column."""
    return Features({**features, LYRICS_COLUMN: Value("string")})


def build_preference_dataset(columns: dict[str, list[Any]], lyrics: list[str]) -> Dataset:
    """`build_dataset` of preference `columns`, with `lyrics` as the lyrics column where any row has
    lyrics (a dataset of captions alone keeps the plain schema)."""
    if not any(lyrics):
        return build_dataset(columns)
    return build_dataset({**columns, LYRICS_COLUMN: lyrics}, with_lyrics(PREFERENCE_FEATURES))


def lyrics_column(ds: Dataset) -> list[str] | None:
    """The dataset's lyrics, one text per row ("" for none), or None where it has no lyrics column
    or every row's is empty (a model conditioned on captions alone trains on it)."""
    if LYRICS_COLUMN not in ds.column_names:
        return None
    lyrics = [words or "" for words in ds[LYRICS_COLUMN]]
    return lyrics if any(lyrics) else None


def load_preference_dataset(source: str | Path, split: str = "train", validate: bool = True, origin: bool = False) -> Dataset:
    """Load a preference dataset from a Hub id, a `save_to_disk` folder, parquet, or an audio folder.

    With `origin`, each row also gets its `ORIGIN_COLUMN` ("SOURCE: row N, column 'audio'"), which
    the latent cache names when the row's audio cannot be read after mixing and shuffling."""
    ds = _load_any(source, split)
    missing = [c for c in REQUIRED_COLUMNS if c not in ds.column_names]
    if missing:
        raise PreferenceDataError(f"{source}: missing column '{missing[0]}' (has {ds.column_names})")
    ds = _conform(ds, PREFERENCE_FEATURES)
    if validate:
        validate_preference_dataset(ds, name=str(source))
    if origin:
        ds = ds.add_column(ORIGIN_COLUMN, [f"{source}: row {i}, column 'audio'" for i in range(len(ds))])
    return ds


def load_pretrain_dataset(source: str | Path, split: str = "train") -> Dataset:
    """(caption, audio) pairs for the pretraining term (`pretrain_weight`): a folder, parquet file, or Hub id."""
    ds = _load_any(source, split)
    for column in ("caption", "audio"):
        if column not in ds.column_names:
            raise PreferenceDataError(f"{source}: missing column '{column}' (has {ds.column_names})")
    if len(ds) == 0:
        raise PreferenceDataError(f"{source}: 0 rows; the pretraining set needs at least one (caption, audio) row")
    ds = _conform(ds.select_columns([c for c in ("caption", "audio", LYRICS_COLUMN) if c in ds.column_names]), PRETRAIN_FEATURES)
    check_captions(ds["caption"], str(source))
    return ds


# ----------------------------------------------------------------------------------------------
# Validation


def check_captions(captions: list[Any], name: str = "dataset") -> None:
    for i, caption in enumerate(captions):
        if not isinstance(caption, str) or not caption.strip():
            raise PreferenceDataError(f"{name}: row {i}, column 'caption': empty caption")


def validate_preference_dataset(ds: Dataset, name: str = "dataset") -> Dataset:
    """Check every row against the schema; the first problem raises with its row and column."""
    missing = [c for c in REQUIRED_COLUMNS if c not in ds.column_names]
    if missing:
        raise PreferenceDataError(f"{name}: missing column '{missing[0]}' (has {ds.column_names})")
    check_captions(ds["caption"], name)
    for i, (feedback, reward, source, task) in enumerate(zip(ds["feedback"], ds["reward"], ds["source"], ds["task"])):
        where = f"{name}: row {i}"
        if feedback not in (-1, 0, 1):
            raise PreferenceDataError(f"{where}, column 'feedback': {feedback!r} is not 1, 0 or -1")
        if reward is None or not math.isfinite(reward):
            raise PreferenceDataError(f"{where}, column 'reward': {reward!r} is not a finite number")
        if not 0.0 <= reward <= 1.0:
            raise PreferenceDataError(f"{where}, column 'reward': {reward!r} is outside [0, 1]")
        if source not in SOURCES:
            raise PreferenceDataError(f"{where}, column 'source': {source!r} is not one of {list(SOURCES)}")
        if task not in TASKS:
            raise PreferenceDataError(f"{where}, column 'task': {task!r} is not one of {list(TASKS)}")
        if source == "human" and feedback == -1:
            raise PreferenceDataError(f"{where}: a human-rated row has feedback -1 (unrated)")
    for i, audio in enumerate(ds.with_format("arrow")["audio"].to_pylist() if len(ds) else []):
        if audio is None or (not audio.get("bytes") and not audio.get("path")):
            raise PreferenceDataError(f"{name}: row {i}, column 'audio': no audio")
    return ds


def mix_feedback(human: Dataset, reward_rated: Dataset | None, ratio: float = 1.0, seed: int = 0) -> Dataset:
    """All human-rated rows plus `ratio` times as many reward-rated rows (the paper mixes 1:1).

    Reward-rated rows are sampled without replacement; when there are fewer than asked, all are
    used. The result is shuffled with `seed`. Each row keeps its `ORIGIN_COLUMN` where every part
    has one.
    """
    parts = [human]
    if reward_rated is not None and len(reward_rated) and ratio > 0:
        want = min(len(reward_rated), int(round(ratio * len(human))) if len(human) else len(reward_rated))
        picked = np.random.default_rng(seed).permutation(len(reward_rated))[:want]
        parts.append(reward_rated.select(sorted(picked.tolist())))
    features = PREFERENCE_FEATURES
    if all(ORIGIN_COLUMN in p.column_names for p in parts):
        features = _WITH_ORIGIN
    if any(LYRICS_COLUMN in p.column_names for p in parts):  # a part without lyrics gets "" for each row
        features = with_lyrics(features)
        parts = [p if LYRICS_COLUMN in p.column_names else p.add_column(LYRICS_COLUMN, [""] * len(p)) for p in parts]
    parts = [p.remove_columns([ORIGIN_COLUMN]) if ORIGIN_COLUMN in p.column_names and ORIGIN_COLUMN not in features else p for p in parts]
    parts = [p.cast(features) if p.features != features else p for p in parts]
    return datasets.concatenate_datasets(parts).shuffle(seed=seed).flatten_indices()


def human_rated_keys(ds: Dataset) -> set[tuple[int, int]]:
    """(caption_id, clip_index) of every human-rated row (feedback 0 or 1)."""
    return {
        (int(c), int(k))
        for c, k, fb, src in zip(list(ds["caption_id"]), list(ds["clip_index"]), list(ds["feedback"]), list(ds["source"]))
        if src == "human" and fb in (0, 1)
    }


class EmptyOutputError(PreferenceDataError):
    """A stage found nothing to write; the output it would have replaced is kept."""


def save_dataset_atomic(ds: Dataset, out: Path, allow_empty: bool = False, why: str = "0 rows") -> None:
    """save_to_disk into a temporary folder, then rename: a killed stage leaves no half dataset.

    An empty dataset is written only with `allow_empty` (and then never over a non-empty one): a
    stage that found nothing must say so, not replace good data with nothing."""

    if len(ds) == 0:
        previous = _saved_rows(Path(out))
        if not allow_empty or previous:
            kept = f"the {previous} rows already in {out} are kept" if previous else f"{out} is not written"
            raise EmptyOutputError(f"{out}: nothing to write ({why}); {kept}")

    with atomic_folder(out) as tmp:
        # datasets 5 writes zero shards for an empty dataset, which load_from_disk cannot read back.
        ds.save_to_disk(str(tmp), num_shards=1 if len(ds) == 0 else None)


def _saved_rows(folder: Path) -> int:
    """Rows of the dataset saved in `folder`, 0 when there is none."""
    if not (folder / "state.json").is_file() and not (folder / "dataset_info.json").is_file():
        return 0
    try:
        return len(datasets.load_from_disk(str(folder)))
    except Exception:  # an unreadable folder holds nothing worth keeping
        return 0


# ----------------------------------------------------------------------------------------------
# Pairs and selections for the other objectives (docs/method.md, "Other objectives on the same ratings")

PAIRWISE_COLUMNS = ("prompt", "chosen", "rejected")  # Audio-Alpaca's schema (declare-lab/audio-alpaca), plus "strategy"


def rows_by_caption(ds: Dataset) -> dict[str, list[int]]:
    """Row indices by caption text (stripped): the unit pairs and per-caption rankings stay within."""
    by_caption: dict[str, list[int]] = {}
    for row, caption in enumerate(ds["caption"]):
        by_caption.setdefault(caption.strip(), []).append(row)
    return by_caption


def preference_pairs(ds: Dataset, max_pairs_per_caption: int = 8, seed: int = 0, min_reward_gap: float | None = None) -> list[tuple[int, int]]:
    """(chosen row, rejected row) pairs of one caption each, for Diffusion-DPO.

    Every clip rated aligned x every clip rated not aligned of the same caption (the caption text:
    a pair never spans two captions). With `min_reward_gap`, reward-labelled (unrated) clips of a
    caption are paired too, the higher reward chosen, where the rewards differ by at least the gap.
    At most `max_pairs_per_caption` pairs per caption, drawn with `seed`; sorted for a stable order.
    """
    if max_pairs_per_caption < 1:
        raise ValueError(f"max_pairs_per_caption must be >= 1, got {max_pairs_per_caption}")
    by_caption = rows_by_caption(ds)
    feedback, reward = list(ds["feedback"]), list(ds["reward"])
    rng = np.random.default_rng(seed)
    pairs: list[tuple[int, int]] = []
    for caption in sorted(by_caption):
        rows = by_caption[caption]
        candidates = [(chosen, rejected) for chosen in rows if feedback[chosen] == 1 for rejected in rows if feedback[rejected] == 0]
        if min_reward_gap is not None:
            unrated = [r for r in rows if feedback[r] == -1]
            candidates += [(chosen, rejected) for chosen in unrated for rejected in unrated if reward[chosen] - reward[rejected] >= min_reward_gap]
        if len(candidates) > max_pairs_per_caption:
            keep = rng.choice(len(candidates), size=max_pairs_per_caption, replace=False)
            candidates = [candidates[i] for i in sorted(keep.tolist())]
        pairs.extend(candidates)
    return pairs


def reward_ranked_rows(ds: Dataset, threshold: float | None = 0.5, top_fraction: float | None = None) -> list[int]:
    """The rows reward-ranked fine-tuning trains on (RAFT, Dong et al. 2023, arXiv 2304.06767):
    those whose weight (the human label, or the reward) is at least `threshold`, or, with
    `top_fraction`, the best that fraction of each caption's clips (at least one per caption)."""
    reward = list(ds["reward"])
    if top_fraction is None:
        if threshold is None:
            raise ValueError("reward-ranked selection needs a threshold or a top_fraction")
        return [i for i, r in enumerate(reward) if r >= threshold]
    if not 0 < top_fraction <= 1:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
    by_caption = rows_by_caption(ds)
    chosen = []
    for rows in by_caption.values():
        ranked = sorted(rows, key=lambda r: (-reward[r], r))
        chosen.extend(ranked[: max(1, math.floor(top_fraction * len(rows)))])
    return sorted(chosen)


def load_pairwise_dataset(source: str | Path, split: str = "train") -> Dataset:
    """A pairwise dataset with Audio-Alpaca's schema (`prompt` str, `chosen` audio, `rejected`
    audio, `strategy` str, optional): a Hub id (`declare-lab/audio-alpaca`), a `save_to_disk`
    folder or parquet. Audio stays undecoded."""
    ds = _load_any(source, split)
    missing = [c for c in PAIRWISE_COLUMNS if c not in ds.column_names]
    if missing:
        raise PreferenceDataError(f"{source}: missing column '{missing[0]}' of a pairwise dataset (has {ds.column_names})")
    if len(ds) == 0:
        raise PreferenceDataError(f"{source}: 0 rows; a pairwise dataset needs at least one (prompt, chosen, rejected) row")
    for column in ("chosen", "rejected"):
        ds = ds.cast_column(column, Audio(decode=False))
    for i, prompt in enumerate(ds["prompt"]):
        if not isinstance(prompt, str) or not prompt.strip():
            raise PreferenceDataError(f"{source}: row {i}, column 'prompt': empty prompt")
    return ds


def pairwise_to_preference(ds: Dataset, task: str = "integrity", source: str | Path | None = None) -> Dataset:
    """Per-clip preference rows from a pairwise dataset, so BATON and KTO train on it too: each
    pair's chosen clip rated aligned (feedback 1, reward 1), its rejected clip not (0, 0), both
    human-rated rows of the pair's prompt. A prompt keeps one caption_id across its pairs.

    `source` names the dataset in errors; given, each clip also gets its `ORIGIN_COLUMN`
    ("SOURCE: row N, column 'chosen'"), the pair's own row and the column its audio is in."""
    dataset = str(source) if source is not None else "pairwise dataset"
    audio = ds.select_columns(["chosen", "rejected"]).with_format("arrow")[:].to_pylist() if len(ds) else []
    ids: dict[str, int] = {}
    columns: dict[str, list[Any]] = {name: [] for name in PREFERENCE_FEATURES}
    origins: list[str] = []
    for pair, (prompt, clips) in enumerate(zip(ds["prompt"], audio)):
        caption_id = ids.setdefault(prompt.strip(), len(ids))
        for clip_index, (column, label) in enumerate((("chosen", 1), ("rejected", 0))):
            clip = clips[column]
            where = f"{dataset}: row {pair}, column '{column}'"
            if clip is None or (not clip.get("bytes") and not clip.get("path")):
                raise PreferenceDataError(f"{where}: no audio")
            origins.append(where)
            columns["caption"].append(prompt)
            columns["audio"].append({"bytes": clip.get("bytes"), "path": clip.get("path")})
            columns["feedback"].append(label)
            columns["reward"].append(float(label))
            columns["source"].append("human")
            columns["task"].append(task)
            columns["labels"].append([])
            columns["caption_id"].append(caption_id)
            columns["clip_index"].append(2 * pair + clip_index)
            columns["annotator"].append("pairwise")
    if source is None:
        return build_dataset(columns)
    return build_dataset({**columns, ORIGIN_COLUMN: origins}, _WITH_ORIGIN)
