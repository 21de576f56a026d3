"""Reward model: deterministic CLAP preprocessing, head-only scoring, Hub pipeline in a clean process."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import reward_hub
from baton_trainer.audio import resample
from baton_trainer.clap import ClapEmbedder
from baton_trainer.testing import save_tiny_clap, synthetic_clip
from reward_hub import RewardInputError, build_reward_model


@pytest.fixture(scope="module")
def clap_dir(tmp_path_factory):
    return save_tiny_clap(tmp_path_factory.mktemp("clap") / "tiny_clap", seed=0)


@pytest.fixture(scope="module")
def model(clap_dir):
    torch.manual_seed(0)
    m = build_reward_model(str(clap_dir), head_hidden_size=32, seed=3)
    # A head with visible slope, so that reward differences show up in comparisons.
    with torch.no_grad():
        for p in m.head.parameters():
            p.mul_(8.0)
    return m


def band_limited_clip(seconds=10.0, sr=48_000, seed=0):
    """Content below 7 kHz survives a trip through 16 kHz, so both rates describe the same sound."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    wav = 0.4 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 2300 * t + 1.0)
    wav += 0.1 * resample(resample(rng.standard_normal(t.size).astype(np.float32), sr, 12_000), 12_000, sr)[: t.size]
    return wav.astype(np.float32)


def test_tiny_clap_embeddings_are_unit_norm_and_distinguish_inputs(clap_dir):
    embedder = ClapEmbedder(str(clap_dir))
    text = embedder.embed_text(["a low hum outside", "a high hiss nearby"])
    audio = embedder.embed_audio([synthetic_clip("low", 0), synthetic_clip("high", 1)], 16_000)
    assert text.shape == (2, embedder.dim) and audio.shape == (2, embedder.dim)
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(audio.norm(dim=-1), torch.ones(2))
    assert float(audio[0] @ audio[1]) < 0.98  # the tiny model still tells a tone from noise


def test_head_on_cached_embeddings_matches_full_model(model, clap_dir):
    captions = ["a low hum outside", "a high hiss nearby", "a low drone at night"]
    clips = [synthetic_clip("low", 0), synthetic_clip("high", 1), synthetic_clip("high", 2, seconds=3.0)]
    embedder = ClapEmbedder(str(clap_dir))
    cached = model.score_embeddings(embedder.embed_audio(clips, 16_000), embedder.embed_text(captions))
    full = model.score(captions, clips, sampling_rate=16_000)
    torch.testing.assert_close(cached.detach(), full, atol=1e-5, rtol=0)
    assert full.std() > 1e-3  # the comparison is not between constants


def test_same_clip_at_16k_and_48k_gets_the_same_reward(model):
    clip48 = band_limited_clip()
    clip16 = resample(clip48, 48_000, 16_000)
    r48 = model.score(["a tone and a hiss"], [clip48], sampling_rate=48_000)
    r16 = model.score(["a tone and a hiss"], [clip16], sampling_rate=16_000)
    assert abs(float(r48 - r16)) < 5e-3


def test_clip_longer_than_10s_gets_a_deterministic_reward(model):
    long_clip = synthetic_clip("high", 5, seconds=12.5)
    first = model.score(["a high hiss"], [long_clip], sampling_rate=16_000)
    second = model.score(["a high hiss"], [long_clip], sampling_rate=16_000)
    assert torch.equal(first, second)
    # Only the first 10 s count (CLAP's own random crop never runs); the resampler's filter sees a
    # few samples past the cut in the long clip, hence a tolerance, far below the head's spread.
    head = model.score(["a high hiss"], [long_clip[: 10 * 16_000]], sampling_rate=16_000)
    tail = model.score(["a high hiss"], [long_clip[-10 * 16_000 :]], sampling_rate=16_000)
    torch.testing.assert_close(first, head, atol=2e-3, rtol=0)
    assert abs(float(first - tail)) > 10 * abs(float(first - head))


@pytest.mark.parametrize(
    "wav, message",
    [
        (np.zeros(0, dtype=np.float32), "empty"),
        (np.array([0.1, np.nan, 0.2] * 1000, dtype=np.float32), "NaN"),
        (np.zeros((2, 16_000), dtype=np.float32), "mono"),
    ],
)
def test_unusable_audio_is_refused_with_a_clear_message(model, wav, message):
    with pytest.raises(ValueError, match=message):
        model.score(["a caption"], [wav], sampling_rate=16_000)
    with pytest.raises(ValueError, match=message):
        ClapEmbedder(model.clap, processor=model.processor).embed_audio([wav], 16_000)


