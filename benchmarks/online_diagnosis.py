"""Why an online objective falls short: the reward model's view of the policy's own clips against
the oracle's, rollout by rollout, from the rollouts a `toy_objectives.py` run stored.

Each rollout's clips (the clean latents the trainer decoded and scored) are decoded again with the
run's base backend and judged by the noise-free oracle on their training captions. Per method and
rollout: the training reward's mean (what the objective climbs), the oracle's accuracy on the same
clips (what it should climb), the reward model's accuracy at 0.5 and AUC against the oracle on
the policy's clips (does the reward still tell good clips from bad as the policy moves away from
the base clips it was trained beside?), and the share of groups whose G clips the oracle judges
alike (all aligned or none: those carry no true signal, whatever the reward says). Early (first
third of the rollouts) against late (last third), each with a caption-bootstrap interval.

    python benchmarks/online_diagnosis.py [--root runs/toy_objectives] [--seeds 0] [--methods awm nft grpo human_online] [--every 2]

Writes benchmarks/results/online_diagnosis.{json,md} and online_diagnosis.png.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from baton_trainer.atomic import atomic_write_json, atomic_write_text  # noqa: E402
from baton_trainer.backends import load_backend  # noqa: E402
from baton_trainer.captions import read_captions  # noqa: E402
from baton_trainer.evaluation.intervals import bootstrap_statistic  # noqa: E402
from baton_trainer.evaluation.reward_agreement import auc  # noqa: E402
from baton_trainer.toyworld.oracle import alignment_outcomes  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def judge_rollouts(run_dir: Path, method: str, every: int) -> list[dict]:
    """Per stored rollout (every `every`-th): captions, training rewards and oracle outcomes."""
    ablation = run_dir / f"ablation_{method}"
    config = json.loads((ablation / "finetune_config.json").read_text())
    captions = {row["caption"]: row for row in read_captions(run_dir / "captions.jsonl")}
    backend = load_backend(config["model"])
    rollouts = []
    files = sorted((ablation / "rollouts").glob("rollout-*-rank0.pt"))
    for path in files[::every]:
        record = torch.load(path, weights_only=True)
        rewards = json.loads(path.with_name(path.name.replace(".pt", ".rewards.json")).read_text())
        with torch.no_grad():
            waves = list(backend.decode_clips(record["latents"][:, -1].float(), config.get("duration_s")))
        rows = [captions[c] for c in record["captions"]]
        aligned = alignment_outcomes(waves, [r["labels"] for r in rows], [r["task"] for r in rows], backend.sample_rate)
        reward = np.mean([[np.nan if v is None else v for v in values] for values in rewards.values()], axis=0)
        rollouts.append(
            {
                "index": int(path.name.split("-")[1]),
                "captions": record["captions"],
                "reward": [float(v) for v in reward],
                "aligned": [bool(a) for a in aligned],
            }
        )
    return rollouts


def summarise(rollouts: list[dict]) -> dict:
    """Early (first third) and late (last third) of the rollouts: reward mean, oracle accuracy,
    reward accuracy at 0.5 and AUC on the policy's clips, share of groups the oracle judges alike."""
    third = max(1, len(rollouts) // 3)
    out = {}
    for name, part in [("early", rollouts[:third]), ("late", rollouts[-third:])]:
        captions = [c for r in part for c in r["captions"]]
        reward = np.array([v for r in part for v in r["reward"]])
        aligned = np.array([a for r in part for a in r["aligned"]], dtype=np.float64)
        alike = []
        for rollout in part:
            groups: dict[str, list[bool]] = {}
            for caption, ok in zip(rollout["captions"], rollout["aligned"]):
                groups.setdefault(caption, []).append(ok)
            alike += [len(set(g)) == 1 for g in groups.values()]

        def with_interval(statistic) -> tuple[float, float, float]:
            """statistic(clip indices) on all clips, and its 95 % interval over caption resamples."""
            return (float(statistic(np.arange(len(captions)))), *bootstrap_statistic(statistic, captions, resamples=1000))

        def reward_auc(i: np.ndarray) -> float:
            return auc(reward[i], aligned[i].astype(int)) if 0 < aligned[i].sum() < len(i) else np.nan

        out[name] = {
            "rollouts": [r["index"] for r in part],
            "clips": len(captions),
            "reward_mean": with_interval(lambda i: reward[i].mean()),
            "oracle_accuracy": with_interval(lambda i: aligned[i].mean()),
            "reward_accuracy": with_interval(lambda i: np.mean((reward[i] >= 0.5) == (aligned[i] > 0))),
            "reward_auc": with_interval(reward_auc),
            "oracle_alike_groups": float(np.mean(alike)),
        }
    return out


def markdown(results: dict) -> str:
    def cell(t):
        return f"{t[0]:.3f} [{t[1]:.3f}, {t[2]:.3f}]"

    lines = [
        "Online objectives on the toy world: the reward model's view of the policy's own clips against the oracle's (`benchmarks/online_diagnosis.py`).",
        "Each stored rollout's clips decoded again and judged by the noise-free oracle on their training captions; early = first third of the rollouts judged, late = last third; 95 % intervals by resampling captions.",
        "",
        "| seed | method | part | clips | reward mean | oracle accuracy | reward accuracy at 0.5 | reward AUC | groups the oracle judges alike |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for seed, methods in results["per_seed"].items():
        for method, summary in methods.items():
            for part in ("early", "late"):
                s = summary[part]
                lines.append(
                    f"| {seed} | {method} | {part} | {s['clips']} | {cell(s['reward_mean'])} | {cell(s['oracle_accuracy'])} | "
                    f"{cell(s['reward_accuracy'])} | {cell(s['reward_auc'])} | {s['oracle_alike_groups']:.2f} |"
                )
    return "\n".join(lines) + "\n"


def plot(curves: dict[tuple[int, str], list[dict]], path: Path) -> None:
    """Training reward and oracle accuracy per rollout: a row per seed, a column per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = sorted({seed for seed, _ in curves})
    methods = list(dict.fromkeys(method for _, method in curves))
    fig, axes = plt.subplots(len(seeds), len(methods), figsize=(3.6 * len(methods), 2.8 * len(seeds)), squeeze=False, sharey=True)
    for (seed, method), rollouts in curves.items():
        ax = axes[seeds.index(seed)][methods.index(method)]
        steps = [r["index"] for r in rollouts]
        ax.plot(steps, [np.mean(r["reward"]) for r in rollouts], marker="o", markersize=3, label="training reward (mean)")
        ax.plot(steps, [np.mean(r["aligned"]) for r in rollouts], marker="s", markersize=3, label="oracle accuracy")
        ax.set_title(f"{method}, seed {seed}", fontsize=9)
        ax.set_xlabel("rollout")
        ax.set_ylim(0, 1)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="runs/toy_objectives")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--methods", nargs="+", default=["awm", "nft", "grpo", "human_online"])
    parser.add_argument("--every", type=int, default=2, help="judge every N-th rollout")
    parser.add_argument("--out", default=str(RESULTS / "online_diagnosis"))
    args = parser.parse_args()
    results, curves = {"seeds": args.seeds, "every": args.every, "per_seed": {}}, {}
    for seed in args.seeds:
        run_dir = Path(args.root) / f"seed{seed}"
        results["per_seed"][str(seed)] = {}
        for method in args.methods:
            if not (run_dir / f"ablation_{method}" / "rollouts").is_dir():
                print(f"seed {seed}: no rollouts for {method}, left out")
                continue
            rollouts = judge_rollouts(run_dir, method, args.every)
            results["per_seed"][str(seed)][method] = summarise(rollouts)
            curves[(seed, method)] = rollouts
            print(f"seed {seed} {method}: {json.dumps(results['per_seed'][str(seed)][method]['late'])}")
    out = Path(args.out)
    per_rollout = {
        f"seed{seed}_{method}": [
            {"index": r["index"], "clips": len(r["reward"]), "reward_mean": float(np.mean(r["reward"])), "oracle_accuracy": float(np.mean(r["aligned"]))}
            for r in rollouts
        ]
        for (seed, method), rollouts in curves.items()
    }
    atomic_write_json(out.with_suffix(".json"), {**results, "rollouts": per_rollout})
    atomic_write_text(out.with_suffix(".md"), markdown(results))
    plot(curves, out.with_suffix(".png"))
    print(markdown(results))


if __name__ == "__main__":
    main()
