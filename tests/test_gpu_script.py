"""`benchmarks/gpu/run.sh`, the script for the day a GPU is lent, runs end to end here at tiny size
(`--tiny`: the toy TANGO on CPU, through the same code), so it cannot fail then for a silly reason."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "gpu" / "run.sh"


def run(*args, tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # this interpreter as python3
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)


@pytest.mark.slow
def test_the_gpu_script_runs_end_to_end_at_tiny_size(tmp_path):
    result = run("--tiny", "--out_dir", str(tmp_path), tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_cpu_tiny.json").read_text())
    rows = {(r["mode"], r["batch"]): r for r in report["finetune"]}
    assert set(rows) == {("full", 2), ("full", 4), ("lora", 2), ("lora", 4)}
    for row in rows.values():
        assert math.isfinite(row["step_time_s"]) and row["step_time_s"] > 0 and row["planned_memory_gib"] > 0
    # FLOPs come from the architecture: twice the clips, twice the FLOPs; LoRA computes no frozen weight's gradient
    assert rows["full", 4]["flops_per_step"] == 2 * rows["full", 2]["flops_per_step"]
    assert rows["lora", 2]["flops_per_step"] < rows["full", 2]["flops_per_step"]
    assert rows["lora", 2]["trained_parameters"] < rows["full", 2]["trained_parameters"] / 10
    sampling = report["sampling"]
    assert sampling["one_call_clips_per_s"] > 0 and sampling["two_calls_clips_per_s"] > 0 and sampling["largest_latent_difference"] < 1e-3
    (engine,) = report["engines"]  # on CPU the CPU config: the launch, the export and its loading work
    assert engine["config"] == "cpu_2proc" and engine["returncode"] == 0 and engine["export_loads_and_generates_finite_audio"]
    online = report["online"]["seconds"]
    assert min(online.values()) >= 0 and online["total"] == pytest.approx(online["rollout"] + online["reward"] + online["update"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU this is the 10-minute benchmark itself")
def test_without_a_gpu_the_full_size_run_says_to_use_tiny(tmp_path):
    result = run("--out_dir", str(tmp_path), tmp_path=tmp_path)
    assert result.returncode == 2 and "--tiny" in result.stderr.strip().splitlines()[-1]
