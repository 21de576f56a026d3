"""Does BATON work in the toy world? The default run over several seeds, plus the paper's ablations.

For each seed: the whole loop (`run` with configs/toy.yaml, or toy_flow.yaml), then on the same generated clips and
ratings:
  - Table 5, "no feedback weights": the same clips with every weight 1 (plus the pretrain term);
  - Table 5, "pretrain term alone": pretrain_weight * pretraining loss only;
  - Table 6, "human only" and "reward only": one source of feedback each, the human-rated rows
    and the reward-labelled rows of BATON's own training set (its mix draws `mix_ratio`
    reward-labelled rows per human-rated one);
  - and, when asked for (`--ablations all,oracle_rewards,all_reward_labels,human_only_equal_steps`),
    diagnostics that are not in the paper: `oracle_rewards`, BATON with the oracle's answers in
    place of the reward model's labels, the most a better reward model could give;
    `all_reward_labels`, reward-only feedback on every reward label, also those the mix leaves out;
    `human_only_equal_steps`, human-only trained for as many steps as BATON (equal compute, twice
    the passes over its data).
Every model trains `finetune.num_epochs` passes over its own feedback rows (the paper's way of
counting), except the pretrain term alone, which keeps BATON's schedule with the feedback term off.
Each is evaluated on the same held-out captions and seeds as the base. Prints and writes a table
(mean over seeds, with the standard error of each accuracy) to benchmarks/results/toy_alignment.{json,md}.

Every model is judged on the same clips' captions and seeds, so the comparisons also come paired:
the oracle re-judges each saved clip, and the difference between two models is the mean over
clips of (this model's outcome - that model's outcome), with the paired standard error
std(differences) / sqrt(clips), pooled over seeds. Both the paired and the unpaired standard
errors are reported. They count only the sampling of evaluation clips; a model trained again gives
other numbers as well, so the table also gives the spread over seeds: the standard deviation of
the per-seed differences over sqrt(seeds), which holds both sources of noise (with 3 seeds it
is itself a rough estimate).

    python benchmarks/toy_alignment.py [--model tango|flow] [--seeds 0 1 2] [--root runs/toy_alignment] [--ablations all|none|a,b]

`--model flow` repeats all of it on the toy flow model (configs/toy_flow.yaml) and writes
benchmarks/results/toy_alignment_flow.{json,md}.
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
from baton_trainer.layout import RunLayout
from baton_trainer.stages.evaluate import EvaluateConfig, evaluate
from baton_trainer.stages.finetune import finetune
from baton_trainer.stages.run import RunConfig, run
from baton_trainer.toyworld.loop import check_reward_labels

ABLATIONS = {
    "no_feedback_weights": {"weighting": "ones"},
    "pretrain_term_alone": {"weighting": "none"},  # BATON's schedule with the feedback term off
    "human_only": {"reward_dataset": "none"},
    "reward_only": {"feedback_dataset": "none"},  # on the reward-labelled rows BATON's mix draws
}
DIAGNOSTICS = {
    "oracle_rewards": {},  # BATON on RUN/reward_labeled_oracle, written by the run's label stage
    "all_reward_labels": {"feedback_dataset": "none"},  # reward-only on every reward label, not just those BATON's mix draws
    "human_only_equal_steps": {"reward_dataset": "none"},  # human-only trained as many steps as BATON: equal compute
}
SAME_STEPS_AS_BATON = ("pretrain_term_alone", "human_only_equal_steps")


def reward_rows_in_mix(run_dir: Path, ft) -> Path:
    """The reward-labelled rows that BATON's mix draws (`mix_ratio` per human-rated row). Table 6's
    reward-only feedback trains on these, so that human-only, reward-only and BATON split one
    training set, as the paper's human-rated and reward-rated sets make up its BATON set."""
    from baton_trainer.data import load_preference_dataset, mix_feedback, save_dataset_atomic

    out = run_dir / "reward_labeled_in_mix"
    if not out.is_dir():
        human_source, reward_source = ft.feedback_sources()
        human, reward = load_preference_dataset(human_source), load_preference_dataset(reward_source)
        mixed = mix_feedback(human, reward, ft.mix_ratio, ft.seed)
        save_dataset_atomic(mixed.filter(lambda source: source == "reward_model", input_columns="source"), out)
    return out


# --model: which toy model the loop aligns, by its run config
MODEL_CONFIGS = {"tango": "toy.yaml", "flow": "toy_flow.yaml"}


