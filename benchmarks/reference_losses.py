"""DPO and KTO fine-tuning seconds with the reference model's losses computed (a first run) versus
read from the cache a first run wrote (a rerun of the same data, as each value of a beta sweep
after the first is). Both are measured in this run on the shipped toy TANGO, LoRA and full
fine-tuning; the ratios are printed and written to benchmarks/results/reference_losses.json.

    python benchmarks/reference_losses.py [--steps 30] [--batch 4]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import save_preference  # noqa: E402

from baton_trainer.stages.finetune import FinetuneConfig, load_training_data  # noqa: E402
from baton_trainer.stages.run import TOY_PRETRAINED  # noqa: E402
from baton_trainer.trainer import DiffusionTrainer  # noqa: E402


def train_seconds(root: Path, name: str, objective: str, use_lora: bool, steps: int, batch: int, beta: float) -> tuple[float, int, int]:
    """(seconds of the training loop, reference forwards run, micro-steps read from the cache)."""
    config = FinetuneConfig(
        run_dir=str(root),
        model=str(TOY_PRETRAINED / "toy_tango"),
        feedback_dataset=str(root / "feedback"),
        reward_dataset="none",
        output_dir=str(root / name),
        cache_dir=str(root / "cache"),
        objective=objective,
        use_lora=use_lora,
        train_batch_size=batch,
        max_train_steps=steps,
        checkpointing_steps=10**6,
        report_to="none",
        pretrain_weight=0.0,
        learning_rate=1e-4,
        dpo_beta=beta,
        kto_beta=beta,
    )
    trainer = DiffusionTrainer(config)
    out = trainer.train(*load_training_data(config, trainer.objective, trainer.latent_cache))
    seconds = json.loads((out / "train_summary.json").read_text())["seconds"]
    store = trainer.objective.reference.store
    return seconds, store.computed, store.read


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    torch.manual_seed(0)
    results = {
        "steps": args.steps,
        "batch": args.batch,
        "machine": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "runs": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        n = 16  # 8 captions, each with one clip rated aligned and one not: 8 DPO pairs
        save_preference(root / "feedback", n=n, feedback=[1] * 8 + [0] * 8, reward=[1.0] * 8 + [0.0] * 8)
        for objective in ("dpo", "kto"):
            for use_lora in (True, False):
                kind = f"{objective}_{'lora' if use_lora else 'full'}"
                first = train_seconds(root, f"{kind}_first", objective, use_lora, args.steps, args.batch, beta=2000.0)
                rerun = train_seconds(root, f"{kind}_rerun", objective, use_lora, args.steps, args.batch, beta=500.0)
                assert first[1] == args.steps and rerun[1] == 0, (first, rerun)
                results["runs"][kind] = {"computed_s": first[0], "cached_s": rerun[0], "speedup": round(first[0] / rerun[0], 2)}
                print(f"{kind}: reference computed {first[0]:.1f} s, read from the cache {rerun[0]:.1f} s: {first[0] / rerun[0]:.2f}x", flush=True)
    out = Path(__file__).resolve().parent / "results" / "reference_losses.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
