"""The `reward` and `label` stages on synthetic ratings with a tiny CLAP."""

import json

import numpy as np
import pytest
import torch

import reward_hub
from baton_trainer.audio import load_audio
from baton_trainer.data import build_dataset, load_preference_dataset
from baton_trainer.reward_training import RewardDataError, classification_metrics, split_by_caption
from baton_trainer.stages.label import LabelConfig, label_unrated
from baton_trainer.stages.reward import RewardTrainingConfig, train_reward_model
from baton_trainer.testing import save_synthetic_generations, save_synthetic_ratings, save_tiny_clap, synthetic_rating_rows


@pytest.fixture(scope="module")
def clap_dir(tmp_path_factory):
    return save_tiny_clap(tmp_path_factory.mktemp("clap") / "tiny_clap")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, clap_dir):
    run = tmp_path_factory.mktemp("run")
    save_synthetic_ratings(run / "feedback", n_captions=16, clips_per_caption=4, seed=0, rule="audio")
    config = RewardTrainingConfig(run_dir=str(run), clap_model=str(clap_dir), head_hidden_size=64, batch_size=16)
    return run, config, train_reward_model(config)


def test_reward_model_learns_separable_ratings(trained):
    run, _, out = trained
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["validation"]["overall"]["accuracy"] > 0.9
    assert metrics["validation"]["overall"]["auc"] > 0.9
    assert {"integrity", "temporal"} <= set(metrics["validation"])
    assert len(metrics["history"]) == 50  # paper default epochs
    assert (out / "reward_histogram.png").stat().st_size > 1000
    assert (out / "model.safetensors").is_file() and (out / "pipeline_baton_reward.py").is_file()
    assert list((run / "cache" / "clap_embeddings").glob("*.safetensors"))


def test_validation_split_holds_out_whole_captions():
    captions = [f"caption {i % 7}" for i in range(40)]
    train, val = split_by_caption(captions, 0.3, seed=1)
    assert len(train) + len(val) == 40 and len(val) > 0
    assert not {captions[i] for i in train} & {captions[i] for i in val}
    again = split_by_caption(captions, 0.3, seed=1)
    assert np.array_equal(train, again[0])


def test_second_run_reuses_the_embedding_cache_and_is_reproducible(trained):
    run, config, out = trained
    first = reward_hub.load(out)
    first_metrics = json.loads((out / "metrics.json").read_text())
    train_reward_model(config)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["timing"]["cache_hit"] is True
    assert metrics["validation"]["overall"] == first_metrics["validation"]["overall"]
    second = reward_hub.load(out)
    for a, b in zip(first.head.parameters(), second.head.parameters()):
        assert torch.equal(a, b)


def test_cached_and_uncached_embeddings_give_the_same_rewards(tmp_path, clap_dir):
    save_synthetic_ratings(tmp_path / "feedback", n_captions=4, clips_per_caption=2, seed=2)
    common = dict(run_dir=str(tmp_path), clap_model=str(clap_dir), head_hidden_size=16, epochs=2, batch_size=4)
    cached = train_reward_model(RewardTrainingConfig(output_dir=str(tmp_path / "cached"), **common))
    fresh = train_reward_model(RewardTrainingConfig(output_dir=str(tmp_path / "fresh"), cache_embeddings=False, **common))
    a, b = reward_hub.load(cached), reward_hub.load(fresh)
    for p, q in zip(a.head.parameters(), b.head.parameters()):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4)
    ds = load_preference_dataset(tmp_path / "feedback")
    clips = [load_audio(x)[0] for x in ds.with_format("arrow")["audio"].to_pylist()[:3]]
    torch.testing.assert_close(a.score(list(ds["caption"])[:3], clips, 16_000), b.score(list(ds["caption"])[:3], clips, 16_000), atol=1e-5, rtol=0)


