"""Which reward to trust for which task: each reward's agreement with a judge's yes/no labels.

Toy world: the base toy TANGO makes clips for held-out captions (2 events for integrity, 3 for
temporal; the toy run's sampling), the noise-free oracle labels each clip aligned or not,
and every reward scores the same clips. Per reward and task: AUC, accuracy at the threshold
chosen on a validation split of the captions (40 %), and Spearman, each with its 95 %
caption-bootstrap interval (baton_trainer.evaluation.reward_agreement). A reward of random scores
is the baseline measured in the same run: each row's AUC is printed as a ratio to its AUC.

    python benchmarks/reward_bench.py [--captions 150] [--clips_per_caption 2] [--rewards '[...]']
    python benchmarks/reward_bench.py --release_audio DIR --release_rewards '[{"name": "clap"}]'

Rewards by default: the shipped toy BATON reward model, CLAP cosine with the toy CLAP, the toy
event detector (`events`, the oracle's own detector: an upper reference, judge only), and the
mean of BATON and events. `--rewards` adds any of docs/rewards.md (JSON list of specs).

The BATON release (../shared/baton_release, or --release) has human yes/no ratings with file
names but no audio, and its released scores (`SED`, *_RA files) are for other clips than the
rated ones: no reward can be computed from it alone. With `--release_audio DIR` (the rated clips,
found by file name) and `--release_rewards` (rewards usable on real audio), each reward's
agreement with the people's ratings is measured the same way.

Writes benchmarks/results/reward_bench.{json,md}; clips are kept in --work_dir (a rerun reuses them).
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
TASKS = {"integrity": 2, "temporal": 3}
VALIDATION_SHARE = 0.4


def toy_clips(work: Path, captions_per_task: int, clips_per_caption: int, seed: int) -> dict[str, dict]:
    """Per task: captions, the event labels, caption ids, clips (16 kHz) and the oracle's labels."""
    import yaml
    from tqdm.auto import tqdm

    from baton_trainer.__main__ import CONFIG_DIR
    from baton_trainer.atomic import atomic_write_bytes
    from baton_trainer.backends import load_backend
    from baton_trainer.captions import make_caption
    from baton_trainer.toyworld.events import EVENT_NAMES
    from baton_trainer.toyworld.models import TOY_TANGO_PATH
    from baton_trainer.toyworld.oracle import OracleAnnotator, is_aligned

    sampling = yaml.safe_load((CONFIG_DIR / "toy.yaml").read_text())["generate"]
    model, oracle, out = None, OracleAnnotator(), {}
    for t, (task, k) in enumerate(TASKS.items()):
        cached = work / f"{task}_{captions_per_task}x{clips_per_caption}_seed{seed}.npz"
        rng = np.random.default_rng([seed, 37, t])
        groups = [[str(x) for x in rng.choice(EVENT_NAMES, size=k, replace=False)] for _ in range(captions_per_task)]
        captions = [make_caption(group, task, rng) for group in groups]
        ids = np.repeat(np.arange(captions_per_task), clips_per_caption)
        if cached.is_file():
            clips = np.load(cached)["clips"]
        else:
            model = model or load_backend(str(TOY_TANGO_PATH))
            chunks, seeds = [], [int(s) for s in 7_000 + np.arange(ids.size) + 100_000 * t]
            for start in tqdm(range(0, ids.size, 32), desc=f"{task} clips"):
                batch = ids[start : start + 32]
                chunks.append(
                    model.generate(
                        [captions[i] for i in batch],
                        seeds=seeds[start : start + 32],
                        num_inference_steps=sampling["num_inference_steps"],
                        guidance_scale=sampling["guidance_scale"],
                        sampler=sampling.get("sampler"),
                    )
                )
            clips = np.concatenate(chunks)
            work.mkdir(parents=True, exist_ok=True)
            buffer = io.BytesIO()
            np.savez(buffer, clips=clips)
            atomic_write_bytes(cached, buffer.getvalue())
        labels = np.asarray([is_aligned(oracle.detect(wav, 16_000), groups[i], task) for wav, i in zip(clips, ids)], dtype=np.int64)
        out[task] = {"captions": [captions[i] for i in ids], "caption_ids": ids, "clips": list(clips), "labels": labels}
    return out


