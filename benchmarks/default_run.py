"""Time the default run, `accelerate launch -m baton_trainer` (the toy world), stage by stage.

    python benchmarks/default_run.py [--baseline_commit d34ee34] [--profile]

Runs the default command in a fresh folder with this checkout and, in the same session on the same
machine, with the code of `--baseline_commit` (a `git worktree` put first on PYTHONPATH; 'none'
skips it and compares with RECORDED_BASELINE below instead). For each: every stage's seconds (from
the run's run_summary.json), the wall time, the peak resident memory of the process tree, and the
run's result (every metric of base and aligned), so a faster run can be checked for giving the
same result. Prints the baseline / now ratio per stage and in total.

`--profile` also runs this checkout's default under cProfile (in this process, not under
`accelerate launch`) and writes the 60 functions with the most cumulative time to
benchmarks/results/default_run_profile.txt: where the time goes.

Writes benchmarks/results/default_run.json.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

# The default run at d34ee34 on the 2-core build machine (2026-12-07): stage seconds, wall time, peak memory.
RECORDED_BASELINE = {
    "commit": "d34ee34",
    "stages": {"prompts": 0.0, "generate": 96.3, "ratings": 0.2, "export": 0.1, "reward": 1.6, "label": 10.9, "finetune": 26.2, "evaluate": 296.9},
    "wall_s": 443.5,
    "peak_rss_gb": 2.74,
    "result": {"base": {"temporal_accuracy": 0.3167, "integrity_accuracy": 0.5286}, "aligned": {"temporal_accuracy": 0.6067, "integrity_accuracy": 0.7571}},
}


def tree_rss(process: psutil.Process) -> int:
    total = 0
    try:
        children = process.children(recursive=True)
    except psutil.Error:  # the run ended between two samples
        return 0
    for p in [process, *children]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def timed_default_run(folder: Path, code: Path | None) -> dict:
    """The README's command in `folder`; `code` (a checkout) first on PYTHONPATH, else this one."""
    env = dict(os.environ)
    if code is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(code), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    started = time.time()
    process = subprocess.Popen(
        [shutil.which("accelerate") or "accelerate", "launch", "-m", "baton_trainer"],
        cwd=folder,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    watched, peak = psutil.Process(process.pid), [0]

    def watch():
        while process.poll() is None:
            peak[0] = max(peak[0], tree_rss(watched))
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    _, stderr = process.communicate()
    wall = time.time() - started
    watcher.join()
    if process.returncode != 0:
        raise RuntimeError(f"the default run in {folder} failed ({process.returncode}):\n{stderr[-3000:]}")
    run = folder / "runs" / "toy"
    stages = {name: info["seconds"] for name, info in json.loads((run / "run_summary.json").read_text())["stages"].items()}
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    result = {model: {key: round(value, 4) for key, value in metrics[model].items() if isinstance(value, float)} for model in ("base", "aligned")}
    return {"stages": stages, "wall_s": round(wall, 1), "peak_rss_gb": round(peak[0] / 1e9, 2), "result": result}


def baseline_run(commit: str, folder: Path) -> dict:
    code = folder / "code"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(code), commit], check=True)
    try:
        (folder / "run").mkdir()
        return {"commit": commit, **timed_default_run(folder / "run", code)}
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(code)], check=False)


def profile_default_run(folder: Path, out: Path) -> None:
    """cProfile over the whole default run in this process (one process: what `accelerate launch` runs)."""
    from baton_trainer.__main__ import main

    cwd = os.getcwd()
    os.chdir(folder)
    profiler = cProfile.Profile()
    try:
        profiler.enable()
        main(["run"])
        profiler.disable()
    finally:
        os.chdir(cwd)
    with open(out, "w", encoding="utf-8") as handle:
        stats = pstats.Stats(profiler, stream=handle)
        stats.sort_stats("cumulative").print_stats(60)


def gains(result: dict) -> dict:
    return {key: round(100 * (result["aligned"][key] - result["base"][key]), 1) for key in ("temporal_accuracy", "integrity_accuracy")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline_commit", default=RECORDED_BASELINE["commit"], help="commit to time beside this checkout ('none': the recorded numbers)")
    parser.add_argument("--profile", action="store_true", help="also write a cProfile of this checkout's default run")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="default_run_") as tmp:
        tmp = Path(tmp)
        (tmp / "now").mkdir()
        now = timed_default_run(tmp / "now", None)
        if args.baseline_commit == "none":
            baseline = {**RECORDED_BASELINE, "recorded": True}
        else:
            (tmp / "baseline").mkdir()
            baseline = baseline_run(args.baseline_commit, tmp / "baseline")
        if args.profile:
            (tmp / "profile").mkdir()
            profile_default_run(tmp / "profile", RESULTS / "default_run_profile.txt")
    stages = list(dict.fromkeys([*baseline["stages"], *now["stages"]]))
    print(f"{'stage':<10} {'baseline s':>10} {'now s':>8} {'ratio':>7}")
    for stage in stages:
        b, n = baseline["stages"].get(stage, float("nan")), now["stages"].get(stage, float("nan"))
        print(f"{stage:<10} {b:>10.1f} {n:>8.1f} {b / n if n > 0 else float('nan'):>7.2f}")
    ratio = baseline["wall_s"] / now["wall_s"]
    print(f"{'total':<10} {baseline['wall_s']:>10.1f} {now['wall_s']:>8.1f} {ratio:>7.2f}  (baseline {baseline['commit']} / now)")
    print(f"peak memory: baseline {baseline['peak_rss_gb']} GB, now {now['peak_rss_gb']} GB")
    print(f"gains (points, aligned - base): baseline {gains(baseline['result'])}, now {gains(now['result'])}")
    report = {
        "machine": {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(), "python": sys.version.split()[0]},
        "baseline": baseline,
        "now": now,
        "speedup": round(ratio, 2),
        "gains_points": {"baseline": gains(baseline["result"]), "now": gains(now["result"])},
    }
    (RESULTS / "default_run.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"results in {RESULTS / 'default_run.json'}")


if __name__ == "__main__":
    main()
