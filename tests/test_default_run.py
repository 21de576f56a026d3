"""The embedded default, end to end at tiny counts: every stage on the shipped toy models."""

import json

import pytest

from baton_trainer.__main__ import main


@pytest.mark.slow
def test_tiny_default_run_end_to_end_and_resume(tmp_path, capsys):
    run_dir = tmp_path / "toy"
    args = [
        "run",
        "--run_dir",
        str(run_dir),
        "--pretrain_clips",
        "8",
        "--reference_clips",
        "8",
        "--rated_fraction",
        "0.75",
        "--prompts.num_integrity",
        "4",
        "--prompts.num_temporal",
        "4",
        "--generate.clips_per_caption",
        "3",
        "--generate.num_inference_steps",
        "4",
        "--reward.epochs",
        "3",
        "--reward.validation_fraction",
        "0.5",
        "--finetune.max_train_steps",
        "2",
        "--finetune.train_batch_size",
        "4",
        "--finetune.report_to",
        "none",
        "--evaluate.clips_per_caption",
        "2",
        "--evaluate.num_inference_steps",
        "4",
    ]
    assert main(args) == 0
    for path in (
        "captions.jsonl",
        "generations/metadata.jsonl",
        "annotations.sqlite",
        "feedback",
        "reward_model/config.json",
        "reward_labeled",
        "aligned/baton_export.json",
        "eval/report.md",
        "eval/metrics.png",
        "eval/spectrograms.png",
        "eval/reward_histogram.png",
    ):
        assert (run_dir / path).exists(), path
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    for model in ("base", "aligned"):
        for key in ("integrity_accuracy", "temporal_accuracy", "clap_score", "fd"):
            assert key in metrics[model], (model, key)
        assert 0.0 <= metrics[model]["temporal_accuracy"] <= 1.0
        assert 1.0 <= metrics[model]["toy_quality"] <= 5.0 and "loudness_lufs" in metrics[model] and "diversity_mel" in metrics[model]
        assert metrics[model]["fd_matched"] >= 0.0
    # the report says in one sentence whether quality was kept, from the paired interval
    report = (run_dir / "eval" / "report.md").read_text()
    assert "- **quality**: aligned: quality " in report and "toy quality judge" in report
    assert "| FD (matched references) |" in report and "clean renderings of the evaluated captions themselves" in report
    assert "normalised to -23 LUFS" in report  # the level-dependent metrics say at what loudness they heard the clips
    # the clean renderings' own spread, to read the models' diversity against
    reference = metrics["reference_diversity"]
    assert 0.0 < reference["diversity_mel"] <= 2.0 and 0.0 <= reference["diversity"] <= 2.0
    assert f"diversity_mel {reference['diversity_mel']:.3f}: what a model that always gets the caption right spreads" in report
    # the oracle judged every reward-labelled clip, and that is the accuracy reported
    check = json.loads((run_dir / "reward_label_check.json").read_text())
    assert metrics["reward_model_accuracy"] == check["accuracy"] and 0.0 <= check["accuracy"] <= 1.0
    assert check["clips"] == 3  # 12 generated clips, 9 rated
    assert "reward_model_validation_accuracy" in metrics
    summary = json.loads((run_dir / "run_summary.json").read_text())
    assert list(summary["stages"]) == ["prompts", "generate", "ratings", "export", "reward", "label", "finetune", "evaluate"]

    # A second run keeps every finished stage: nothing is generated, rated or trained again.
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "all 12 clips already in" in out
    assert "'already_done': 9" in out or "already_done" in out
    assert "to score" not in out  # the labelled set is kept, not scored again
    again = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert again["aligned"] == metrics["aligned"]


