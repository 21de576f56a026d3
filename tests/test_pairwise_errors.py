"""Bad pairwise (Audio-Alpaca schema) and per-clip preference data met by `finetune`: one error
line naming the dataset's folder, the row as the dataset stores it (not the row it is shuffled or
selected to) and the column, on both Hub layouts (a `save_to_disk` folder and `push_to_hub`'s
parquet `data/train-00000-of-00001.parquet`)."""

import re

import datasets
import pytest
from helpers import preference_rows, save_audio_alpaca, save_pretrain, tone

from baton_trainer.__main__ import main
from baton_trainer.audio import wav_bytes
from baton_trainer.data import build_dataset
from baton_trainer.testing import save_tiny_tango

GARBAGE = b"RIFF\x00\x00not a wav at all" * 8


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairwise_errors")
    save_tiny_tango(root / "tango")
    save_pretrain(root / "pretrain", n=4)
    save_audio_alpaca(root / "alpaca")  # 6 pairs of 3 prompts
    return root


def save(ds: datasets.Dataset, folder, layout: str):
    """`ds` as `save_to_disk` writes it, or as `push_to_hub` lays it out on the Hub."""
    if layout == "save_to_disk":
        ds.save_to_disk(str(folder))
    else:
        (folder / "data").mkdir(parents=True)
        ds.to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))
    return folder


def save_pairs(world, folder, layout: str, row: int | None = None, column: str = "chosen", cell=None):
    """The world's pairs with one audio cell replaced; with row None, no rows at all."""
    pairs = datasets.load_from_disk(str(world / "alpaca"))
    if row is None:
        return save(pairs.select([]), folder, layout)
    rows = pairs.with_format("arrow")[:].to_pylist()
    rows[row][column] = cell
    struct = {"bytes": datasets.Value("binary"), "path": datasets.Value("string")}
    features = datasets.Features({"prompt": datasets.Value("string"), "chosen": struct, "rejected": struct, "strategy": datasets.Value("string")})
    ds = datasets.Dataset.from_dict({name: [r[name] for r in rows] for name in features}, features=features)
    for name in ("chosen", "rejected"):
        ds = ds.cast_column(name, datasets.Audio(decode=False))
    return save(ds, folder, layout)


def save_clips(folder, layout: str, row: int, n: int = 8, **overrides):
    """A per-clip preference dataset of `n` rows whose row `row` holds bytes no decoder reads."""
    rows = preference_rows(n, seed=1)
    rows.update(overrides)
    rows["audio"][row] = {"bytes": GARBAGE, "path": f"clip{row}.wav"}
    return save(build_dataset(rows), folder, layout)


def finetune_error(world, tmp_path, capsys, **data) -> str:
    """Runs `python -m baton_trainer finetune` on the world's tiny TANGO; returns its one error line."""
    keys = {"feedback_dataset": "none", "reward_dataset": "none", **data}
    argv = ["finetune", "--run_dir", tmp_path / "run", "--model", world / "tango", "--pretrain_dataset", world / "pretrain"]
    argv += ["--output_dir", tmp_path / "out", "--cache_dir", tmp_path / "cache", "--max_train_steps", 1, "--train_batch_size", 2]
    argv += ["--duration_s", 0.32, "--report_to", "none"]
    for key, value in keys.items():
        argv += [f"--{key}", value]
    capsys.readouterr()
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert code == 1, err
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()
    return errors[0]


@pytest.mark.parametrize("layout", ["save_to_disk", "hub_parquet"])
def test_a_pairwise_dataset_of_zero_rows_is_one_line_naming_it(world, tmp_path, capsys, layout):
    # datasets 5 saves an empty dataset as no shards at all, which load_from_disk fails on (an IndexError traceback)
    folder = save_pairs(world, tmp_path / "pairs", layout)
    error = finetune_error(world, tmp_path, capsys, pairwise_dataset=folder, objective="dpo")
    assert f"PreferenceDataError: {folder}: 0 rows" in error


@pytest.mark.parametrize(
    "layout, objective, row, column, cell, problem",
    [
        ("save_to_disk", "baton", 4, "rejected", {"bytes": GARBAGE, "path": "4.wav"}, "unreadable audio"),
        ("hub_parquet", "dpo", 4, "rejected", {"bytes": GARBAGE, "path": "4.wav"}, "unreadable audio"),
        # save_to_disk embeds a path's bytes, so only parquet can point at a file that is gone
        ("hub_parquet", "dpo", 1, "chosen", "moved", "unreadable audio"),
        ("save_to_disk", "kto", 2, "rejected", None, "no audio"),
        ("hub_parquet", "baton", 2, "rejected", None, "no audio"),
    ],
    ids=["corrupt-bytes-save_to_disk", "corrupt-bytes-hub_parquet", "missing-file-hub_parquet", "empty-cell-save_to_disk", "empty-cell-hub_parquet"],
)
def test_an_unreadable_pairwise_clip_names_the_datasets_row_and_column(world, tmp_path, capsys, layout, objective, row, column, cell, problem):
    moved = tmp_path / "moved.wav"
    if cell == "moved":  # a clip stored as a path to a file that is gone by the time it is read
        moved.write_bytes(wav_bytes(tone(300), 16000))
        cell = {"bytes": None, "path": str(moved)}
    folder = save_pairs(world, tmp_path / "pairs", layout, row, column, cell)
    moved.unlink(missing_ok=True)
    error = finetune_error(world, tmp_path, capsys, pairwise_dataset=folder, objective=objective)
    assert re.search(rf": {re.escape(str(folder))}: row {row}, column '{column}': {problem}", error), error


@pytest.mark.parametrize("layout", ["save_to_disk", "hub_parquet"])
def test_an_unreadable_clip_of_mixed_feedback_names_its_own_datasets_row(world, tmp_path, capsys, layout):
    """Human-rated and reward-rated rows are mixed and shuffled (and reward_ranked selects some)
    before any clip is read; the error still names the dataset and row the clip is stored at."""
    human = save_clips(tmp_path / "feedback", layout, row=5)
    error = finetune_error(world, tmp_path, capsys, feedback_dataset=human)
    assert re.search(rf": {re.escape(str(human))}: row 5, column 'audio': unreadable audio", error), error

    n = 8
    reward = save_clips(tmp_path / "reward", layout, row=6, source=["reward_model"] * n, feedback=[-1] * n, reward=[0.1 * (i + 1) for i in range(n)])
    good = save(build_dataset(preference_rows(n, seed=2)), tmp_path / "good", layout)
    error = finetune_error(world, tmp_path, capsys, feedback_dataset=good, reward_dataset=reward, objective="reward_ranked")
    assert re.search(rf": {re.escape(str(reward))}: row 6, column 'audio': unreadable audio", error), error