def test_silence_gets_a_finite_reward_and_bad_captions_are_refused(model):
    silent = np.zeros(16_000 * 10, dtype=np.float32)
    reward = model.score(["a dog barks"], [silent], sampling_rate=16_000)
    assert torch.isfinite(reward).all() and 0.0 <= float(reward) <= 1.0
    with pytest.raises(RewardInputError, match="caption 0"):
        model.score([""], [silent], sampling_rate=16_000)
    with pytest.raises(RewardInputError, match="sampling_rate"):
        model.score(["a dog barks"], [silent], sampling_rate=0)


def test_saved_folder_loads_through_auto_classes_and_reward_hub_load(model, tmp_path):
    from transformers import AutoConfig, AutoModel

    model.save_pretrained(tmp_path / "rm")
    files = set(os.listdir(tmp_path / "rm"))
    assert {"config.json", "model.safetensors", "modeling_baton_reward.py", "pipeline_baton_reward.py"} <= files
    assert not any(f.endswith(".bin") for f in files)
    config = json.loads((tmp_path / "rm" / "config.json").read_text())
    assert config["custom_pipelines"]["text-audio-reward"]["impl"] == "pipeline_baton_reward.TextAudioRewardPipeline"
    assert AutoConfig.from_pretrained(tmp_path / "rm").model_type == "baton_reward"
    assert type(AutoModel.from_pretrained(tmp_path / "rm")) is reward_hub.BatonRewardModel
    loaded = reward_hub.load(tmp_path / "rm")
    clip = synthetic_clip("low", 9)
    torch.testing.assert_close(loaded.score(["a low hum"], [clip], 16_000), model.score(["a low hum"], [clip], 16_000))