def run_seed(root: Path, seed: int, overrides: list[str], ablations: list[str], variants: dict | None = None, config_file: str = "toy.yaml") -> dict:
    """The default run of one seed (`config_file` in baton_trainer/configs), then each named variant
    (finetune overrides: `variants`, by default the ablations and diagnostics) trained on its clips
    and ratings and evaluated beside it."""
    variants = {**ABLATIONS, **DIAGNOSTICS} if variants is None else variants
    run_dir = root / f"seed{seed}"
    config = parse_config(RunConfig, ["--config", str(CONFIG_DIR / config_file), "--run_dir", str(run_dir), "--seed", str(seed), *overrides])
    started = time.time()
    if not (run_dir / "eval" / "metrics.json").is_file():  # a finished seed is read back, not re-evaluated
        run(config)
    results = {"seconds_default_run": round(time.time() - started, 1)}
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    results["base"], results["baton"] = metrics["base"], metrics["aligned"]
    results["reward_model_accuracy"] = metrics.get("reward_model_accuracy")
    results["reward_label_check"] = check_reward_labels(RunLayout.of(run_dir))
    stage_configs = config.stage_configs()
    baton_steps = json.loads((run_dir / "aligned" / "train_summary.json").read_text())["global_step"]
    for name in ablations:
        out = run_dir / f"ablation_{name}"
        ft = stage_configs["finetune"]
        values = {**ft.__dict__, **variants[name], "output_dir": str(out), "resume_from_checkpoint": "latest"}
        if name in SAME_STEPS_AS_BATON:
            values["max_train_steps"] = baton_steps
        if name == "reward_only":
            values["reward_dataset"] = str(reward_rows_in_mix(run_dir, ft))
        if name == "all_reward_labels":
            values["reward_dataset"] = str(run_dir / "reward_labeled")
        if name == "oracle_rewards":
            values["reward_dataset"] = str(run_dir / "reward_labeled_oracle")
        unknown = sorted(set(values) - set(type(ft).__dataclass_fields__))
        if unknown:  # a misspelt or renamed key would otherwise train the config's default silently
            raise SystemExit(f"variant {name!r}: {', '.join(unknown)} are not {type(ft).__name__} fields")
        ft_config = type(ft)(**values)
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
    from baton_trainer.generations import read_generations
    from baton_trainer.toyworld.oracle import alignment_outcomes

    rows = [r for r in read_generations(clips_dir) if r["task"] in ("integrity", "temporal")]
    wavs = [load_audio(clips_dir / r["file_name"], target_sr=16000)[0] for r in rows]
    judged = alignment_outcomes(wavs, [r["labels"] for r in rows], [r["task"] for r in rows])
    outcomes: dict[str, dict[str, bool]] = {"integrity": {}, "temporal": {}}
    for r, ok in zip(rows, judged):
        outcomes[r["task"]][r["clip_id"]] = bool(ok)
    return outcomes


def paired_differences(root: Path, seeds: list[int], ablations: list[str], extra_clips=None, reference: str = "baton") -> dict:
    """`reference` (BATON by default) minus each other model, clip by clip on the same captions and
    seeds, pooled over seeds, and the spread of the per-seed mean differences. `extra_clips(seed)`
    names more models' clip folders."""
    differences: dict[str, dict[str, list[int]]] = {}
    per_seed: dict[str, dict[str, list[float]]] = {}
    for seed in seeds:
        run_dir = root / f"seed{seed}"
        models = {"base": run_dir / "eval" / "clips" / "base", "baton": run_dir / "eval" / "clips" / "aligned"}
        models.update({name: run_dir / f"eval_{name}" / "clips" / "aligned" for name in ablations})
        models.update(extra_clips(seed) if extra_clips else {})
        judged = {name: clip_outcomes(folder) for name, folder in models.items()}
        for name in models:
            if name == reference:
                continue
            for task in ("integrity", "temporal"):
                ours, theirs = judged[reference][task], judged[name][task]
                if set(ours) != set(theirs):
                    raise SystemExit(f"seed {seed}: {name} was judged on other clips than {reference} ({task})")
                d = [int(ours[c]) - int(theirs[c]) for c in sorted(ours)]
                differences.setdefault(name, {}).setdefault(task, []).extend(d)
                per_seed.setdefault(name, {}).setdefault(task, []).append(sum(d) / len(d))
    result = {}
    for name, tasks in differences.items():
        result[name] = {}
        for task, d in tasks.items():
            mean = sum(d) / len(d)
            variance = sum((x - mean) ** 2 for x in d) / max(len(d) - 1, 1)
            seeds_d = per_seed[name][task]
            seed_mean = sum(seeds_d) / len(seeds_d)
            seed_se = math.sqrt(sum((x - seed_mean) ** 2 for x in seeds_d) / (len(seeds_d) - 1) / len(seeds_d)) if len(seeds_d) > 1 else None
            result[name][task] = {"difference": mean, "paired_se": math.sqrt(variance / len(d)), "clips": len(d), "per_seed": seeds_d, "seed_se": seed_se}
    return result


def summarise(per_seed: dict[int, dict]) -> dict:
    first = next(iter(per_seed.values()))
    models = [m for m, r in first.items() if isinstance(r, dict) and "temporal_accuracy" in r]
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


