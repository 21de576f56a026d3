"""Reward training speed: cached CLAP embeddings vs encoding every clip in every epoch.

    python benchmarks/reward_train.py [--clap DIR_OR_ID] [--captions 16] [--clips 4] [--epochs 3]

Uses the tiny CLAP by default (real CLAP: --clap laion/clap-htsat-unfused, needs the weights).
Writes benchmarks/results/reward_train.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from baton_trainer.stages.reward import RewardTrainingConfig, train_reward_model
from baton_trainer.testing import save_synthetic_ratings, save_tiny_clap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clap", default=None, help="CLAP checkpoint (default: a tiny random CLAP)")
    parser.add_argument("--captions", type=int, default=16)
    parser.add_argument("--clips", type=int, default=4, help="clips per caption")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "reward_train.json"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clap = args.clap or str(save_tiny_clap(tmp / "clap"))
        save_synthetic_ratings(tmp / "feedback", n_captions=args.captions, clips_per_caption=args.clips, rule="audio")
        common = dict(run_dir=str(tmp), clap_model=clap, epochs=args.epochs, batch_size=64)
        results = {}
        for name, cached in (("cached", True), ("encode_every_epoch", False)):
            out = train_reward_model(RewardTrainingConfig(output_dir=str(tmp / name), cache_embeddings=cached, **common))
            timing = json.loads((out / "metrics.json").read_text())["timing"]
            results[name] = {
                "embedding_seconds": timing["embedding_seconds"],
                "training_seconds": timing["training_seconds"],
                "epochs_per_second": args.epochs / timing["training_seconds"],
            }
        # With a warm cache, a rerun skips CLAP entirely.
        started = time.perf_counter()
        out = train_reward_model(RewardTrainingConfig(output_dir=str(tmp / "rerun"), cache_embeddings=True, **common))
        results["cached_rerun_total_seconds"] = time.perf_counter() - started

    ratio = results["cached"]["epochs_per_second"] / results["encode_every_epoch"]["epochs_per_second"]
    report = {
        "clap": args.clap or "tiny random ClapModel (baton_trainer.testing.save_tiny_clap)",
        "clips": args.captions * args.clips,
        "epochs": args.epochs,
        "batch_size": 64,
        **results,
        "speedup_epochs_per_second": ratio,
        "machine": {"platform": platform.platform(), "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(
        f"cached: {results['cached']['epochs_per_second']:.2f} epochs/s "
        f"(one-off embedding {results['cached']['embedding_seconds']:.1f} s); "
        f"encode every epoch: {results['encode_every_epoch']['epochs_per_second']:.3f} epochs/s; "
        f"ratio {ratio:.0f}x -> {args.out}"
    )


if __name__ == "__main__":
    main()
