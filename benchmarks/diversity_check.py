"""Does best-of-N collapse diversity, or only the CLAP view of it? (the quality issue's check)

The toy TANGO makes N candidate clips for each of C clips of a caption (held-out toy captions, the
default run's evaluation sampler); the shipped toy reward model picks the best of each N, as
`evaluate --best_of N` does. Diversity (the within-caption spread) of the picks is measured two
ways: on toy-CLAP audio embeddings (`diversity`, what the report showed) and on level-free log-mel
images (`diversity_mel`, independent of CLAP and of the reward). Baseline measured in the same run:
a random pick from each pool of N (a base model's clips, by construction at base diversity).

    python benchmarks/diversity_check.py [--captions 20] [--clips 4] [--best_of 8]

Writes benchmarks/results/diversity_check.{json,md}; each number with a 95 % caption-bootstrap
interval and the ratio of best-of-N to the random pick.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from baton_trainer.atomic import atomic_write_json, atomic_write_text
from baton_trainer.backends import load_backend
from baton_trainer.clap import ClapEmbedder
from baton_trainer.evaluation.intervals import bootstrap_means, jackknife_statistic
from baton_trainer.evaluation.metrics import frechet_distance_from_embeddings, log_mel_embeddings, within_caption_spread
from baton_trainer.stages.evaluate import matched_toy_references
from baton_trainer.stages.run import TOY_PRETRAINED
from baton_trainer.toyworld.pretraining import heldout_captions
from reward_hub.rewards import RewardSet

RESULTS = Path(__file__).resolve().parent / "results"


def per_caption_spread(embeddings: np.ndarray, groups: list[int]) -> list[float]:
    ids = np.asarray(groups)
    return [within_caption_spread(embeddings[ids == g], [g] * int((ids == g).sum())) for g in sorted(set(groups))]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--captions", type=int, default=20, help="held-out toy captions (half integrity, half temporal)")
    parser.add_argument("--clips", type=int, default=4, help="clips per caption (C)")
    parser.add_argument("--best_of", type=int, default=8, help="candidates per clip (N)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS / "diversity_check"))
    args = parser.parse_args(argv)

    drawn = [row for task in ("integrity", "temporal") for row in heldout_captions(args.captions // 2, task, seed=args.seed)]
    captions = [c for c, _ in drawn]
    model = load_backend(str(TOY_PRETRAINED / "toy_tango"))
    # Candidate j of clip k of caption i has seed i * C * N + j * C + k (as evaluate's pools: clip k, k + C, ...).
    rows = [(i, k, j) for i in range(len(captions)) for j in range(args.best_of) for k in range(args.clips)]
    clips = []
    for start in range(0, len(rows), 32):
        batch = rows[start : start + 32]
        clips.append(
            model.generate(
                [captions[i] for i, _, _ in batch],
                seeds=[i * args.clips * args.best_of + j * args.clips + k for i, k, j in batch],
                num_inference_steps=25,
                guidance_scale=3.0,
                sampler="ddim",
            )
        )
        print(f"generated {start + len(batch)}/{len(rows)} candidates", file=sys.stderr)
    clips = np.concatenate(clips)
    sr = 16000
    rewards = RewardSet([{"name": "baton", "model": str(TOY_PRETRAINED / "toy_reward")}])
    scores = rewards.weighted_mean(rewards.score([captions[i] for i, _, _ in rows], list(clips), sr))
    rng = np.random.default_rng(args.seed)
    picks: dict[str, list[int]] = {"base (candidate 0)": [], "random pick of N": [], f"best of {args.best_of}": []}
    groups = []
    for i in range(len(captions)):
        for k in range(args.clips):
            pool = [r for r, (ci, ck, _) in enumerate(rows) if ci == i and ck == k]
            picks["base (candidate 0)"].append(pool[0])
            picks["random pick of N"].append(pool[int(rng.integers(len(pool)))])
            picks[f"best of {args.best_of}"].append(max(pool, key=lambda r: scores[r]))
            groups.append(i)
    clap = ClapEmbedder(str(TOY_PRETRAINED / "toy_clap"))
    spreads: dict[str, dict[str, list[float]]] = {"diversity": {}, "diversity_mel": {}}
    # The FD sanity check: against clean renderings of these captions (the evaluate stage's matched
    # references), a selection of the base model's own clips should not move FD beyond a random pick's interval.
    matched = matched_toy_references([{"caption_id": i, "labels": labels} for i, (_, labels) in enumerate(drawn)], clips.shape[1] / sr, args.seed)
    reference = clap.embed_audio(matched, sr).cpu().numpy()
    fd: dict[str, dict[str, float]] = {}
    for name, chosen in picks.items():
        picked = [clips[r] for r in chosen]
        audio = clap.embed_audio(picked, sr).cpu().numpy()
        spreads["diversity"][name] = per_caption_spread(audio, groups)
        spreads["diversity_mel"][name] = per_caption_spread(log_mel_embeddings(picked, sr), groups)
        lo, hi = jackknife_statistic(lambda rows, a=audio: frechet_distance_from_embeddings(a[rows], reference), groups)  # as the evaluate stage
        fd[name] = {"fd_matched": frechet_distance_from_embeddings(audio, reference), "lo": max(lo, 0.0), "hi": hi}
    result = {"args": vars(args), "captions": len(captions), "metrics": {}, "fd_matched": fd}
    lines = [
        f"# Best-of-{args.best_of} and diversity (toy TANGO, {len(captions)} held-out captions x {args.clips} clips, toy reward model picks)",
        "",
        "| selection | diversity (toy-CLAP spread) | ratio to random pick | diversity_mel (log-mel spread) | ratio to random pick |",
        "|---|---:|---:|---:|---:|",
    ]
    for metric, by_selection in spreads.items():
        stats = bootstrap_means(by_selection, list(range(len(captions))), resamples=2000, seed=args.seed)
        result["metrics"][metric] = {name: {"mean": float(np.mean(v)), **stats[name]} for name, v in by_selection.items()}
    for name in picks:
        cells = []
        for metric in spreads:
            m = result["metrics"][metric][name]
            ratio = m["mean"] / result["metrics"][metric]["random pick of N"]["mean"]
            cells += [f"{m['mean']:.3f} [{m['lo']:.3f}, {m['hi']:.3f}]", f"{ratio:.2f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"FD (toy-CLAP embeddings) against {len(matched)} clean renderings of these captions (matched references):",
        "",
        "| selection | FD matched [95% delete-one-caption jackknife] |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {v['fd_matched']:.3f} [{v['lo']:.3f}, {v['hi']:.3f}] |" for name, v in fd.items()]
    chance = fd["random pick of N"]
    for name, v in fd.items():  # the sanity check: a pick among base clips changes no weight, so FD should not move
        if v["fd_matched"] < chance["lo"]:
            lines += [
                "",
                f"{name}'s matched FD lies below the random pick's interval: a selection of the base model's own clips moves FD "
                "towards what the captions ask for, because matched FD measures event content (every event present, in order) "
                "as well as quality. Read a fall in matched FD as closer to the captions' clean audio, not as cleaner audio alone.",
            ]
        elif v["fd_matched"] > chance["hi"]:
            lines += ["", f"{name}'s matched FD lies above the random pick's interval: the selection moved away from the captions' clean audio."]
    out = Path(args.out)
    atomic_write_json(out.with_suffix(".json"), result)
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
