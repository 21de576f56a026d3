"""Generation throughput on the toy world: processes and samplers, with what a faster sampler
costs in the metrics.

    python benchmarks/generate_throughput.py [--clips 128] [--judge_clips 200]

1. Processes: the `generate` stage on `--clips` toy clips (DDIM 25, guidance 3, the default run's
   settings) in 1 process (torch's own threads), in 1 process with 1 thread, and in 2 processes
   of 1 thread under torchrun (ACCELERATE_USE_CPU=1): clips per second of the stage's wall time
   (model loading included), and the ratio against 1 process. The two runs' folders are checked
   to be the same files byte for byte.
2. Samplers: `backend.generate` of the held-out toy captions' clips with DDIM 25 (the default
   run's) against DPM-Solver++ and UniPC at fewer steps and DDPM 200 (TANGO's and the paper's):
   clips per second, and integrity / temporal accuracy by the noise-free oracle on `--judge_clips`
   clips each (the same captions and seeds), with standard errors.

Writes `benchmarks/results/generate_throughput_cpu.json`. The GPU part of the issue (TANGO at full
size against its own inference loop, MFU) needs a GPU and is not measured here.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from tango_step import library_versions  # noqa: E402

SAMPLERS = [("ddim", 25), ("dpmsolver++", 10), ("dpmsolver++", 15), ("unipc", 10), ("ddpm", 200)]


def toy_captions(root: Path, n: int, split: str, seed: int = 0) -> Path:
    """Toy captions as the prompts stage draws them (2- and 3-event groups), `n` of them in `split`."""
    from baton_trainer.stages.prompts import PromptsConfig, build_captions
    from baton_trainer.toyworld.events import EVENT_NAMES

    root.mkdir(parents=True, exist_ok=True)
    labels = root / "labels.txt"
    labels.write_text("\n".join(EVENT_NAMES) + "\n")
    build_captions(PromptsConfig(run_dir=str(root), labels_file=str(labels), num_integrity=28, num_temporal=60, heldout_fraction=0.5, seed=seed))
    rows = [json.loads(line) for line in (root / "captions.jsonl").read_text().splitlines()]
    picked = [r for r in rows if r["split"] == split][:n]
    path = root / f"captions_{split}.jsonl"
    path.write_text("".join(json.dumps({**r, "split": "train"}) + "\n" for r in picked))
    return path


def run_generate(captions: Path, out: Path, processes: int, threads: int, clips_per_caption: int) -> float:
    from baton_trainer.toyworld.models import TOY_TANGO_PATH

    args = [
        "generate",
        "--run_dir",
        str(out),
        "--model",
        str(TOY_TANGO_PATH),
        "--captions_file",
        str(captions),
        "--clips_per_caption",
        str(clips_per_caption),
        "--num_inference_steps",
        "25",
        "--guidance_scale",
        "3",
        "--sampler",
        "ddim",
        "--batch_size",
        "32",
        "--device",
        "cpu",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "ACCELERATE_USE_CPU": "1", "HF_HUB_OFFLINE": "1"}
    command = (
        [sys.executable, "-m", "baton_trainer", *args]
        if processes == 1
        else [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", str(processes), "-m", "baton_trainer", *args]
    )
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def same_files(a: Path, b: Path) -> bool:
    if (a / "metadata.jsonl").read_bytes() != (b / "metadata.jsonl").read_bytes():
        return False
    return all((b / "clips" / p.name).read_bytes() == p.read_bytes() for p in (a / "clips").iterdir())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=128, help="clips per process setting")
    parser.add_argument("--judge_clips", type=int, default=200, help="clips per sampler setting judged by the oracle")
    parser.add_argument("--out", default=str(ROOT / "results"))
    args = parser.parse_args()

    import numpy as np
    import torch

    from baton_trainer.backends import load_backend
    from baton_trainer.toyworld.models import TOY_TANGO_PATH
    from baton_trainer.toyworld.oracle import alignment_outcomes

    report: dict = {"versions": library_versions(), "device": "cpu", "cpu_count": os.cpu_count(), "processes": {}, "samplers": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        train = toy_captions(root / "prompts", 44, "train")
        per_caption = max(1, math.ceil(args.clips / 44))
        clips = 44 * per_caption
        for name, processes, threads in (("1 process", 1, os.cpu_count() or 1), ("1 process, 1 thread", 1, 1), ("2 processes, 1 thread each", 2, 1)):
            seconds = run_generate(train, root / name.replace(" ", "_").replace(",", ""), processes, threads, per_caption)
            report["processes"][name] = {"clips": clips, "seconds": round(seconds, 2), "clips_per_s": round(clips / seconds, 3)}
            print(f"{name}: {clips} clips in {seconds:.1f} s ({clips / seconds:.2f} clips/s)", flush=True)
        one, two = root / "1_process" / "generations", root / "2_processes_1_thread_each" / "generations"
        report["processes_same_files"] = same_files(one, two)
        base = report["processes"]["1 process"]["clips_per_s"]
        for entry in report["processes"].values():
            entry["ratio_vs_1_process"] = round(entry["clips_per_s"] / base, 3)

        heldout = [json.loads(line) for line in toy_captions(root / "prompts_h", 44, "heldout").read_text().splitlines()]
        backend = load_backend(str(TOY_TANGO_PATH), device=torch.device("cpu"))
        repeats = max(1, math.ceil(args.judge_clips / len(heldout)))
        rows = [(r, k) for k in range(repeats) for r in heldout][: args.judge_clips]
        for sampler, steps in SAMPLERS:
            waves, start = [], time.perf_counter()
            for i in range(0, len(rows), 32):
                batch = rows[i : i + 32]
                waves += list(
                    backend.generate(
                        [r["caption"] for r, _ in batch],
                        [1000 + 7 * r["caption_id"] + k for r, k in batch],
                        num_inference_steps=steps,
                        guidance_scale=3.0,
                        sampler=sampler,
                    )
                )
            seconds = time.perf_counter() - start
            entry = {"steps": steps, "clips": len(rows), "seconds": round(seconds, 2), "clips_per_s": round(len(rows) / seconds, 3)}
            for task in ("integrity", "temporal"):
                picked = [i for i, (r, _) in enumerate(rows) if r["task"] == task]
                outcomes = alignment_outcomes([waves[i] for i in picked], [rows[i][0]["labels"] for i in picked], task, backend.sample_rate)
                p = float(np.mean(outcomes))
                entry[f"{task}_accuracy"], entry[f"{task}_accuracy_se"], entry[f"{task}_clips"] = p, math.sqrt(p * (1 - p) / len(outcomes)), len(outcomes)
            report["samplers"][f"{sampler} {steps}"] = entry
            print(
                f"{sampler} {steps}: {entry['clips_per_s']:.2f} clips/s, integrity {100 * entry['integrity_accuracy']:.1f} %, "
                f"temporal {100 * entry['temporal_accuracy']:.1f} %",
                flush=True,
            )
        ddim = report["samplers"]["ddim 25"]["clips_per_s"]
        for entry in report["samplers"].values():
            entry["speed_vs_ddim_25"] = round(entry["clips_per_s"] / ddim, 3)
    out = Path(args.out) / "generate_throughput_cpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"2 processes vs 1: {report['processes']['2 processes, 1 thread each']['ratio_vs_1_process']:.2f}x "
        f"(same files: {report['processes_same_files']}); results in {out}"
    )


if __name__ == "__main__":
    main()