def default_rewards() -> dict[str, list]:
    from baton_trainer.toyworld.models import PRETRAINED_DIR, TOY_CLAP_PATH

    baton = {"name": "baton", "model": str(PRETRAINED_DIR / "toy_reward")}
    events = {"name": "events", "detector": "toy"}
    return {
        "baton (toy reward model)": [baton],
        "clap (toy CLAP cosine)": [{"name": "clap", "model": str(TOY_CLAP_PATH)}],
        "events (toy detector = the oracle's)": [events],
        "baton + events (mean)": [baton, events],
    }


def agreement_rows(data: dict[str, dict], rewards: dict[str, list], seed: int, sample_rate: int = 16_000) -> dict:
    """Per row and task, the agreement of the row's rewards (their weighted mean) with the labels,
    and whether a run may train on them (no judge among them)."""
    import baton_trainer.rewards  # noqa: F401  (registers the trainer's rewards: events, oracle)
    from baton_trainer.evaluation.reward_agreement import reward_agreement
    from reward_hub.rewards import RewardSet

    reward_sets = {name: RewardSet(specs, device="cpu") for name, specs in rewards.items()}  # each model loaded once, for every task
    table: dict[str, dict] = {}
    for task, d in data.items():
        validation = d["caption_ids"] < VALIDATION_SHARE * (d["caption_ids"].max() + 1)
        scores = {"chance (random scores)": (np.random.default_rng([seed, 5]).normal(size=len(d["labels"])), False)}
        for name, reward_set in reward_sets.items():
            values = reward_set.weighted_mean(reward_set.score(d["captions"], d["clips"], sample_rate))
            scores[name] = (values, all(r.training_allowed for r in reward_set.rewards))
        for name, (values, trainable) in scores.items():
            result = reward_agreement(values, d["labels"], d["caption_ids"], validation, seed=seed)
            table.setdefault(name, {})[task] = {**result, "training_allowed": trainable}
    return table


def release_data(release: Path, audio_root: Path) -> dict[str, dict]:
    """The release's human-rated clips found under `audio_root`, per task, with their ratings."""
    from baton_trainer.audio import load_audio
    from baton_trainer.release import read_release

    index = {p.name: p for p in audio_root.rglob("*.wav")}
    out = {}
    for task, prefix in (("integrity", "2label"), ("temporal", "3label")):
        columns, _, report = read_release([str(release / f"{prefix}_HA.json")], index, missing_audio="drop")
        if not columns["caption"]:
            print(f"release {task}: none of the rated clips is under {audio_root} ({len(report['missing_audio'])} missing)")
            continue
        caption_ids = np.unique(np.asarray(columns["caption"]), return_inverse=True)[1]
        clips = [load_audio(Path(a["path"]), target_sr=16_000, what=a["path"])[0] for a in columns["audio"]]
        out[task] = {"captions": list(columns["caption"]), "caption_ids": caption_ids, "clips": clips, "labels": np.asarray(columns["feedback"])}
    return out


def cell(result: dict, name: str) -> str:
    return f"{result[name]:.3f} [{result[f'{name}_lo']:.3f}, {result[f'{name}_hi']:.3f}]"