PIPELINE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    # Make reward_hub and baton_trainer unimportable (and soxr too, when asked): the Hub code must
    # run on transformers and soxr alone.
    for name in ("reward_hub", "baton_trainer", *sys.argv[3:]):
        sys.modules[name] = None
    from transformers import pipeline

    model_dir, clips_file = sys.argv[1], sys.argv[2]
    data = np.load(clips_file)
    scorer = pipeline("text-audio-reward", model=model_dir, trust_remote_code=True)
    inputs = [
        {"caption": "a low hum outside", "audio": data["a48"], "sampling_rate": 48000},
        {"caption": "a high hiss nearby", "audio": data["b48"], "sampling_rate": 48000},
        {"caption": "a tone and a hiss", "audio": data["c16"], "sampling_rate": 16000},
    ]
    print(json.dumps({"scores": [out["score"] for out in scorer(inputs)], "module": type(scorer).__module__}))
    """
)


def _run_pipeline_script(tmp_path, *extra_args):
    """Run PIPELINE_SCRIPT on tmp_path/rm from a folder outside the repository, without baton_trainer on the path."""
    script = tmp_path / "elsewhere" / "score.py"
    script.parent.mkdir()
    script.write_text(PIPELINE_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "hf_modules")
    return subprocess.run(
        [sys.executable, str(script), str(tmp_path / "rm"), str(tmp_path / "clips.npz"), *extra_args],
        cwd=script.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cosine_logistic_head_scores_the_clap_cosine_and_round_trips(clap_dir, tmp_path):
    from transformers import AutoModel

    model = build_reward_model(str(clap_dir), head_type="cosine_logistic")
    with torch.no_grad():
        model.head.linear.weight.fill_(7.0)
        model.head.linear.bias.fill_(-2.0)
    captions = ["a low hum outside", "a high hiss nearby", "a low drone at night"]
    clips = [synthetic_clip("low", 0), synthetic_clip("high", 1), synthetic_clip("low", 2)]
    embedder = ClapEmbedder(str(clap_dir))
    cosine = (embedder.embed_audio(clips, 16_000) * embedder.embed_text(captions)).sum(-1)
    rewards = model.score(captions, clips, sampling_rate=16_000)
    torch.testing.assert_close(rewards, torch.sigmoid(7.0 * cosine - 2.0), atol=1e-5, rtol=0)
    assert sum(p.numel() for p in model.head.parameters()) == 2

    model.save_pretrained(tmp_path / "rm")
    assert json.loads((tmp_path / "rm" / "config.json").read_text())["head_type"] == "cosine_logistic"
    for loaded in (reward_hub.load(tmp_path / "rm"), AutoModel.from_pretrained(tmp_path / "rm")):
        assert loaded.config.head_type == "cosine_logistic"
        torch.testing.assert_close(loaded.head.linear.weight, model.head.linear.weight)
    torch.testing.assert_close(reward_hub.load(tmp_path / "rm").score(captions, clips, 16_000), rewards)


def test_unknown_head_type_is_refused(clap_dir):
    with pytest.raises(ValueError, match="head_type must be one of mlp, cosine_logistic"):
        build_reward_model(str(clap_dir), head_type="attention")


@pytest.mark.slow
@pytest.mark.parametrize("head_type", ["mlp", "cosine_logistic"])
def test_pipeline_with_remote_code_in_a_clean_process_matches_reward_hub_load(model, clap_dir, head_type, tmp_path):
    if head_type != "mlp":
        model = build_reward_model(str(clap_dir), head_type=head_type)
        with torch.no_grad():
            model.head.linear.weight.fill_(40.0)  # a steep slope, so the tiny CLAP's cosines spread the scores
            model.head.linear.bias.fill_(-20.0)
    model.save_pretrained(tmp_path / "rm")
    a48 = resample(synthetic_clip("low", 11), 16_000, 48_000)
    b48 = resample(synthetic_clip("high", 12), 16_000, 48_000)
    c16 = resample(band_limited_clip(seed=1), 48_000, 16_000)
    np.savez(tmp_path / "clips.npz", a48=a48, b48=b48, c16=c16)
    result = _run_pipeline_script(tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["module"].startswith("transformers_modules")  # the code stored in the folder ran

    loaded = reward_hub.load(tmp_path / "rm")
    expected48 = loaded.score(["a low hum outside", "a high hiss nearby"], [a48, b48], 48_000)
    np.testing.assert_allclose(out["scores"][:2], expected48.numpy(), atol=1e-5)
    # At 16 kHz too: the pipeline resamples with soxr, as reward_hub does, so the scores are the same.
    expected16 = loaded.score(["a tone and a hiss"], [c16], 16_000)
    np.testing.assert_allclose(out["scores"][2], float(expected16), atol=1e-5)


@pytest.mark.slow
def test_pipeline_without_soxr_refuses_to_score_instead_of_scoring_differently(model, tmp_path):
    model.save_pretrained(tmp_path / "rm")
    np.savez(tmp_path / "clips.npz", a48=np.zeros(48_000, np.float32), b48=np.zeros(48_000, np.float32), c16=np.zeros(16_000, np.float32))
    result = _run_pipeline_script(tmp_path, "soxr")
    assert result.returncode != 0 and not result.stdout.strip()
    assert "pip install soxr" in result.stderr.splitlines()[-1]  # one line that names what is missing


def test_the_fast_clap_features_are_transformers_features_and_save_as_them(tmp_path):
    """The one-call spectrogram gives transformers' ClapFeatureExtractor features for short,
    exact, long (fusion crops and random truncation) clips, and saves as a plain ClapFeatureExtractor."""
    from transformers import AutoFeatureExtractor, ClapFeatureExtractor

    from baton_trainer.clap import clap_feature_extractor
    from reward_hub.modeling_baton_reward import FastClapFeatureExtractor, fast_clap_features

    plain = clap_feature_extractor()
    fast = fast_clap_features(plain)
    assert type(fast) is FastClapFeatureExtractor and fast_clap_features(fast) is fast
    rng = np.random.default_rng(3)
    clips = [rng.normal(0, 0.2, n).astype(np.float32) for n in (700, 48_000, 77_777, 480_000, 480_300, 700_000)]
    # digital silence before, between and after sound (a short clip zero-padded), and none at all
    quiet = np.zeros(200_000, np.float32)
    quiet[30_011:30_700] = rng.normal(0, 0.2, 689)
    quiet[123_456:150_000] = rng.normal(0, 0.2, 26_544)
    clips += [quiet, np.zeros(96_000, np.float32), np.concatenate([rng.normal(0, 0.2, 5_000), np.zeros(400_000)]).astype(np.float32)]
    for truncation in ("fusion", "rand_trunc"):
        np.random.seed(0)  # both draw the same random crops of the long clips
        want = plain(clips, sampling_rate=48_000, truncation=truncation, return_tensors="np")
        np.random.seed(0)
        got = fast(clips, sampling_rate=48_000, truncation=truncation, return_tensors="np")
        assert got["input_features"].shape == want["input_features"].shape
        np.testing.assert_allclose(got["input_features"], want["input_features"], atol=1e-3)  # dB
        assert (got["is_longer"] == want["is_longer"]).all()
    fast.save_pretrained(tmp_path)
    reloaded = AutoFeatureExtractor.from_pretrained(tmp_path)
    assert type(reloaded) is ClapFeatureExtractor and reloaded.to_dict() == plain.to_dict()


def test_the_shipped_toy_reward_carries_the_packages_own_hub_code():
    """The toy reward model's remote-code files are copies of reward_hub's (a model folder must
    carry its code): a change to one that misses the other would give the Hub pipeline another score."""
    from pathlib import Path

    from baton_trainer.toyworld.models import PRETRAINED_DIR

    package = Path(reward_hub.__file__).parent
    for name in ("modeling_baton_reward.py", "pipeline_baton_reward.py"):
        assert (PRETRAINED_DIR / "toy_reward" / name).read_bytes() == (package / name).read_bytes(), name
