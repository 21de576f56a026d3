import json

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
        for p in aligned.unet.parameters():
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


def test_evaluate_refuses_a_missing_export(models, tmp_path):
    config = EvaluateConfig(run_dir=str(tmp_path), model=str(models / "base"), captions=str(models / "captions.jsonl"), clap_model="none")
    with pytest.raises(FileNotFoundError, match="aligned export not found"):
        evaluate(config)
