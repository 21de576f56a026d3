"""The embedded default, end to end at tiny counts: every stage on the shipped toy models."""

import json

import pytest

from baton_trainer.__main__ import main


@pytest.mark.slow
def test_tiny_default_run_end_to_end_and_resume(tmp_path, capsys):
    run_dir = tmp_path / "toy"
    args = [
        "run", "--run_dir", str(run_dir), "--pretrain_clips", "8", "--reference_clips", "8", "--rated_fraction", "0.75",
        "--prompts.num_integrity", "4", "--prompts.num_temporal", "4",
        "--generate.clips_per_caption", "3", "--generate.num_inference_steps", "4",
        "--reward.epochs", "3", "--reward.validation_fraction", "0.5",
        "--finetune.max_train_steps", "2", "--finetune.train_batch_size", "4", "--finetune.report_to", "none",
        "--evaluate.clips_per_caption", "2", "--evaluate.num_inference_steps", "4",
    ]
    assert main(args) == 0
    for path in ("captions.jsonl", "generations/metadata.jsonl", "annotations.sqlite", "feedback", "reward_model/config.json",
                 "reward_labeled", "aligned/baton_export.json", "eval/report.md", "eval/metrics.png", "eval/spectrograms.png",
                 "eval/reward_histogram.png"):
        assert (run_dir / path).exists(), path
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    for model in ("base", "aligned"):
        for key in ("integrity_accuracy", "temporal_accuracy", "clap_score", "fd"):
            assert key in metrics[model], (model, key)
        assert 0.0 <= metrics[model]["temporal_accuracy"] <= 1.0
    assert 0.0 <= metrics["reward_model_accuracy"] <= 1.0
    summary = json.loads((run_dir / "run_summary.json").read_text())
    assert list(summary["stages"]) == ["prompts", "generate", "ratings", "export", "reward", "label", "finetune", "evaluate"]

    # A second run keeps every finished stage: nothing is generated, rated or trained again.
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "all 12 clips already in" in out
    assert "'already_done': 9" in out or "already_done" in out
    again = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert again["aligned"] == metrics["aligned"]


@pytest.mark.parametrize("rate_by", ["clip", "caption"])
def test_oracle_rates_a_share_of_the_clips_or_of_the_captions(tmp_path, rate_by):
    from collections import Counter

    from test_annotation import make_generations

    from baton_trainer.annotation import AnnotationStore
    from baton_trainer.pipeline import RunConfig, _oracle_ratings

    generations = make_generations(tmp_path / "generations", num_captions=6, clips_per_caption=4)
    metadata = generations / "metadata.jsonl"
    metadata.write_text(metadata.read_text().replace("whoosh", "hum"))  # toy events only
    _oracle_ratings(RunConfig(run_dir=str(tmp_path), rated_fraction=0.5, rate_by=rate_by), generations)
    with AnnotationStore(tmp_path / "annotations.sqlite") as store:
        rated = {r["clip_id"] for r in store.ratings()}
    per_caption = Counter(clip_id.split("_")[0] for clip_id in rated)
    assert len(rated) == 12
    if rate_by == "caption":  # every clip of half the captions, none of the others
        assert sorted(per_caption.values()) == [4, 4, 4]
    else:
        assert len(per_caption) > 3