@pytest.mark.slow
def test_tiny_toy_flow_run_end_to_end(tmp_path):
    """configs/toy_flow.yaml at tiny counts: the whole loop on the toy flow model, through the Stable
    Audio 3 backend (its pipeline generates, its flow loss fine-tunes)."""
    from baton_trainer.__main__ import CONFIG_DIR
    from baton_trainer.backends import load_backend

    run_dir = tmp_path / "toy_flow"
    args = [
        "run",
        "--config",
        str(CONFIG_DIR / "toy_flow.yaml"),
        "--run_dir",
        str(run_dir),
        "--pretrain_clips",
        "8",
        "--reference_clips",
        "8",
        "--rated_fraction",
        "0.75",
        "--prompts.num_integrity",
        "4",
        "--prompts.num_temporal",
        "4",
        "--generate.clips_per_caption",
        "3",
        "--generate.num_inference_steps",
        "4",
        "--reward.epochs",
        "3",
        "--reward.validation_fraction",
        "0.5",
        "--finetune.max_train_steps",
        "2",
        "--finetune.train_batch_size",
        "4",
        "--finetune.report_to",
        "none",
        "--evaluate.clips_per_caption",
        "2",
        "--evaluate.num_inference_steps",
        "4",
    ]
    assert main(args) == 0
    export = json.loads((run_dir / "aligned" / "baton_export.json").read_text())
    assert export["base"].endswith("toy_flow")
    aligned = load_backend(export["base"], export=run_dir / "aligned")
    assert type(aligned).__name__ == "StableAudio3Model" and aligned.objective == "flow"
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    for model in ("base", "aligned"):
        assert 0.0 <= metrics[model]["temporal_accuracy"] <= 1.0 and metrics[model]["fd"] >= 0.0
    rows = [json.loads(line) for line in (run_dir / "generations" / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 12  # 4 training captions x 3
    assert json.loads((run_dir / "generations" / "generation_config.json").read_text())["duration_s"] == 2.56
    from baton_trainer.audio import load_audio

    wav, sr = load_audio(run_dir / "generations" / rows[0]["file_name"])
    assert sr == 16000 and len(wav) == int(2.56 * 16000)


@pytest.mark.parametrize("rate_by", ["clip", "caption"])
def test_oracle_rates_a_share_of_the_clips_or_of_the_captions(tmp_path, rate_by):
    from collections import Counter

    from test_annotation import make_generations

    from baton_trainer.annotation import AnnotationStore
    from baton_trainer.layout import RunLayout
    from baton_trainer.toyworld.loop import oracle_ratings

    generations = make_generations(tmp_path / "generations", num_captions=6, clips_per_caption=4)
    metadata = generations / "metadata.jsonl"
    metadata.write_text(metadata.read_text().replace("whoosh", "hum"))  # toy events only
    oracle_ratings(RunLayout.of(tmp_path, generations=generations), rated_fraction=0.5, rate_by=rate_by, error_rate=0.0, skip_rate=0.0, seed=0)
    with AnnotationStore(tmp_path / "annotations.sqlite") as store:
        rated = {r["clip_id"] for r in store.ratings()}
    per_caption = Counter(clip_id.split("_")[0] for clip_id in rated)
    assert len(rated) == 12
    if rate_by == "caption":  # every clip of half the captions, none of the others
        assert sorted(per_caption.values()) == [4, 4, 4]
    else:
        assert len(per_caption) > 3


def test_check_reward_labels_scores_every_reward_label_against_the_oracle(tmp_path):
    from baton_trainer.audio import wav_bytes
    from baton_trainer.data import PREFERENCE_FEATURES, build_dataset, load_preference_dataset
    from baton_trainer.layout import RunLayout
    from baton_trainer.toyworld import render_sequence
    from baton_trainer.toyworld.loop import check_reward_labels

    labels = [["chirp", "knock", "hiss"]] * 4 + [["whistle", "rumble"]] * 2
    played = [
        ["chirp", "knock", "hiss"],
        ["chirp", "knock", "hiss"],
        ["knock", "chirp", "hiss"],
        ["hiss", "knock", "chirp"],
        ["whistle", "rumble"],
        ["whistle"],
    ]
    truth = [1, 1, 0, 0, 1, 0]
    rewards = [0.9, 0.4, 0.8, 0.1, 0.7, 0.2]  # wrong on the second and third clip
    columns = {
        "caption": [" then ".join(x) for x in labels],
        "audio": [{"bytes": wav_bytes(render_sequence(p, seed=i), 16000), "path": f"clip_{i}.wav"} for i, p in enumerate(played)],
        "feedback": [-1] * 6,
        "reward": rewards,
        "source": ["reward_model"] * 6,
        "task": ["temporal"] * 4 + ["integrity"] * 2,
        "labels": labels,
        "caption_id": list(range(6)),
        "clip_index": [0] * 6,
        "annotator": [""] * 6,
    }
    build_dataset(columns, PREFERENCE_FEATURES).save_to_disk(str(tmp_path / "reward_labeled"))

    check = check_reward_labels(RunLayout.of(tmp_path))
    assert check["clips"] == 6
    assert check["accuracy"] == pytest.approx(4 / 6)
    assert check["aligned_share"] == pytest.approx(0.5)
    assert check["reward_share_on_misaligned"] == pytest.approx((0.8 + 0.1 + 0.2) / sum(rewards))
    assert check["by_task"]["temporal"]["accuracy"] == pytest.approx(0.5)
    assert check["by_task"]["integrity"]["accuracy"] == pytest.approx(1.0)
    oracle = load_preference_dataset(tmp_path / "reward_labeled_oracle")
    assert oracle["reward"] == truth and oracle["feedback"] == truth
    assert json.loads((tmp_path / "reward_label_check.json").read_text()) == check
    assert (tmp_path / "reward_label_check.png").stat().st_size > 0
    # new reward labels are judged again, not read back
    relabelled = build_dataset({**columns, "reward": [1.0 - r for r in rewards]}, PREFERENCE_FEATURES)
    relabelled.save_to_disk(str(tmp_path / "reward_labeled_new"))
    (tmp_path / "reward_labeled").rename(tmp_path / "reward_labeled_old")
    (tmp_path / "reward_labeled_new").rename(tmp_path / "reward_labeled")
    assert check_reward_labels(RunLayout.of(tmp_path))["accuracy"] == pytest.approx(2 / 6)


def test_online_rounds_stop_on_a_judge_fall_beyond_its_noise_while_the_reward_rises():
    from baton_trainer.evaluation.intervals import reward_hacking

    before = {"judge": 0.70, "judge_se": 0.03, "reward": 0.60}
    noise = 0.03 * 2**0.5  # one standard error of the difference
    assert reward_hacking(before, {"judge": 0.70 - 1.2 * noise, "judge_se": 0.03, "reward": 0.65}, margin_se=1.0)
    assert not reward_hacking(before, {"judge": 0.70 - 0.8 * noise, "judge_se": 0.03, "reward": 0.65}, margin_se=1.0)  # inside the noise
    assert reward_hacking(before, {"judge": 0.70 - 0.8 * noise, "judge_se": 0.03, "reward": 0.65}, margin_se=0.0)  # any fall
    assert not reward_hacking(before, {"judge": 0.50, "judge_se": 0.03, "reward": 0.55}, margin_se=1.0)  # both fell: not hacking
    assert reward_hacking({"judge": 0.7, "reward": 0.6}, {"judge": 0.69, "reward": 0.61}, margin_se=1.0)  # a judge.json without judge_se


@pytest.mark.slow
def test_online_rounds_resume_after_a_kill_in_round_two_without_redoing_round_one(tmp_path):
    """`run --rounds 2`, SIGKILLed while round 2 generates its clips, then run again: round 1 (the
    offline fine-tune and its judge) is kept as it was, round 2 finishes without a duplicate clip,
    and the best round by the held-out judge is what the evaluation calls aligned."""
    import signal
    import subprocess
    import sys
    import time

    run_dir = tmp_path / "toy"
    args = [
        "run",
        "--run_dir",
        str(run_dir),
        "--pretrain_clips",
        "8",
        "--reference_clips",
        "8",
        "--rated_fraction",
        "0.75",
        "--prompts.num_integrity",
        "4",
        "--prompts.num_temporal",
        "4",
        "--generate.clips_per_caption",
        "3",
        "--generate.num_inference_steps",
        "2",
        "--generate.batch_size",
        "1",
        "--reward.epochs",
        "3",
        "--reward.validation_fraction",
        "0.5",
        "--finetune.max_train_steps",
        "1",
        "--finetune.train_batch_size",
        "4",
        "--finetune.report_to",
        "none",
        "--evaluate.clips_per_caption",
        "1",
        "--evaluate.num_inference_steps",
        "2",
        "--rounds",
        "2",
        "--round_ratings",
        "3",
        "--judge_clips_per_caption",
        "1",
    ]
    first = subprocess.Popen([sys.executable, "-m", "baton_trainer", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    round_two = run_dir / "rounds" / "round_2" / "generations" / "clips"
    deadline = time.monotonic() + 600
    while not (round_two.is_dir() and any(round_two.glob("*.wav"))):
        assert first.poll() is None, first.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "round 2 never started"
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert not (run_dir / "rounds" / "summary.json").exists()
    kept = {
        p: p.stat().st_mtime_ns
        for p in [
            run_dir / "aligned" / "baton_export.json",
            run_dir / "rounds" / "round_1" / "judge.json",
            run_dir / "rounds" / "round_1" / "judge_clips" / "metadata.jsonl",
        ]
    }

    assert main(args) == 0
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # round 1 was not redone
    rows = [json.loads(line) for line in (run_dir / "rounds" / "round_2" / "generations" / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and len({r["clip_id"] for r in rows}) == 12
    summary = json.loads((run_dir / "rounds" / "summary.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [1, 2] and summary["best_round"] in (1, 2)
    judges = [r["judge"] for r in summary["rounds"]]
    assert summary["best_round"] == 1 + judges.index(max(judges))
    assert (run_dir / "rounds" / "round_2" / "aligned" / "baton_export.json").is_file() and (run_dir / "rounds" / "rounds.png").is_file()
    evaluated = json.loads((run_dir / "eval" / "clips" / "aligned" / "generation_config.json").read_text())["export"]
    assert evaluated == str(run_dir / summary["best_export"])  # the evaluation's aligned model is the best round
