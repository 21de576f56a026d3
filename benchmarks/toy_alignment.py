"""Does BATON work in the toy world? The default run over several seeds, plus the paper's ablations.

For each seed: the whole loop (`run` with configs/toy.yaml), then on the same generated clips and
ratings:
  - Table 5, "no feedback weights": the same clips with every weight 1 (plus the pretrain term);
  - Table 5, "pretrain term alone": beta * pretraining loss only;
  - Table 6, "human only" and "reward only": one source of feedback each.
Each is evaluated on the same held-out captions and seeds as the base. Prints and writes a table
(mean over seeds, with the standard error of each accuracy) to benchmarks/results/toy_alignment.{json,md}.

Every model is judged on the same clips' captions and seeds, so the comparisons also come paired:
the oracle re-judges each saved clip, and the difference between two models is the mean over
clips of (this model's outcome - that model's outcome), with the paired standard error
std(differences) / sqrt(clips), pooled over seeds. Both the paired and the unpaired standard
errors are reported.

    python benchmarks/toy_alignment.py [--seeds 0 1 2] [--root runs/toy_alignment] [--ablations all|none]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

from baton_trainer.__main__ import CONFIG_DIR
from baton_trainer.config import parse_config
from baton_trainer.evaluation.stage import EvaluateConfig, evaluate
from baton_trainer.pipeline import RunConfig, run
from baton_trainer.trainer import finetune

ABLATIONS = {
    "no_feedback_weights": {"weighting": "ones"},
    "pretrain_term_alone": {"weighting": "none"},
    "human_only": {"reward_dataset": "none"},
    "reward_only": {"feedback_dataset": "none"},
}


def run_seed(root: Path, seed: int, overrides: list[str], ablations: list[str]) -> dict:
    run_dir = root / f"seed{seed}"
    config = parse_config(RunConfig, ["--config", str(CONFIG_DIR / "toy.yaml"), "--run_dir", str(run_dir), "--seed", str(seed), *overrides])
    started = time.time()
    if not (run_dir / "eval" / "metrics.json").is_file():  # a finished seed is read back, not re-evaluated
        run(config)
    results = {"seconds_default_run": round(time.time() - started, 1)}
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    results["base"], results["baton"] = metrics["base"], metrics["aligned"]
    results["reward_model_accuracy"] = metrics.get("reward_model_accuracy")
    stage_configs = config.stage_configs()
    for name in ablations:
        out = run_dir / f"ablation_{name}"
        ft = stage_configs["finetune"]
        values = {**ft.__dict__, **ABLATIONS[name], "output_dir": str(out), "resume_from_checkpoint": "latest"}
        if name == "reward_only":
            values["reward_dataset"] = str(run_dir / "reward_labeled")
        ft_config = type(ft)(**{k: v for k, v in values.items() if k in type(ft).__dataclass_fields__})
        if not (out / "baton_export.json").is_file():
            finetune(ft_config)
        eval_dir = run_dir / f"eval_{name}"
        base_clips = run_dir / "eval" / "clips" / "base"
        if not (eval_dir / "clips" / "base").exists():  # the base clips are the same: reuse them
            shutil.copytree(base_clips, eval_dir / "clips" / "base")
        ev = stage_configs["evaluate"]
        ev_values = {**ev.__dict__, "aligned": str(out), "out_dir": str(eval_dir)}
        if not (eval_dir / "metrics.json").is_file():
            evaluate(EvaluateConfig(**{k: v for k, v in ev_values.items() if k in EvaluateConfig.__dataclass_fields__}))
        results[name] = json.loads((eval_dir / "metrics.json").read_text())["aligned"]
    return results


def clip_outcomes(clips_dir: Path) -> dict[str, dict[str, bool]]:
    """task -> {clip_id: aligned?} for the saved evaluation clips in `clips_dir`, by the noise-free oracle."""
    from baton_trainer.audio import load_audio
    from baton_trainer.generate import read_generations
    from baton_trainer.toyworld.oracle import alignment_outcomes

    rows = read_generations(clips_dir)
    outcomes: dict[str, dict[str, bool]] = {}
    for task in ("integrity", "temporal"):
        chosen = [r for r in rows if r["task"] == task]
        wavs = [load_audio(clips_dir / r["file_name"], target_sr=16000)[0] for r in chosen]
        judged = alignment_outcomes(wavs, [r["labels"] for r in chosen], task)
        outcomes[task] = {r["clip_id"]: bool(ok) for r, ok in zip(chosen, judged)}
    return outcomes


def paired_differences(root: Path, seeds: list[int], ablations: list[str]) -> dict:
    """BATON minus each other model, clip by clip on the same captions and seeds, pooled over seeds."""
    differences: dict[str, dict[str, list[int]]] = {}
    for seed in seeds:
        run_dir = root / f"seed{seed}"
        models = {"base": run_dir / "eval" / "clips" / "base", "baton": run_dir / "eval" / "clips" / "aligned"}
        models.update({name: run_dir / f"eval_{name}" / "clips" / "aligned" for name in ablations})
        judged = {name: clip_outcomes(folder) for name, folder in models.items()}
        for name in models:
            if name == "baton":
                continue
            for task in ("integrity", "temporal"):
                ours, theirs = judged["baton"][task], judged[name][task]
                if set(ours) != set(theirs):
                    raise SystemExit(f"seed {seed}: {name} was judged on other clips than BATON ({task})")
                differences.setdefault(name, {}).setdefault(task, []).extend(int(ours[c]) - int(theirs[c]) for c in sorted(ours))
    result = {}
    for name, tasks in differences.items():
        result[name] = {}
        for task, d in tasks.items():
            mean = sum(d) / len(d)
            variance = sum((x - mean) ** 2 for x in d) / max(len(d) - 1, 1)
            result[name][task] = {"difference": mean, "paired_se": math.sqrt(variance / len(d)), "clips": len(d)}
    return result


def summarise(per_seed: dict[int, dict]) -> dict:
    models = [m for m in next(iter(per_seed.values())) if isinstance(next(iter(per_seed.values()))[m], dict)]
    table = {}
    for model in models:
        row = {}
        for key in ("integrity_accuracy", "temporal_accuracy", "clap_score", "fd"):
            values = [r[model].get(key) for r in per_seed.values() if r[model].get(key) is not None]
            if not values:
                continue
            row[key] = sum(values) / len(values)
            se = [r[model].get(f"{key}_se") for r in per_seed.values()]
            if all(s is not None for s in se):
                # standard error of the mean over seeds of independent estimates
                row[f"{key}_se"] = math.sqrt(sum(s * s for s in se)) / len(se)
        table[model] = row
    return table


def markdown(table: dict, seeds: list[int]) -> str:
    lines = [f"Toy world, mean over seeds {seeds} (standard errors in brackets; accuracies judged by the oracle on held-out captions).", ""]
    lines.append("| model | integrity | temporal | CLAP | FD |")
    lines.append("|---|---|---|---|---|")
    for model, row in table.items():
        cell = lambda k: (f"{100 * row[k]:.1f} ({100 * row.get(k + '_se', float('nan')):.1f})" if k in row else "-")  # noqa: E731
        lines.append(f"| {model} | {cell('integrity_accuracy')} | {cell('temporal_accuracy')} | "
                     f"{row.get('clap_score', float('nan')):.3f} | {row.get('fd', float('nan')):.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--root", default="runs/toy_alignment")
    parser.add_argument("--ablations", default="all", help="all, none, or a comma list of " + ",".join(ABLATIONS))
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "toy_alignment"))
    parser.add_argument("overrides", nargs="*", help="extra RunConfig overrides, e.g. --finetune.max_train_steps=300")
    args, extra = parser.parse_known_args()
    ablations = list(ABLATIONS) if args.ablations == "all" else [] if args.ablations == "none" else args.ablations.split(",")
    root = Path(args.root)
    per_seed = {}
    for seed in args.seeds:
        per_seed[seed] = run_seed(root, seed, [*args.overrides, *extra], ablations)
        Path(args.out + ".json").parent.mkdir(parents=True, exist_ok=True)
        Path(args.out + ".json").write_text(json.dumps({"per_seed": per_seed, "summary": summarise(per_seed)}, indent=2))
    table = summarise(per_seed)
    paired = paired_differences(root, args.seeds, ablations)
    Path(args.out + ".json").write_text(json.dumps({"per_seed": per_seed, "summary": table, "paired": paired}, indent=2))
    text = markdown(table, args.seeds)
    text += "\nBATON minus each model, mean over seeds. Unpaired SE: from the two accuracies' standard errors; "
    text += "paired SE: clip by clip on the same captions and seeds.\n\n"
    text += "| BATON minus | temporal, points | unpaired SEs | paired SEs | integrity, points | paired SEs |\n|---|---|---|---|---|---|\n"
    for name in ["base", *ablations]:
        diff = table["baton"]["temporal_accuracy"] - table[name]["temporal_accuracy"]
        se = math.sqrt(table["baton"].get("temporal_accuracy_se", 0) ** 2 + table[name].get("temporal_accuracy_se", 0) ** 2)
        pt, pi = paired[name]["temporal"], paired[name]["integrity"]
        text += (f"| {name} | {100 * diff:+.1f} | {diff / se if se else float('nan'):.1f} | {pt['difference'] / pt['paired_se']:.1f} | "
                 f"{100 * pi['difference']:+.1f} | {pi['difference'] / pi['paired_se'] if pi['paired_se'] else float('nan'):.1f} |\n")
    Path(args.out + ".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
