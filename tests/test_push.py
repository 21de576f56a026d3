"""The `push` stage against a local file:// destination (no network, no token)."""

import json

import pytest
import torch

import reward_hub
from baton_trainer.__main__ import main
from baton_trainer.data import load_preference_dataset
from baton_trainer.hub import PushError, detect_kind
from baton_trainer.stages.push import PushConfig, push
from baton_trainer.testing import save_synthetic_ratings, save_tiny_clap, synthetic_clip
from reward_hub import build_reward_model


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("push")
    model = build_reward_model(str(save_tiny_clap(root / "clap")), head_hidden_size=16)
    model.save_pretrained(root / "reward_model")
    metrics = {"validation": {"overall": {"count": 20, "accuracy": 0.95, "auc": 0.97, "bce": 0.2}}, "feedback": "me/baton-feedback"}
    (root / "reward_model" / "metrics.json").write_text(json.dumps(metrics))
    return root / "reward_model"


def test_reward_model_push_writes_a_card_and_loads_back(reward_dir, tmp_path):
    dest = push(PushConfig(path=str(reward_dir), repo_id=f"file://{tmp_path / 'share'}", license="apache-2.0"))
    card = (tmp_path / "share" / "README.md").read_text()
    assert "license: apache-2.0" in card and "0.950" in card and "me/baton-feedback" in card
    assert 'pipeline("text-audio-reward"' in card and "reward_hub.load" in card
    clip = synthetic_clip("low", 3)
    a = reward_hub.load(dest).score(["a low hum"], [clip], 16_000)
    b = reward_hub.load(reward_dir).score(["a low hum"], [clip], 16_000)
    torch.testing.assert_close(a, b)


def test_dataset_push_writes_parquet_that_loads_as_a_preference_dataset(tmp_path):
    source = save_synthetic_ratings(tmp_path / "feedback", n_captions=2, clips_per_caption=2)
    assert detect_kind(source) == "dataset"
    assert main(["push", str(source), "--repo_id", f"file://{tmp_path / 'ds'}"]) == 0
    assert list((tmp_path / "ds" / "data").glob("train-*.parquet"))
    card = (tmp_path / "ds" / "README.md").read_text()
    assert "human, feedback 1" in card and "load_preference_dataset" in card
    back, original = load_preference_dataset(tmp_path / "ds"), load_preference_dataset(source)
    assert list(back["caption"]) == list(original["caption"]) and list(back["feedback"]) == list(original["feedback"])


def test_aligned_model_card_names_the_base_model_and_carries_the_evaluation(tmp_path):
    from huggingface_hub import ModelCard

    run = tmp_path / "run"
    folder = run / "aligned"
    folder.mkdir(parents=True)
    # What the finetune stage writes beside the weights, and what the evaluate stage writes.
    (folder / "baton_export.json").write_text(json.dumps({"mode": "full", "base": "declare-lab/tango-full-ft-audiocaps"}))
    (folder / "finetune_config.json").write_text(json.dumps({"model": "declare-lab/tango-full-ft-audiocaps", "feedback_dataset": "runs/x/feedback"}))
    (folder / "unet.safetensors").write_bytes(b"0")
    (folder / "checkpoints" / "checkpoint-5").mkdir(parents=True)
    (run / "eval").mkdir()
    (run / "eval" / "metrics.json").write_text(
        json.dumps(
            {
                "base": {"temporal_accuracy": 0.3, "clap_score": 0.35},
                "aligned": {"temporal_accuracy": 0.6, "clap_score": 0.41},
                "info": {"captions": "paper", "clips_per_model": 313, "steps": 200, "guidance": 3.0, "seed": 1000},
            }
        )
    )
    push(PushConfig(path=str(folder), repo_id=f"file://{tmp_path / 'out'}", run_dir=str(run)))
    text = (tmp_path / "out" / "README.md").read_text()
    card = ModelCard(text)
    assert card.data.base_model == "declare-lab/tango-full-ft-audiocaps"
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results == {"temporal_accuracy": 0.6, "clap_score": 0.41}
    assert "| temporal accuracy (%) | 30.00 | 60.00 |" in text
    commands = text.split("```bash\n", 1)[1].split("```", 1)[0]  # shell commands in a shell block
    assert f"python -m baton_trainer evaluate --model declare-lab/tango-full-ft-audiocaps --aligned {tmp_path / 'out'}" in commands
    assert "```python\npython -m" not in text
    assert "finetune_config.json" in text and "training_config.json" not in text
    assert (tmp_path / "out" / "unet.safetensors").is_file() and not (tmp_path / "out" / "checkpoints").exists()


def test_missing_token_is_a_clear_error(reward_dir, monkeypatch):
    import huggingface_hub

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(PushError, match="no Hugging Face token.*HF_TOKEN"):
        push(PushConfig(path=str(reward_dir), repo_id="someone/baton-reward"))


def test_missing_folder_and_repo_are_named(tmp_path):
    with pytest.raises(PushError, match="not found"):
        push(PushConfig(path=str(tmp_path / "nope"), repo_id="file:///tmp/x"))
    with pytest.raises(PushError, match="repo_id"):
        push(PushConfig(path=str(tmp_path)))


def test_a_fine_tune_folder_whose_export_did_not_finish_is_not_pushed(tmp_path):
    from baton_trainer.hub import PushError

    folder = tmp_path / "aligned"
    folder.mkdir()
    (folder / "finetune_config.json").write_text(json.dumps({"model": "declare-lab/tango-full-ft-audiocaps"}))
    (folder / "pytorch_lora_weights.safetensors").write_bytes(b"half")
    with pytest.raises(PushError, match="baton_export.json: its export did not finish"):
        push(PushConfig(path=str(folder), repo_id=f"file://{tmp_path / 'out'}"))
    assert not (tmp_path / "out").exists()
