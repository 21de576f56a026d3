"""Training steps per second of the tiny backend: cached latents and text embeddings versus
encoding audio and captions every step. Both are measured in this run; the ratio is printed and
written to benchmarks/results/trainer_step.json.

    python benchmarks/trainer_step.py [--steps 20] [--batch 8]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import save_preference  # noqa: E402

from baton_trainer.stages.finetune import FinetuneConfig, load_training_data  # noqa: E402
from baton_trainer.testing import save_tiny_tango  # noqa: E402
from baton_trainer.trainer import DiffusionTrainer  # noqa: E402


def steps_per_second(root: Path, cache: bool, steps: int, batch: int) -> float:
    config = FinetuneConfig(
        run_dir=str(root),
        model=str(root / "model"),
        feedback_dataset=str(root / "feedback"),
        output_dir=str(root / f"out-{cache}"),
        cache_dir=str(root / "cache"),
        cache_embeddings=cache,
        train_batch_size=batch,
        max_train_steps=steps,
        checkpointing_steps=10**6,
        report_to="none",
        pretrain_weight=0.0,
    )
    trainer = DiffusionTrainer(config)
    feedback, _ = load_training_data(trainer.config, trainer.objective, trainer.latent_cache)  # the one-off encoding pass is not part of the step rate
    trainer.training_loss(feedback, None, 0, 0)  # warm-up
    started = time.perf_counter()
    for step in range(steps):
        loss, _ = trainer.training_loss(feedback, None, step, 0)
        trainer.accelerator.backward(loss)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad()
    return steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        save_tiny_tango(root / "model")
        save_preference(root / "feedback", n=32)
        encode_every_step = steps_per_second(root, cache=False, steps=args.steps, batch=args.batch)
        cached = steps_per_second(root, cache=True, steps=args.steps, batch=args.batch)
    result = {
        "benchmark": "trainer_step",
        "backend": "tiny TangoModel (baton_trainer.testing.tiny_tango)",
        "batch": args.batch,
        "steps": args.steps,
        "encode_every_step_steps_per_s": round(encode_every_step, 3),
        "cached_steps_per_s": round(cached, 3),
        "speedup_cached_vs_encode": round(cached / encode_every_step, 3),
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "torch": torch.__version__,
    }
    out = Path(__file__).resolve().parent / "results" / "trainer_step.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"encode every step: {encode_every_step:.2f} steps/s   cached: {cached:.2f} steps/s   ratio {cached / encode_every_step:.2f}x")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