def markdown(title: str, table: dict, note: str) -> str:
    lines = [f"## {title}", "", note, "", "| reward | task | clips (aligned) | AUC | accuracy | Spearman |", "| --- | --- | --- | --- | --- | --- |"]
    for name, per_task in table.items():
        for task, r in per_task.items():
            lines.append(f"| {name} | {task} | {r['clips']} ({r['positives']}) | {cell(r, 'auc')} | {cell(r, 'accuracy')} | {cell(r, 'spearman')} |")
    lines.append("")
    for task in TASKS:
        ranked = sorted(((r[task]["auc"], r[task]["auc_lo"], name) for name, r in table.items() if task in r and r[task]["training_allowed"]), reverse=True)
        if ranked:
            auc, lo, _ = ranked[0]
            name = " = ".join(sorted(n for a, _, n in ranked if a == auc))  # equal AUCs (one reward a monotone map of another) are a tie
            lines.append(
                f"- {task}: trust **{name}** most among the rewards a run may train on (AUC {auc:.3f}, interval from {lo:.3f}"
                + (", above chance)" if lo > 0.5 else ", not clearly above chance)")
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--captions", type=int, default=150, help="held-out captions per task")
    parser.add_argument("--clips_per_caption", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rewards", default=None, help='extra rewards, JSON {"row name": [specs]} or a list of specs')
    parser.add_argument("--work_dir", default=None, help="where clips are kept (default a temporary folder)")
    parser.add_argument("--release", default=str(Path(__file__).resolve().parents[2] / "shared" / "baton_release"))
    parser.add_argument("--release_audio", default=None, help="folder holding the release's rated clips (found by file name)")
    parser.add_argument("--release_rewards", default=None, help="rewards for the release's real clips, JSON as --rewards")
    parser.add_argument("--out", default=str(RESULTS / "reward_bench"))
    args = parser.parse_args()

    def parse(text: str | None) -> dict[str, list]:
        value = json.loads(text) if text else {}
        return {json.dumps(spec): [spec] for spec in value} if isinstance(value, list) else value

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="reward_bench_"))
    data = toy_clips(work, args.captions, args.clips_per_caption, args.seed)
    toy = agreement_rows(data, {**default_rewards(), **parse(args.rewards)}, args.seed)
    results = {"toy": toy, "settings": vars(args)}
    note = (
        f"Toy world, seed {args.seed}: base toy TANGO clips of {args.captions} held-out captions per task x {args.clips_per_caption}, "
        f"labelled by the noise-free oracle; thresholds chosen on {VALIDATION_SHARE:.0%} of the captions, every number on the other "
        "captions, 95 % caption-bootstrap intervals. `events` with the toy detector is the oracle's own detector (an upper reference, "
        "refused as a training reward, as is any mix holding it); lalm_judge and aesthetics have no toy-world model and are not in this "
        "table. The shipped toy reward model's head is `cosine_logistic`, a monotone function of the toy CLAP's cosine: it ranks clips "
        "exactly as `clap` does, so the two rows agree to the last digit (the toy CLAP, unlike LAION's, was trained to tell orders apart)."
    )
    text = "# Reward bench\n\n" + markdown("Toy world: agreement with the oracle", toy, note)
    if args.release_audio and args.release_rewards:
        release = release_data(Path(args.release), Path(args.release_audio))
        results["release"] = agreement_rows(release, parse(args.release_rewards), args.seed)
        text += "\n" + markdown("BATON release: agreement with the people's ratings", results["release"], f"Rated clips found under {args.release_audio}.")
    else:
        text += (
            "\n## BATON release\n\nNot measured: the release holds the people's ratings and the clips' file names but no audio, and "
            "its released scores (`SED`, *_RA files) belong to other clips than the rated ones (no file is in both), so no reward "
            "can be computed from it alone. Pass `--release_audio DIR --release_rewards JSON` with the rated clips to add this table.\n"
        )
    for name, per_task in toy.items():
        if not name.startswith("chance"):
            chance = toy["chance (random scores)"]
            ratios = ", ".join(
                f"{task} AUC {r['auc']:.3f} ({r['auc'] / chance[task]['auc']:.2f}x the random reward's {chance[task]['auc']:.3f})"
                for task, r in per_task.items()
            )
            print(f"{name}: {ratios}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