def test_cosine_logistic_fit_recovers_the_logistic_that_made_the_ratings(clap_dir):
    """Ratings drawn from sigmoid(12 * cosine - 6): the fitted head must find those two numbers."""
    from baton_trainer.reward_training import fit_cosine_logistic

    model = reward_hub.build_reward_model(str(clap_dir), head_type="cosine_logistic")
    dim = model.embedding_dim
    gen = torch.Generator().manual_seed(0)
    n = 4000
    cosine = torch.rand(n, generator=gen)
    # unit vectors with the drawn cosine: audio = cos * text + sin * (a direction orthogonal to text)
    text = torch.nn.functional.normalize(torch.randn(n, dim, generator=gen), dim=-1)
    other = torch.randn(n, dim, generator=gen)
    other = torch.nn.functional.normalize(other - (other * text).sum(-1, keepdim=True) * text, dim=-1)
    audio = cosine[:, None] * text + torch.sqrt(1 - cosine[:, None] ** 2) * other
    labels = torch.bernoulli(torch.sigmoid(12.0 * cosine - 6.0), generator=gen)
    config = RewardTrainingConfig(head_type="cosine_logistic", weight_decay=0.0)
    history = fit_cosine_logistic(model, audio, text, labels, config.weight_decay)
    assert history[-1]["train_bce"] < history[0]["train_bce"]
    assert abs(model.head.linear.weight.item() - 12.0) < 1.5 and abs(model.head.linear.bias.item() + 6.0) < 0.8


def test_unknown_head_type_is_refused_before_any_embedding(tmp_path, clap_dir):
    save_synthetic_ratings(tmp_path / "feedback", n_captions=4, clips_per_caption=2, seed=2)
    with pytest.raises(ValueError, match="config key 'head_type' must be one of"):
        train_reward_model(RewardTrainingConfig(run_dir=str(tmp_path), clap_model=str(clap_dir), head_type="attention"))
    assert not (tmp_path / "cache").exists()


def test_one_class_rating_set_is_refused(tmp_path, clap_dir):
    rows = synthetic_rating_rows(n_captions=3, clips_per_caption=2)
    rows["feedback"] = [1] * len(rows["feedback"])
    build_dataset(rows).save_to_disk(str(tmp_path / "feedback"))
    with pytest.raises(RewardDataError, match="all 6 human ratings are 1"):
        train_reward_model(RewardTrainingConfig(run_dir=str(tmp_path), clap_model=str(clap_dir)))


def test_missing_feedback_names_the_folder(tmp_path, clap_dir):
    with pytest.raises(ValueError, match="feedback"):
        train_reward_model(RewardTrainingConfig(run_dir=str(tmp_path), clap_model=str(clap_dir)))


def test_auc_matches_the_rank_definition():
    metrics = classification_metrics(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
    assert metrics["auc"] == pytest.approx(0.75) and metrics["accuracy"] == pytest.approx(0.75)


def test_label_scores_only_unrated_clips_and_resumes(trained, tmp_path):
    _, _, model_dir = trained
    generations = save_synthetic_generations(tmp_path / "generations", n_captions=4, clips_per_caption=3)
    rows = [json.loads(line) for line in (generations / "metadata.jsonl").read_text().splitlines()]
    # People rated caption 0's clips.
    rated = [r for r in rows if r["caption_id"] == 0]
    columns = {k: [] for k in ("caption", "audio", "feedback", "reward", "source", "task", "labels", "caption_id", "clip_index", "annotator")}
    for r in rated:
        columns["caption"].append(r["caption"])
        columns["audio"].append({"bytes": (generations / r["file_name"]).read_bytes(), "path": r["file_name"]})
        columns["feedback"].append(1)
        columns["reward"].append(1.0)
        columns["source"].append("human")
        columns["task"].append("integrity")
        columns["labels"].append(r["labels"])
        columns["caption_id"].append(r["caption_id"])
        columns["clip_index"].append(r["clip_index"])
        columns["annotator"].append("a")
    build_dataset(columns).save_to_disk(str(tmp_path / "feedback"))

    # A killed earlier run left one score behind: it must be reused, not recomputed.
    unrated = [r for r in rows if r["caption_id"] != 0]
    progress = tmp_path / ".reward_labeled.scores.jsonl"
    progress.write_text(json.dumps({"file_name": unrated[0]["file_name"], "reward": 0.123}) + "\n" + '{"file_na')

    out = label_unrated(LabelConfig(run_dir=str(tmp_path), reward_model=str(model_dir)))
    ds = load_preference_dataset(out)
    assert len(ds) == len(unrated)
    assert set(ds["feedback"]) == {-1} and set(ds["source"]) == {"reward_model"}
    assert {(c, k) for c, k in zip(ds["caption_id"], ds["clip_index"])} == {(r["caption_id"], r["clip_index"]) for r in unrated}
    rewards = list(ds["reward"])
    assert rewards[0] == pytest.approx(0.123)
    model = reward_hub.load(model_dir)
    clips = [load_audio(generations / r["file_name"])[0] for r in unrated[1:]]
    expected = model.score([r["caption"] for r in unrated[1:]], clips, 16_000)
    np.testing.assert_allclose(rewards[1:], expected.numpy(), atol=1e-5)
    assert not progress.exists()
