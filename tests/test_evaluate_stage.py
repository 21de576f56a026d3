import json

import numpy as np
import pytest
import torch

from baton_trainer.evaluation.report import REPORT_FILES
from baton_trainer.stages.evaluate import EvaluateConfig, evaluate
from baton_trainer.testing import save_tiny_clap, save_tiny_tango, tiny_tango


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    save_tiny_tango(root / "base")
    aligned = tiny_tango()
    with torch.no_grad():  # a "fine-tuned" UNet: the base plus a small perturbation
        for p in aligned.denoiser.parameters():
            p.add_(0.05 * torch.randn_like(p))
    aligned.save_trained(root / "aligned", "full", base=str(root / "base"))
    save_tiny_clap(root / "clap")
    rows = [
        {"caption_id": i, "caption": c, "task": t, "labels": [], "split": "heldout"}
        for i, (c, t) in enumerate([("a dog barks then beep", "temporal"), ("rain falls with hum", "integrity"), ("click and hiss", "integrity")])
    ]
    (root / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_evaluate_stage_writes_every_file(models, tmp_path):
    config = EvaluateConfig(
        run_dir=str(tmp_path),
        model=str(models / "base"),
        aligned=str(models / "aligned"),
        captions=str(models / "captions.jsonl"),
        clips_per_caption=2,
        num_inference_steps=2,
        clap_model=str(models / "clap"),
        device="cpu",
    )
    out = evaluate(config)
    for name in REPORT_FILES:
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["base"]) >= {"clap_score"} and set(metrics["aligned"]) >= {"clap_score"}
    assert metrics["base"]["clap_score"] != metrics["aligned"]["clap_score"]
    assert "fd" in metrics["skipped"] and "Cnn14" in metrics["skipped"]["fd"]
    report = (out / "report.md").read_text()
    assert "Skipped" in report and "fad" in report.lower()
    assert str(tmp_path) not in report and str(models) not in report  # no absolute path of this machine
    assert "of 6 clips score higher" in report
    base_rows = [json.loads(line) for line in (out / "clips" / "base" / "metadata.jsonl").read_text().splitlines()]
    aligned_rows = [json.loads(line) for line in (out / "clips" / "aligned" / "metadata.jsonl").read_text().splitlines()]
    assert len(base_rows) == 6 and [r["seed"] for r in base_rows] == [r["seed"] for r in aligned_rows]
    # loudness and peak per model, measured on the clips the model wrote, with their intervals
    from baton_trainer.audio import load_audio
    from baton_trainer.evaluation.metrics import loudness_and_peak

    loaded = [load_audio(out / "clips" / "aligned" / r["file_name"]) for r in aligned_rows]
    lufs, peaks = loudness_and_peak([wav for wav, _ in loaded], loaded[0][1])
    # (the tiny random model's clips are near silence: loudness is then undefined, null in metrics.json)
    expected = float(np.nanmean(lufs)) if np.isfinite(lufs).any() else None
    assert metrics["aligned"]["loudness_lufs"] == (pytest.approx(expected, abs=0.05) if expected is not None else None)
    assert metrics["aligned"]["peak_dbfs"] == pytest.approx(np.nanmean(peaks), abs=0.05)
    assert "| Loudness (LUFS) |" in report and "| Peak (dBFS) |" in report
    assert metrics["aligned"]["diversity_mel"] >= 0 and "| Diversity (spectrogram spread) |" in report


def test_evaluate_refuses_a_missing_export(models, tmp_path):
    config = EvaluateConfig(run_dir=str(tmp_path), model=str(models / "base"), captions=str(models / "captions.jsonl"), clap_model="none")
    with pytest.raises(FileNotFoundError, match="aligned export not found"):
        evaluate(config)