def markdown(table: dict, seeds: list[int], model: str = "toy TANGO") -> str:
    lines = [f"Toy world ({model}), mean over seeds {seeds} (standard errors in brackets; accuracies judged by the oracle on held-out captions).", ""]
    lines.append("| model | integrity | temporal | CLAP | FD |")
    lines.append("|---|---|---|---|---|")
    for model, row in table.items():
        cell = lambda k: f"{100 * row[k]:.1f} ({100 * row.get(k + '_se', float('nan')):.1f})" if k in row else "-"  # noqa: E731
        lines.append(
            f"| {model} | {cell('integrity_accuracy')} | {cell('temporal_accuracy')} | "
            f"{row.get('clap_score', float('nan')):.3f} | {row.get('fd', float('nan')):.3f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--model",
        choices=list(MODEL_CONFIGS),
        default="tango",
        help="tango: the toy TANGO (configs/toy.yaml); flow: the toy flow model (configs/toy_flow.yaml)",
    )
    parser.add_argument("--root", default=None, help="default runs/toy_alignment, or runs/toy_alignment_flow for --model flow")
    parser.add_argument("--ablations", default="all", help="all, none, or a comma list of " + ",".join([*ABLATIONS, *DIAGNOSTICS]))
    parser.add_argument("--out", default=None, help="results file stem (default benchmarks/results/toy_alignment[_flow])")
    parser.add_argument("overrides", nargs="*", help="extra RunConfig overrides, e.g. --finetune.max_train_steps=300")
    args, extra = parser.parse_known_args()
    ablations = []
    for name in args.ablations.split(","):
        if name == "all":
            ablations += list(ABLATIONS)
        elif name in ABLATIONS or name in DIAGNOSTICS:
            ablations.append(name)
        elif name != "none":
            raise SystemExit(f"unknown ablation '{name}' (known: all, none, {', '.join([*ABLATIONS, *DIAGNOSTICS])})")
    suffix = "" if args.model == "tango" else f"_{args.model}"
    root = Path(args.root or f"runs/toy_alignment{suffix}")
    args.out = args.out or str(Path(__file__).resolve().parent / "results" / f"toy_alignment{suffix}")
    per_seed = {}
    for seed in args.seeds:
        per_seed[seed] = run_seed(root, seed, [*args.overrides, *extra], ablations, config_file=MODEL_CONFIGS[args.model])
        Path(args.out + ".json").parent.mkdir(parents=True, exist_ok=True)
        Path(args.out + ".json").write_text(json.dumps({"per_seed": per_seed, "summary": summarise(per_seed)}, indent=2))
    table = summarise(per_seed)
    paired = paired_differences(root, args.seeds, ablations)
    Path(args.out + ".json").write_text(json.dumps({"per_seed": per_seed, "summary": table, "paired": paired}, indent=2))
    text = markdown(table, args.seeds, {"tango": "toy TANGO", "flow": "toy flow model, configs/toy_flow.yaml"}[args.model])
    text += "\nBATON minus each model, mean over seeds. Unpaired SE: from the two accuracies' standard errors; "
    text += "paired SE: clip by clip on the same captions and seeds; across seeds: the spread of the per-seed differences "
    text += "(training noise included).\n\n"
    text += (
        "| BATON minus | temporal, points | unpaired SEs | paired SEs | per seed | across-seed SEs | integrity, points | paired SEs |\n"
        "|---|---|---|---|---|---|---|---|\n"
    )
    for name in ["base", *ablations]:
        diff = table["baton"]["temporal_accuracy"] - table[name]["temporal_accuracy"]
        se = math.sqrt(table["baton"].get("temporal_accuracy_se", 0) ** 2 + table[name].get("temporal_accuracy_se", 0) ** 2)
        pt, pi = paired[name]["temporal"], paired[name]["integrity"]
        seeds_text = " / ".join(f"{100 * x:+.1f}" for x in pt["per_seed"])
        text += (
            f"| {name} | {100 * diff:+.1f} | {diff / se if se else float('nan'):.1f} | {pt['difference'] / pt['paired_se']:.1f} | "
            f"{seeds_text} | {pt['difference'] / pt['seed_se'] if pt['seed_se'] else float('nan'):.1f} | "
            f"{100 * pi['difference']:+.1f} | {pi['difference'] / pi['paired_se'] if pi['paired_se'] else float('nan'):.1f} |\n"
        )
    checks = [per_seed[seed]["reward_label_check"] for seed in args.seeds]
    by_seed = lambda values: " / ".join(f"{100 * v:.1f}" for v in values)  # noqa: E731
    text += (
        f"\nReward labels, judged by the oracle on the {' / '.join(str(c['clips']) for c in checks)} clips no rating reached "
        f"(seeds {', '.join(map(str, args.seeds))}): right on {by_seed(c['accuracy'] for c in checks)} %; share of the reward "
        f"weight on misaligned clips {by_seed(c['reward_share_on_misaligned'] for c in checks)} % "
        f"(temporal clips: {by_seed(c['by_task']['temporal']['reward_share_on_misaligned'] for c in checks)} %).\n"
    )
    Path(args.out + ".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
