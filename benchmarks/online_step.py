"""Time of one optimisation step of each online objective, split into rollout (sampling), reward
(decoding and scoring) and update (loss, backward, optimiser), and the process's peak memory,
against an offline BATON step on the same backend and the same number of clips, measured in the
same run. Toy models (toy TANGO, a DDPM model; toy flow, a rectified-flow model) and the shipped
toy reward model; each method runs in its own process so its peak memory is its own.

    python benchmarks/online_step.py [--steps 3] [--backends toy_tango toy_flow] [--clips 32]

Writes benchmarks/results/online_step_<device>.json and prints each method's step time and its
ratio to the BATON step.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METHODS = ("baton", "grpo", "awm", "nft")


def step_times(trainer, data, steps: int) -> dict[str, float]:
    """Mean seconds of `steps` optimisation steps of `trainer` on `data` (after one warm-up step),
    split into rollout (the sampler), reward (decoding and scoring) and update (the rest: loss,
    backward, optimiser), where the objective has rollouts."""
    import torch

    spent = {"rollout": 0.0, "reward": 0.0}
    objective = trainer.objective
    if hasattr(objective, "sampler"):  # time the two parts of a rollout where the objective calls them

        def timed(part, function):
            def wrapper(*args, **kwargs):
                started = time.perf_counter()
                try:
                    return function(*args, **kwargs)
                finally:
                    spent[part] += time.perf_counter() - started

            return wrapper

        objective.sampler.sample = timed("rollout", objective.sampler.sample)
        objective.score = timed("reward", objective.score)
    device = trainer.accelerator.device
    totals = []
    for step in range(steps + 1):
        before = dict(spent)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        loss, _ = trainer.training_loss(data, None, step, 0)
        trainer.accelerator.backward(loss)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        total = time.perf_counter() - started
        if step > 0:  # the first step warms up (and builds the samplers' caches)
            totals.append({"total": total, **{k: spent[k] - before[k] for k in spent}})
    mean = {k: sum(t[k] for t in totals) / len(totals) for k in totals[0]}
    mean["update"] = mean["total"] - mean["rollout"] - mean["reward"]
    return mean


def measure(backend: str, method: str, steps: int, clips: int, root: Path) -> dict:
    """One method's step times (this process only)."""
    import torch

    from baton_trainer.stages.finetune import FinetuneConfig, load_training_data
    from baton_trainer.testing import save_synthetic_ratings
    from baton_trainer.toyworld.models import PRETRAINED_DIR
    from baton_trainer.trainer import DiffusionTrainer

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    feedback = root / "feedback"
    if not feedback.exists():
        save_synthetic_ratings(feedback, n_captions=8, clips_per_caption=4)
    group = 4
    config = FinetuneConfig(
        run_dir=str(root / "run"),
        model=str(PRETRAINED_DIR / backend),
        feedback_dataset=str(feedback),
        reward_dataset="none",
        output_dir=str(root / f"out_{backend}_{method}"),
        cache_dir=str(root / f"cache_{backend}"),
        objective=method,
        rewards=[{"name": "baton", "model": str(PRETRAINED_DIR / "toy_reward")}],
        train_batch_size=clips,
        group_size=group,
        rollout_captions=clips // group,
        rollout_steps=10,
        snr_mode="none",
        max_train_steps=steps + 1,
        checkpointing_steps=10**6,
        report_to="none",
        learning_rate=1e-4,
    )
    trainer = DiffusionTrainer(config)
    data, _ = load_training_data(trainer.config, trainer.objective, trainer.latent_cache)
    mean = step_times(trainer, data, steps)
    return {
        "backend": backend,
        "method": method,
        "clips_per_step": clips,
        "seconds": mean,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--clips", type=int, default=32, help="clips per step: 8 captions x 4 for the online objectives, a batch of 32 for BATON")
    parser.add_argument("--backends", nargs="+", default=["toy_tango", "toy_flow"])
    parser.add_argument("--one", nargs=2, metavar=("BACKEND", "METHOD"), help=argparse.SUPPRESS)  # a child process
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(measure(*args.one, args.steps, args.clips, Path(args.root))))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.backends:
            for method in METHODS:
                command = [sys.executable, __file__, "--one", backend, method, "--steps", str(args.steps), "--clips", str(args.clips), "--root", tmp]
                out = subprocess.run(command, capture_output=True, text=True, check=False)
                line = next((line for line in out.stdout.splitlines() if line.startswith("RESULT ")), None)
                if line is None:
                    raise SystemExit(f"{backend} {method} failed:\n{out.stderr[-3000:]}")
                rows.append(json.loads(line[len("RESULT ") :]))
                row = rows[-1]
                baseline = next(r for r in rows if r["backend"] == backend and r["method"] == "baton")["seconds"]["total"]
                s = row["seconds"]
                print(
                    f"{backend:10s} {method:6s} step {s['total']:6.2f} s (rollout {s['rollout']:5.2f}, reward {s['reward']:5.2f}, update {s['update']:5.2f})"
                    f"  x{s['total'] / baseline:5.1f} of a BATON step  peak RSS {row['peak_rss_mb']:.0f} MB",
                    flush=True,
                )
    device = "cpu"
    result = {"device": device, "cpu": platform.processor() or platform.machine(), "steps_measured": args.steps, "rows": rows}
    out = Path(__file__).resolve().parent / "results" / f"online_step_{device}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