def test_best_of_n_keeps_the_candidate_the_reward_model_scores_highest(models, tmp_path):
    import reward_hub
    from baton_trainer.audio import load_audio
    from baton_trainer.clap import CLAP_SAMPLE_RATE
    from baton_trainer.stages.run import TOY_PRETRAINED

    reward_model = TOY_PRETRAINED / "toy_reward"
    config = EvaluateConfig(
        run_dir=str(tmp_path),
        model=str(models / "base"),
        aligned="none",
        reward_model=str(reward_model),
        best_of=3,
        eval_rewards=[{"name": "baton", "model": str(reward_model)}],
        captions=str(models / "captions.jsonl"),
        clips_per_caption=2,
        num_inference_steps=2,
        clap_model="none",
        device="cpu",
    )
    out = evaluate(config)
    metrics = json.loads((out / "metrics.json").read_text())
    assert "best_of_3" in metrics and "base" in metrics
    candidates = out / "clips" / "best_of_3_candidates"
    rows = [json.loads(line) for line in (candidates / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 3 * 2 * 3
    scorer = reward_hub.load(str(reward_model), device="cpu")
    scores = scorer.score([r["caption"] for r in rows], [load_audio(candidates / r["file_name"], CLAP_SAMPLE_RATE)[0] for r in rows], CLAP_SAMPLE_RATE).tolist()
    picks = [json.loads(line) for line in (out / "clips" / "best_of_3" / "metadata.jsonl").read_text().splitlines()]
    assert all((out / "clips" / "best_of_3" / p["file_name"]).is_file() for p in picks)
    base = [json.loads(line) for line in (out / "clips" / "base" / "metadata.jsonl").read_text().splitlines()]
    assert [p["clip_id"] for p in picks] == [r["clip_id"] for r in sorted(base, key=lambda r: (r["caption_id"], r["clip_index"]))]
    for pick in picks:
        caption_id, k = (int(x) for x in pick["clip_id"].split("_"))
        group = [i for i, r in enumerate(rows) if r["caption_id"] == caption_id and r["clip_index"] % 2 == k]
        assert len(group) == 3 and any(
            rows[i]["seed"] == next(b["seed"] for b in base if b["clip_id"] == pick["clip_id"]) for i in group
        )  # the base clip competes
        best = max(group, key=lambda i: scores[i])
        assert pick["seed"] == rows[best]["seed"] and abs(pick["reward"] - scores[best]) < 1e-5
    # The same reward as a judge: its mean on the winners is the mean of their winning scores, and
    # the report says which reward judged, with intervals.
    assert metrics["best_of_3"]["judge_baton"] == pytest.approx(np.mean([p["reward"] for p in picks]), abs=1e-4)
    assert metrics["base"]["judge_baton"] < metrics["best_of_3"]["judge_baton"]  # each winner scores at least its base clip
    report = (out / "report.md").read_text()
    assert "judge_baton" in report and "BatonReward" in report
    assert "judge_baton" in metrics["intervals"]["best_of_3"]


def test_event_scores_thresholds_and_intervals_reach_the_report(models, tmp_path):
    config = EvaluateConfig(
        run_dir=str(tmp_path),
        model=str(models / "base"),
        aligned=str(models / "aligned"),
        captions=str(models / "captions.jsonl"),
        clips_per_caption=2,
        num_inference_steps=2,
        clap_model=str(models / "clap"),
        device="cpu",
        detector="toy",
        presence_threshold=0.6,
        max_event_gap_s=0.05,
        bootstrap_resamples=200,
    )
    out = evaluate(config)
    data = json.loads((out / "metrics.json").read_text())
    assert "p = 0.6" in data["info"]["event_thresholds"] and "gaps up to 0.05 s" in data["info"]["event_thresholds"]
    # the captions' labels are empty free text for the toy detector: every clip is unscored, and says so
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert len(events) == 12 and all("unscored" in e for e in events)
    assert "event_presence" in data["skipped"]
    ci = data["intervals"]["aligned"]["clap_score"]
    assert ci["lo"] <= data["aligned"]["clap_score"] <= ci["hi"] and ci["difference_lo"] <= ci["difference_hi"]
    assert "diversity" in data["aligned"] and "judged_by" in data["info"]
    report = (out / "report.md").read_text()
    assert "95% bootstrap" in report and "[" in report


def test_a_real_models_matched_fd_is_against_the_reference_clips_its_captions_name(models, tmp_path):
    """Captions that name their reference clip (AudioCaps-style test audio): each clip's metadata keeps
    the name, and the matched FD is the FD against exactly those clips, whatever else the folder holds."""
    from baton_trainer.audio import save_wav
    from baton_trainer.testing import synthetic_clip

    rows = [json.loads(line) for line in (models / "captions.jsonl").read_text().splitlines()]
    named = tmp_path / "captions.jsonl"
    named.write_text("".join(json.dumps({**r, "reference": f"ref{i}.wav"}) + "\n" for i, r in enumerate(rows)))
    everything, own = tmp_path / "everything", tmp_path / "own"
    for i in range(len(rows)):  # the named clips, in both folders
        for folder in (everything, own):
            save_wav(folder / f"ref{i}.wav", synthetic_clip("low", seed=i, seconds=0.32), 16000)
    for i in range(4):  # clips no caption names, unlike them
        save_wav(everything / f"other{i}.wav", synthetic_clip("high", seed=10 + i, seconds=0.32), 16000)

    def run(reference, out):
        config = EvaluateConfig(
            run_dir=str(tmp_path / out),
            model=str(models / "base"),
            aligned="none",
            captions=str(named),
            clips_per_caption=2,
            num_inference_steps=2,
            clap_model=str(models / "clap"),
            reference_audio=str(reference),
            fd_embedding="clap",  # beside the matched FD, the FD against the whole folder (PANNs needs its checkpoint)
            device="cpu",
        )
        return json.loads((evaluate(config) / "metrics.json").read_text())

    mixed, only_own = run(everything, "a"), run(own, "b")
    generated = [json.loads(line) for line in (tmp_path / "a" / "eval" / "clips" / "base" / "metadata.jsonl").read_text().splitlines()]
    assert sorted({r["reference"] for r in generated}) == [f"ref{i}.wav" for i in range(len(rows))]
    assert "3 reference clips the evaluated captions name" in mixed["info"]["fd_matched"]
    assert "all 7 reference clips" in mixed["info"]["fd_clap"]
    # FD against the folder of the named clips alone (on CLAP embeddings, "fd") is the matched FD of the mixed folder
    np.testing.assert_allclose(mixed["base"]["fd_matched"], only_own["base"]["fd"], rtol=1e-5)
