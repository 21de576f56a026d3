"""generate, label and evaluate split across processes: 2 CPU ranks under torchrun give the
1-rank outputs, a killed rank is made up for by a rerun, and a late rank is named."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import free_port, kill_one_rank_when, run_stage

from baton_trainer.runtime import Ranks, RankTimeoutError
from baton_trainer.testing import save_synthetic_generations, save_tiny_clap, save_tiny_tango
from baton_trainer.toyworld.models import PRETRAINED_DIR

TOY_REWARD_PATH = PRETRAINED_DIR / "toy_reward"

TORCHRUN = Path(sys.executable).with_name("torchrun")


def launch(ranks: int, stage: str, *args, wait: bool = True):
    if ranks == 1 and wait:
        return run_stage(stage, *args)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1", "HF_HUB_OFFLINE": "1"}
    command = (
        [sys.executable, "-m", "baton_trainer", stage, *args]
        if ranks == 1
        else [str(TORCHRUN), "--nproc_per_node", str(ranks), "--master_port", str(free_port()), "-m", "baton_trainer", stage, *args]
    )
    if not wait:
        return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("sharded")
    save_tiny_tango(root / "model")
    rows = [
        {
            "caption_id": i,
            "caption": f"beep then hum {i}",
            "task": "temporal" if i % 2 else "integrity",
            "labels": ["beep", "hum", "hiss"] if i % 2 else ["beep", "hum"],
            "split": "heldout" if i >= 5 else "train",
        }
        for i in range(8)
    ]
    (root / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    save_tiny_clap(root / "clap")
    return root


def gen_args(world, run_dir, steps=3, batch=2):
    return [
        "--run_dir",
        str(run_dir),
        "--model",
        str(world / "model"),
        "--captions_file",
        str(world / "captions.jsonl"),
        "--clips_per_caption",
        "3",
        "--num_inference_steps",
        str(steps),
        "--duration_s",
        "0.32",
        "--batch_size",
        str(batch),
        "--device",
        "cpu",
    ]


def same_folder(a: Path, b: Path):
    assert (a / "metadata.jsonl").read_bytes() == (b / "metadata.jsonl").read_bytes()
    names = sorted(p.name for p in (a / "clips").iterdir())
    assert names == sorted(p.name for p in (b / "clips").iterdir())
    for name in names:
        assert (a / "clips" / name).read_bytes() == (b / "clips" / name).read_bytes(), name
    assert not (b / ".ranks").exists()  # the finish line is cleared


@pytest.mark.slow
def test_two_rank_generate_makes_each_clip_once_and_the_one_rank_files(world, tmp_path):
    launch(1, "generate", *gen_args(world, tmp_path / "one"))
    launch(2, "generate", *gen_args(world, tmp_path / "two"))
    same_folder(tmp_path / "one" / "generations", tmp_path / "two" / "generations")
    rows = [json.loads(line) for line in (tmp_path / "two" / "generations" / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == len({r["clip_id"] for r in rows}) == 15  # 5 train captions x 3, no duplicates


@pytest.mark.slow
def test_a_killed_rank_is_made_up_for_by_a_rerun(world, tmp_path):
    launch(1, "generate", *gen_args(world, tmp_path / "one", steps=40, batch=1))
    proc = launch(2, "generate", *gen_args(world, tmp_path / "two", steps=40, batch=1), wait=False)
    clips = tmp_path / "two" / "generations" / "clips"
    # one rank dies mid-generation
    assert kill_one_rank_when(proc, lambda: len(list(clips.glob("*.wav")) if clips.is_dir() else []) >= 3) != 0
    made = len(list(clips.glob("*.wav")))
    assert 0 < made < 15
    launch(2, "generate", *gen_args(world, tmp_path / "two", steps=40, batch=1))
    same_folder(tmp_path / "one" / "generations", tmp_path / "two" / "generations")
    assert not list(clips.glob(".*.tmp"))


@pytest.mark.slow
def test_two_rank_label_and_evaluate_give_the_one_rank_results(world, tmp_path):
    generations = save_synthetic_generations(tmp_path / "generations", n_captions=5, clips_per_caption=3)
    outs = {}
    for ranks in (1, 2):
        out = tmp_path / f"labeled{ranks}"
        launch(
            ranks,
            "label",
            "--run_dir",
            str(tmp_path),
            "--generations",
            str(generations),
            "--reward_model",
            str(TOY_REWARD_PATH),
            "--output_dir",
            str(out),
            "--batch_size",
            "4",
            "--device",
            "cpu",
        )
        import datasets

        outs[ranks] = datasets.load_from_disk(str(out))
        assert not list(tmp_path.glob(f".{out.name}.scores*")) and not (tmp_path / f".{out.name}.ranks").exists()
    assert outs[1]["caption_id"] == outs[2]["caption_id"] and outs[1]["clip_index"] == outs[2]["clip_index"] and len(outs[1]) == 15
    np.testing.assert_allclose(outs[1]["reward"], outs[2]["reward"], atol=1e-6)

    aligned = tmp_path / "aligned"
    shutil.copytree(world / "model", aligned)  # "aligned" = the base itself: what matters is that both ranks' clips land once
    metrics = {}
    for ranks in (1, 2):
        run_dir = tmp_path / f"eval{ranks}"
        launch(
            ranks,
            "evaluate",
            "--run_dir",
            str(run_dir),
            "--model",
            str(world / "model"),
            "--aligned",
            "none",
            "--captions",
            str(world / "captions.jsonl"),
            "--clips_per_caption",
            "2",
            "--num_inference_steps",
            "3",
            "--duration_s",
            "0.32",
            "--clap_model",
            str(world / "clap"),
            "--device",
            "cpu",
            "--batch_size",
            "3",
            "--detector",
            "toy",
        )
        metrics[ranks] = json.loads((run_dir / "eval" / "metrics.json").read_text())
        same_folder(tmp_path / "eval1" / "eval" / "clips" / "base", run_dir / "eval" / "clips" / "base")
    assert metrics[1]["base"].keys() == metrics[2]["base"].keys()
    for key, value in metrics[1]["base"].items():
        assert metrics[2]["base"][key] == pytest.approx(value, abs=1e-6), key


def test_the_main_process_names_a_late_or_silent_rank(tmp_path):
    main, other = Ranks(0, 3), Ranks(1, 3)
    other.progress(tmp_path, 3, 10)  # rank 1 is slow, rank 2 never reported
    with pytest.raises(RankTimeoutError) as info:
        main.finish(tmp_path, 5, 5, "generate X", timeout_s=0.3, poll_s=0.05)
    message = str(info.value)
    assert "rank 1 (host" in message and "3 of 10 done" in message and "rank 2 (no progress reported)" in message and "rerun" in message
    other.finish(tmp_path, 10, 10, "generate X")
    Ranks(2, 3).finish(tmp_path, 4, 4, "generate X")
    main.finish(tmp_path, 5, 5, "generate X", timeout_s=5, poll_s=0.05)  # everyone is done: returns
    assert Ranks().shard(list(range(5))) == [0, 1, 2, 3, 4] and Ranks(1, 2).shard(list(range(5))) == [1, 3]


@pytest.mark.slow
def test_two_rank_reward_training_gives_the_one_rank_model(world, tmp_path):
    from safetensors.torch import load_file

    from baton_trainer.testing import save_synthetic_ratings

    feedback = save_synthetic_ratings(tmp_path / "feedback", n_captions=6, clips_per_caption=3, rule="audio")
    outs = {}
    for ranks in (1, 2):
        out = tmp_path / f"reward{ranks}"
        args = ["--run_dir", str(tmp_path), "--feedback", str(feedback), "--output_dir", str(out), "--clap_model", str(world / "clap")]
        args += ["--cache_dir", str(tmp_path / f"cache{ranks}"), "--embed_batch_size", "4", "--epochs", "5", "--device", "cpu"]
        launch(ranks, "reward", *args)
        outs[ranks] = out
        assert not list((tmp_path / f"cache{ranks}").glob(".*"))  # the parts and the finish line are cleared
    one, two = (load_file(outs[r] / "model.safetensors") for r in (1, 2))
    assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)
    metrics = [json.loads((outs[r] / "metrics.json").read_text()) for r in (1, 2)]
    assert metrics[0]["validation"] == metrics[1]["validation"] and metrics[0]["history"] == metrics[1]["history"]
