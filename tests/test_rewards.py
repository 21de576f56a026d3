"""Reward zoo (reward_hub.rewards): one interface over tiny real models saved with save_pretrained
and loaded back by path, the cache, the combination rules and the refusals."""

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soxr
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    ClapModel,
    ClapProcessor,
    PreTrainedTokenizerFast,
    Qwen2AudioConfig,
    Qwen2AudioForConditionalGeneration,
    Qwen2AudioProcessor,
    WhisperFeatureExtractor,
)

import reward_hub
from baton_trainer.testing import save_tiny_clap
from reward_hub.rewards import (
    REWARDS,
    GroupwiseReward,
    Reward,
    RewardError,
    RewardSet,
    ScoreCache,
    build_reward,
    combine,
    group_normalise,
    register_reward,
)

ROOT = Path(__file__).resolve().parents[1]
CAPTIONS = ["a dog barks while a car passes by", "rain falls on a roof", "a baby cries then a woman laughs"]


def clip_at(sample_rate: int, seed: int, seconds: float = 3.0) -> np.ndarray:
    """Tones below 7 kHz plus a little noise: the same sound survives every rate used here."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    freqs = rng.uniform(200, 3000, size=3)
    wav = sum(0.2 * np.sin(2 * np.pi * f * t + i) for i, f in enumerate(freqs)) + 0.02 * rng.standard_normal(t.size)
    return wav.astype(np.float32)


CLIPS_16K = [clip_at(16_000, seed) for seed in range(3)]


# ----------------------------------------------------------------------------------------------
# Tiny models, saved and loaded back by path


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("reward_models")
    clap_dir = save_tiny_clap(root / "clap", seed=0)
    baton = reward_hub.build_reward_model(str(clap_dir), head_hidden_size=16, seed=1)
    with torch.no_grad():  # a head with visible slope, so scores differ between clips
        for p in baton.head.parameters():
            p.mul_(8.0)
    baton.save_pretrained(root / "baton")
    return {"clap": clap_dir, "baton": root / "baton", "judge": save_tiny_judge(root / "judge")}


@pytest.fixture(scope="module")
def baton(model_dirs):
    return build_reward({"name": "baton", "model": str(model_dirs["baton"])}, device="cpu")


@pytest.fixture(scope="module")
def clap(model_dirs):
    return build_reward({"name": "clap", "model": str(model_dirs["clap"])}, device="cpu")


JUDGE_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"]


def judge_tokenizer(vocab_size: int = 320) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with Qwen2-Audio's special tokens, trained offline (with
    vocab_size 262, bytes and special tokens only: no word is a single token)."""
    corpus = [
        "Does this audio contain the sound events described by the text: a dog barks? Answer yes or no.",
        "system user assistant You are a helpful assistant. Audio 1:",
        *CAPTIONS,
    ]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=JUDGE_SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator((corpus + ["yes", "no", "Yes", "No"]) * 3, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>", additional_special_tokens=JUDGE_SPECIAL[1:])


def save_tiny_judge(path: Path, vocab_size: int = 320, with_model: bool = True) -> Path:
    """A randomly initialised Qwen2AudioForConditionalGeneration a few kB large, with a real
    Qwen2AudioProcessor (Whisper features, chat template), saved with save_pretrained."""
    tokenizer = judge_tokenizer(vocab_size)
    processor = Qwen2AudioProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=128), tokenizer=tokenizer)
    processor.save_pretrained(path)
    if with_model:
        config = Qwen2AudioConfig(
            audio_config={"model_type": "qwen2_audio_encoder", "d_model": 16, "encoder_layers": 1, "encoder_attention_heads": 2, "encoder_ffn_dim": 32},
            text_config={
                "model_type": "qwen2",
                "vocab_size": len(tokenizer),
                "hidden_size": 32,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "num_key_value_heads": 1,
                "intermediate_size": 64,
            },
            audio_token_index=tokenizer.convert_tokens_to_ids("<|AUDIO|>"),
        )
        torch.manual_seed(0)
        model = Qwen2AudioForConditionalGeneration(config).eval()
        with torch.no_grad():  # a sharper output layer, so P(yes) moves away from 1/2 between clips
            model.lm_head.weight.mul_(50.0)
        model.save_pretrained(path)
    return path


# ----------------------------------------------------------------------------------------------
# Registry


def test_rewards_are_built_by_name_and_unknown_ones_are_listed(model_dirs, baton):
    assert {"baton", "clap", "lalm_judge", "remote", "aesthetics"} <= set(REWARDS)
    assert baton.name == "baton" and baton.sample_rate == 48_000 and baton.training_allowed
    with pytest.raises(ValueError, match=r"unknown reward 'clapp'; known rewards: .*clap"):
        build_reward("clapp")
    with pytest.raises(ValueError, match=r"reward 'baton': unknown option\(s\) modle; it takes: model"):
        build_reward({"name": "baton", "modle": str(model_dirs["baton"])})


def test_identity_is_stable_and_tells_models_apart(model_dirs, baton, clap):
    again = build_reward({"name": "baton", "model": str(model_dirs["baton"]), "weight": 3.0}, device="cpu")
    assert again.identity() == baton.identity()
    assert "BatonReward" in baton.identity() and str(model_dirs["baton"]) in baton.identity()
    assert clap.identity() != baton.identity()


# ----------------------------------------------------------------------------------------------
# baton and clap


def test_baton_reward_is_the_reward_models_score_in_unit_interval(model_dirs, baton):
    scores = baton.score(CAPTIONS, CLIPS_16K, 16_000)
    assert scores.dtype == np.float64 and scores.shape == (3,)
    assert np.all((scores >= 0) & (scores <= 1)) and np.ptp(scores) > 1e-4
    direct = reward_hub.load(model_dirs["baton"]).score(CAPTIONS, CLIPS_16K, sampling_rate=16_000).numpy()
    np.testing.assert_allclose(scores, direct, atol=1e-6)


def test_clap_reward_is_the_cosine_of_clap_embeddings(model_dirs, clap):
    scores = clap.score(CAPTIONS, CLIPS_16K, 16_000)
    model, processor = ClapModel.from_pretrained(model_dirs["clap"]).eval(), ClapProcessor.from_pretrained(model_dirs["clap"])
    clips = [np.pad(soxr.resample(c, 16_000, 48_000, quality="HQ").astype(np.float32), (0, 480_000 - 3 * 48_000)) for c in CLIPS_16K]
    with torch.no_grad():
        text = processor.tokenizer(CAPTIONS, padding=True, return_tensors="pt")
        audio = processor.feature_extractor(clips, sampling_rate=48_000, return_tensors="pt")
        t = model.get_text_features(input_ids=text["input_ids"], attention_mask=text["attention_mask"]).pooler_output
        a = model.get_audio_features(input_features=audio["input_features"], is_longer=audio["is_longer"]).pooler_output
    np.testing.assert_allclose(scores, F.cosine_similarity(t, a, dim=-1).numpy(), atol=1e-5)
    assert np.all(np.abs(scores) <= 1)


@pytest.mark.parametrize("rate", [16_000, 32_000, 44_100, 48_000])
def test_scores_do_not_depend_on_the_rate_the_clip_arrives_at(baton, clap, rate):
    clips = [clip_at(rate, seed) for seed in range(2)]
    at_48k = [soxr.resample(c, rate, 48_000, quality="HQ").astype(np.float32) for c in clips]
    for reward in (baton, clap):
        np.testing.assert_allclose(reward.score(CAPTIONS[:2], clips, rate), reward.score(CAPTIONS[:2], at_48k, 48_000), atol=1e-4)


def test_a_fresh_interpreter_gives_the_same_scores(tmp_path, model_dirs, baton, clap):
    """Also: reward_hub.rewards and reward_hub.serve run without baton_trainer imported."""
    np.save(tmp_path / "clips.npy", np.stack(CLIPS_16K))
    script = textwrap.dedent(
        f"""
        import json, sys
        import numpy as np
        from reward_hub.rewards import build_reward
        import reward_hub.serve
        clips = list(np.load({str(tmp_path / "clips.npy")!r}))
        out = {{}}
        for name, path in [("baton", {str(model_dirs["baton"])!r}), ("clap", {str(model_dirs["clap"])!r})]:
            out[name] = build_reward({{"name": name, "model": path}}, device="cpu").score({CAPTIONS!r}, clips, 16000).tolist()
        judge = build_reward({{"name": "lalm_judge", "model": {str(model_dirs["judge"])!r}, "dtype": "float32"}}, device="cpu")
        out["lalm_judge"] = judge.score({CAPTIONS!r}, clips, 16000).tolist()
        out["trainer_imported"] = any(m.startswith("baton_trainer") for m in sys.modules)
        print(json.dumps(out))
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=240, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    fresh = json.loads(result.stdout.strip().splitlines()[-1])
    assert fresh["trainer_imported"] is False
    judge = build_reward({"name": "lalm_judge", "model": str(model_dirs["judge"]), "dtype": "float32"}, device="cpu")
    for name, reward in [("baton", baton), ("clap", clap), ("lalm_judge", judge)]:
        np.testing.assert_allclose(fresh[name], reward.score(CAPTIONS, CLIPS_16K, 16_000), atol=1e-5, err_msg=name)


def test_reward_hub_never_imports_the_trainer():
    for path in (ROOT / "reward_hub").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] == "baton_trainer" for n in names), f"{path} imports baton_trainer"


# ----------------------------------------------------------------------------------------------
# Refusals


class ConstantReward(Reward):
    """A scorer of this file's own: returns what it is told, counting the clips it scored."""

    name = "constant"
    sample_rate = 16_000

    def __init__(self, values=None, batch_size: int = 2, fail_from_call: int | None = None):
        self.values, self.batch_size, self.fail_from_call = values, batch_size, fail_from_call
        self.scored, self.calls = 0, 0

    def _score(self, captions, waves):
        self.calls += 1
        if self.fail_from_call is not None and self.calls >= self.fail_from_call:
            raise RewardError("reward 'constant': the scorer went away")
        self.scored += len(waves)
        if self.values is not None:  # handed out in order, batch after batch
            start = self.scored - len(waves)
            return self.values[start : start + len(waves)]
        return [float(np.mean(w)) + len(c) for c, w in zip(captions, waves)]


def test_bad_clips_are_refused_naming_the_reward_and_the_clip(baton):
    good = CLIPS_16K[0]
    cases = [
        ([good, np.stack([good, good])], "clip 1: expected a mono waveform"),
        ([good, np.zeros(0, np.float32)], "clip 1: audio is empty"),
        ([good, np.full(100, np.nan, np.float32)], "clip 1: audio contains NaN"),
    ]
    for waves, message in cases:
        with pytest.raises(RewardError, match=f"reward 'baton': {message}"):
            baton.score(CAPTIONS[:2], waves, 16_000)
    with pytest.raises(RewardError, match="reward 'baton': clip 1: caption must be a non-empty string"):
        baton.score(["a dog", "  "], [good, good], 16_000)
    with pytest.raises(RewardError, match="sample_rate must be a positive integer"):
        baton.score(CAPTIONS[:1], [good], 0)
    assert issubclass(RewardError, ValueError)


def test_nan_or_missing_scores_raise_naming_reward_and_clip():
    waves = [np.ones(10, np.float32)] * 4
    with pytest.raises(RewardError, match=r"reward 'constant': clip 3: score is NaN or infinite"):
        ConstantReward(values=[0.1, 0.2, 0.3, float("nan")]).score(["x"] * 4, waves, 16_000)
    with pytest.raises(RewardError, match=r"reward 'constant': clips 0, 1: expected 2 scores, got 1"):
        ConstantReward(values=[0.1]).score(["x"] * 4, waves, 16_000)
    with pytest.raises(RewardError, match=r"reward 'constant': clips 0, 1: scores are not numbers"):
        ConstantReward(values=["high", "low"]).score(["x"] * 2, waves[:2], 16_000)


def test_a_judge_only_reward_is_refused_for_training():
    judge = ConstantReward()
    judge.training_allowed = False
    RewardSet([judge]).score(["x"], [np.ones(4, np.float32)], 16_000)  # judging is fine
    with pytest.raises(RewardError, match="reward 'constant#2' is an evaluation judge only"):
        RewardSet([ConstantReward(), judge]).check_training_allowed()


def test_aesthetics_without_its_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "audiobox_aesthetics", None)  # import fails as if not installed
    with pytest.raises(RewardError) as error:
        build_reward({"name": "aesthetics", "axes": {"PQ": 1.0, "CE": 0.5}})
    message = str(error.value)
    assert "\n" not in message and "'aesthetics'" in message and "pip install --no-deps audiobox-aesthetics" in message
    with pytest.raises(ValueError, match="axes must be among CE, CU, PC, PQ"):
        build_reward({"name": "aesthetics", "axes": "loudness"})


@pytest.fixture
def tiny_audiobox_encoder(monkeypatch):
    """The package builds its WavLM encoder from a module-level config (12 layers, 768 wide) that
    no constructor argument reaches; a 2-layer, 32-wide config of the same WavLMConfig class stands
    in, for the model saved here and for its loading."""
    import audiobox_aesthetics.model.aes as aes  # the README's test command installs it (--no-deps)
    from audiobox_aesthetics.model.wavlm import WavLMConfig

    config = dict(vars(aes.DEFAULT_AUDIO_CFG))
    config.update(
        encoder_layers=2,
        encoder_embed_dim=32,
        encoder_ffn_embed_dim=64,
        encoder_attention_heads=2,
        conv_feature_layers="[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2",
        conv_pos=16,
        conv_pos_groups=4,
        num_buckets=32,
        max_distance=64,
    )
    monkeypatch.setattr(aes, "DEFAULT_AUDIO_CFG", WavLMConfig(config))
    return aes


def test_aesthetics_scores_ten_second_windows_of_the_packages_model_on_the_rating_scale(tmp_path, tiny_audiobox_encoder):
    aes = tiny_audiobox_encoder
    transform = {axis: {"mean": 4.0 + i, "std": 1.5 + 0.25 * i} for i, axis in enumerate(aes.AXES_NAME)}
    torch.manual_seed(0)
    model = aes.AesMultiOutput(nth_layer=3, target_transform=transform).eval()
    model.save_pretrained(tmp_path / "aes")
    reward = build_reward({"name": "aesthetics", "checkpoint": str(tmp_path / "aes"), "axes": {"PQ": 1.0, "CE": 0.5}, "batch_size": 2}, device="cpu")

    def by_hand(wave: np.ndarray) -> float:
        """One window at a time through the saved model: the rating-scale mix, weighted by length."""
        total, weight = 0.0, 0.0
        for start in range(0, len(wave), 160_000):
            piece = torch.from_numpy(wave[start : start + 160_000])
            padded = F.pad(piece, (0, 160_000 - piece.numel()))[None, None]
            mask = (torch.arange(160_000) < piece.numel())[None, None]
            with torch.no_grad():
                out = model({"wav": padded, "mask": mask})
            rating = {axis: float(out[axis][0]) * transform[axis]["std"] + transform[axis]["mean"] for axis in ("PQ", "CE")}
            total += piece.numel() / 160_000 * (rating["PQ"] + 0.5 * rating["CE"]) / 1.5
            weight += piece.numel() / 160_000
        return total / weight

    # 3 s, 25 s (windows of 10, 10 and 5 s) and 12 s clips: batched windows, one padding mask
    waves = [clip_at(16_000, 0, 3.0), clip_at(16_000, 1, 25.0), clip_at(16_000, 2, 12.0)]
    scores = reward.score(CAPTIONS, waves, 16_000)
    np.testing.assert_allclose(scores, [by_hand(w) for w in waves], atol=1e-5)
    assert np.ptp(scores) > 1e-4 and np.all((scores > 0) & (scores < 11))
    clip_48k = clip_at(48_000, 3, 4.0)
    resampled_first = reward.score(CAPTIONS[:1], [soxr.resample(clip_48k, 48_000, 16_000, quality="HQ").astype(np.float32)], 16_000)
    np.testing.assert_allclose(reward.score(CAPTIONS[:1], [clip_48k], 48_000), resampled_first, atol=1e-4)
    pq_only = build_reward({"name": "aesthetics", "checkpoint": str(tmp_path / "aes"), "axes": "PQ"}, device="cpu")
    assert pq_only.identity() != reward.identity()
    with pytest.raises(RewardError, match=r"reward 'aesthetics'.*clip 1"):
        reward.score(CAPTIONS[:2], [waves[0], np.array([np.nan, 0.0], dtype=np.float32)], 16_000)


# ----------------------------------------------------------------------------------------------
# RewardSet, cache, combine


def test_reward_set_scores_each_reward_by_name_with_weights(model_dirs, baton, clap):
    rewards = RewardSet([baton, {"name": "clap", "model": str(model_dirs["clap"]), "weight": 0.5}, clap], device="cpu")
    assert rewards.keys == ["baton", "clap", "clap#2"] and rewards.weights == [1.0, 0.5, 1.0]
    parts = rewards.score(CAPTIONS, CLIPS_16K, 16_000)
    assert list(parts) == ["baton", "clap", "clap#2"]
    np.testing.assert_allclose(parts["baton"], baton.score(CAPTIONS, CLIPS_16K, 16_000))
    np.testing.assert_allclose(parts["clap"], parts["clap#2"])
    assert rewards.weight_map() == {"baton": 1.0, "clap": 0.5, "clap#2": 1.0}


def test_the_cache_scores_no_clip_twice_and_a_resumed_run_rescores_nothing(tmp_path):
    waves = [np.full(8, i, np.float32) for i in range(5)]
    captions = [f"caption {i}" for i in range(5)]
    reward = ConstantReward()
    first = RewardSet([reward], cache=ScoreCache(tmp_path / "scores.jsonl")).score(captions, waves, 16_000)
    assert reward.scored == 5
    again = RewardSet([reward], cache=ScoreCache(tmp_path / "scores.jsonl")).score(captions, waves, 16_000)
    assert reward.scored == 5
    np.testing.assert_array_equal(first["constant"], again["constant"])
    # A new clip, or the same clip at another rate or under another caption, is scored; nothing else.
    RewardSet([reward], cache=ScoreCache(tmp_path / "scores.jsonl")).score(captions + ["caption 0", "other"], waves + [waves[0], waves[0]], 16_000)
    assert reward.scored == 6
    RewardSet([reward], cache=ScoreCache(tmp_path / "scores.jsonl")).score(captions[:1], waves[:1], 32_000)
    assert reward.scored == 7
    # Another reward identity does not reuse the scores.
    other = ConstantReward(values=[0.5] * 5)
    other.options = lambda: {"variant": 2}
    RewardSet([other], cache=ScoreCache(tmp_path / "scores.jsonl")).score(captions, waves, 16_000)
    assert other.scored == 5


def test_a_failure_keeps_the_batches_already_scored(tmp_path):
    waves = [np.full(8, i, np.float32) for i in range(6)]
    captions = [f"caption {i}" for i in range(6)]
    flaky = ConstantReward(batch_size=2, fail_from_call=3)
    with pytest.raises(RewardError, match=r"the scorer went away \(clips 4, 5\)"):
        RewardSet([flaky], cache=ScoreCache(tmp_path / "scores.jsonl")).score(captions, waves, 16_000)
    assert len(ScoreCache(tmp_path / "scores.jsonl")) == 4
    # A kill mid-write leaves a torn last line: it is skipped, and the next write starts a new line.
    with open(tmp_path / "scores.jsonl", "a") as handle:
        handle.write('{"clip": "abc", "rew')
    resumed = ConstantReward(batch_size=2)
    scores = RewardSet([resumed], cache=ScoreCache(tmp_path / "scores.jsonl")).score(captions, waves, 16_000)["constant"]
    assert resumed.scored == 2
    np.testing.assert_allclose(scores, [i + len(c) for i, c in enumerate(captions)])
    assert len(ScoreCache(tmp_path / "scores.jsonl")) == 6


def test_combine_sum_and_per_reward():
    parts = {"a": np.array([1.0, 2.0, 3.0, 10.0, 10.0]), "b": np.array([0.0, 0.5, 0.1, 0.2, 0.4])}
    weights = {"a": 1.0, "b": 2.0}
    groups = np.array([0, 0, 0, 1, 1])
    np.testing.assert_allclose(combine(parts, weights, groups, "sum"), parts["a"] + 2 * parts["b"])
    per_reward = combine(parts, weights, groups, "per_reward", eps=0.0 + 1e-4)
    z_a0 = (np.array([1.0, 2.0, 3.0]) - 2.0) / (np.std([1.0, 2.0, 3.0]) + 1e-4)
    z_b0 = (np.array([0.0, 0.5, 0.1]) - 0.2) / (np.std([0.0, 0.5, 0.1]) + 1e-4)
    z_b1 = np.array([-0.1, 0.1]) / (0.1 + 1e-4)  # reward a is constant in group 1: no signal from it
    np.testing.assert_allclose(per_reward, np.concatenate([z_a0 + 2 * z_b0, 2 * z_b1]))
    np.testing.assert_allclose(group_normalise(parts["a"], groups)[3:], 0.0)
    with pytest.raises(ValueError, match="aggregation must be one of sum, per_reward"):
        combine(parts, weights, groups, "mean")
    with pytest.raises(ValueError, match="weights for"):
        combine(parts, {"a": 1.0}, groups)


def test_register_reward_adds_a_buildable_name():
    register_reward("test_constant", ConstantReward)
    try:
        reward = build_reward({"name": "test_constant", "batch_size": 3, "weight": 2.0})
        assert isinstance(reward, ConstantReward) and reward.batch_size == 3
    finally:
        REWARDS.pop("test_constant")


# ----------------------------------------------------------------------------------------------
# lalm_judge


def reference_judge_score(path: Path, caption: str, wave_16k: np.ndarray) -> float:
    """sigmoid(log p(yes) - log p(no)) for one clip, written out by hand from the saved model."""
    processor = Qwen2AudioProcessor.from_pretrained(path)
    model = Qwen2AudioForConditionalGeneration.from_pretrained(path).eval()
    question = f"Does this audio contain the sound events described by the text: {caption}? Answer yes or no."
    messages = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], audio=[wave_16k], sampling_rate=16_000, return_tensors="pt")
    with torch.no_grad():
        log_probs = torch.log_softmax(model(**inputs).logits[0, -1].float(), dim=-1)
    tok = processor.tokenizer
    ids = {w: tok.convert_tokens_to_ids(w) for w in ("yes", "Yes", "no", "No")}
    log_yes = torch.logsumexp(log_probs[[ids["yes"], ids["Yes"]]], dim=0)
    log_no = torch.logsumexp(log_probs[[ids["no"], ids["No"]]], dim=0)
    return float(torch.sigmoid(log_yes - log_no))


def test_lalm_judge_scores_p_yes_against_p_no_batched(model_dirs):
    judge = build_reward({"name": "lalm_judge", "model": str(model_dirs["judge"]), "dtype": "float32", "batch_size": 3}, device="cpu")
    assert judge.sample_rate == 16_000
    # Clips of different lengths: the batch is padded, and padding must not move any score.
    clips = [clip_at(16_000, 0, seconds=1.0), clip_at(16_000, 1, seconds=2.5), clip_at(48_000, 2, seconds=1.5)]
    waves_16k = clips[:2] + [soxr.resample(clips[2], 48_000, 16_000, quality="HQ").astype(np.float32)]
    batched = judge.score(CAPTIONS[:2], clips[:2], 16_000)
    one_by_one = np.array([reference_judge_score(model_dirs["judge"], c, w) for c, w in zip(CAPTIONS, waves_16k)])
    np.testing.assert_allclose(batched, one_by_one[:2], atol=1e-5)
    np.testing.assert_allclose(judge.score(CAPTIONS[2:], clips[2:], 48_000), one_by_one[2:], atol=1e-4)
    assert np.all((one_by_one > 0) & (one_by_one < 1)) and np.ptp(one_by_one) > 1e-3
    bf16 = build_reward({"name": "lalm_judge", "model": str(model_dirs["judge"]), "dtype": "bfloat16"}, device="cpu")
    np.testing.assert_allclose(bf16.score(CAPTIONS[:2], clips[:2], 16_000), batched, atol=0.05)
    custom = build_reward({"name": "lalm_judge", "model": str(model_dirs["judge"]), "dtype": "float32", "template": "Is this {caption}?"}, device="cpu")
    assert "Is this a dog barks?" in custom.prompt("a dog barks.") and custom.identity() != judge.identity()


def test_lalm_judge_without_a_single_yes_token_says_how_to_fix_it(tmp_path):
    path = save_tiny_judge(tmp_path / "judge_no_yes", vocab_size=262, with_model=False)
    with pytest.raises(RewardError, match=r"reward 'lalm_judge': the tokenizer of .* has no single token for the answer 'yes'.*pass yes_token=/no_token="):
        build_reward({"name": "lalm_judge", "model": str(path), "dtype": "float32"}, device="cpu")
    with pytest.raises(ValueError, match=r"template must contain '\{caption\}'"):
        build_reward({"name": "lalm_judge", "model": str(path), "template": "Is it a dog?"})


def test_events_reward_gives_credit_per_event_and_for_order_and_only_judges_with_the_toy_detector(tmp_path, monkeypatch):
    import baton_trainer.rewards  # noqa: F401  (registers "oracle" and "events")
    from baton_trainer.evaluation.models import PANNS_SED_FILE, Cnn14Config, PannsCnn14Sed
    from baton_trainer.toyworld.render import render_sequence

    caption = "knock then chirp then beep"
    played = {"in order": ["knock", "chirp", "beep"], "reversed": ["beep", "chirp", "knock"], "one missing": ["knock", "beep"], "none": []}
    waves = [render_sequence(events, seed=3) for events in played.values()]
    events = build_reward({"name": "events", "detector": "toy"})
    scores = dict(zip(played, events.score([caption] * len(waves), waves, 16_000)))
    assert scores == {"in order": 1.0, "reversed": 0.5, "one missing": pytest.approx(1 / 3), "none": 0.0}
    unordered = build_reward({"name": "events", "detector": "toy", "order": False}).score([caption] * 2, waves[1:3], 16_000)
    np.testing.assert_allclose(unordered, [1.0, 2 / 3])
    with pytest.raises(RewardError, match=r"reward 'events'.*'a quiet room'.*\(clip 0\)"):
        events.score(["a quiet room"], waves[:1], 16_000)
    with pytest.raises(RewardError, match="'events' is an evaluation judge only"):
        RewardSet([events]).check_training_allowed()

    # PANNs: a tiny Cnn14_DecisionLevelMax saved in the released checkpoint's layout, any clip rate
    tiny = Cnn14Config(sample_rate=32_000, window_size=1024, hop_size=320, fmax=14_000.0, channels=(4, 4, 8, 8, 8, 16), min_samples=32_000)
    torch.manual_seed(0)
    torch.save({"model": PannsCnn14Sed(tiny).state_dict()}, tmp_path / PANNS_SED_FILE)
    from baton_trainer.evaluation import models

    monkeypatch.setattr(models, "PANNS_SED_CONFIG", tiny)  # the class's default config, at tiny size
    panns = build_reward({"name": "events", "checkpoint": str(tmp_path)}, device="cpu")
    RewardSet([panns]).check_training_allowed()  # a detector other than the judge may train
    real = "a dog barks and then a car horn honks"
    at_16k = panns.score([real] * 2, waves[:2], 16_000)
    at_48k = panns.score([real] * 2, [soxr.resample(w, 16_000, 48_000, quality="HQ") for w in waves[:2]], 48_000)
    assert np.all((0 <= at_16k) & (at_16k <= 1))
    np.testing.assert_allclose(at_48k, at_16k, atol=1e-4)


def test_label_stage_labels_with_the_weighted_mean_of_any_rewards_and_refuses_labels_outside_0_1(tmp_path, model_dirs, baton):
    from baton_trainer.audio import load_audio
    from baton_trainer.clap import CLAP_SAMPLE_RATE
    from baton_trainer.data import load_preference_dataset
    from baton_trainer.stages.label import LabelConfig, label_unrated
    from baton_trainer.testing import save_synthetic_generations

    save_synthetic_generations(tmp_path / "generations", n_captions=2, clips_per_caption=2)
    rows = [json.loads(line) for line in (tmp_path / "generations" / "metadata.jsonl").read_text().splitlines()]
    waves = [load_audio(tmp_path / "generations" / r["file_name"], target_sr=CLAP_SAMPLE_RATE)[0] for r in rows]
    expected = dict(zip([(r["caption_id"], r["clip_index"]) for r in rows], baton.score([r["caption"] for r in rows], waves, CLAP_SAMPLE_RATE)))
    register_reward("test_constant", ConstantReward)
    try:
        spec = [{"name": "baton", "model": str(model_dirs["baton"]), "weight": 3.0}, {"name": "test_constant", "values": [1.0] * len(rows), "batch_size": 4}]
        out = label_unrated(LabelConfig(run_dir=str(tmp_path / "mixed"), generations=str(tmp_path / "generations"), rewards=spec, device="cpu"))
        labelled = load_preference_dataset(out)
        assert len(labelled) == len(rows) and set(labelled["annotator"]) == {"rewards:baton, test_constant"}
        for row in labelled:  # the label is (3 baton + 1 constant) / 4, clip by clip
            assert row["reward"] == pytest.approx((3 * expected[row["caption_id"], row["clip_index"]] + 1) / 4, abs=1e-5)

        too_big = [{"name": "test_constant", "values": [0.5, 2.0, 0.5, 0.5], "batch_size": 1}]
        with pytest.raises(
            ValueError,
            match=r"label: constant gave 2 for .*generations/clips/00000_1\.wav: a label must lie in \[0, 1\] \(.*1 clips already labelled are kept\)",
        ):
            label_unrated(LabelConfig(run_dir=str(tmp_path / "bad"), generations=str(tmp_path / "generations"), rewards=too_big, batch_size=1, device="cpu"))
    finally:
        REWARDS.pop("test_constant")


class LoudestFirst(GroupwiseReward):
    """A groupwise scorer of this file's own: ranks a caption's clips by RMS, loudest first (or
    returns the ranking it is told)."""

    name = "loudest_first"
    sample_rate = 16_000
    returns_ranking = True

    def __init__(self, ranking=None):
        self.ranking, self.groups = ranking, []

    def _score_group(self, caption, waves):
        self.groups.append((caption, len(waves)))
        if self.ranking is not None:
            return self.ranking
        return list(np.argsort([-float(np.sqrt(np.mean(w**2))) for w in waves], kind="stable"))


def test_a_groupwise_reward_scores_each_captions_clips_together_from_a_ranking(tmp_path):
    loud = [clip_at(16_000, seed) * gain for seed, gain in enumerate([0.2, 1.0, 0.5, 0.1, 0.9])]
    captions = ["rain", "wind", "rain", "wind", "rain"]  # interleaved: the groups are found by caption
    reward = LoudestFirst()
    scores = reward.score(captions, loud, 16_000)
    # rain: clips 0, 2, 4 with gains .2, .5, .9 -> 4 best, 0 worst; wind: clips 1 (1.0) and 3 (.1)
    np.testing.assert_allclose(scores, [0.0, 1.0, 0.5, 0.0, 1.0])
    assert sorted(reward.groups) == [("rain", 3), ("wind", 2)]
    assert LoudestFirst().score(["rain"], loud[:1], 16_000).tolist() == [0.5]
    with pytest.raises(
        RewardError, match=r"reward 'loudest_first': clips 0, 2, 4: a ranking must list each of the group's 3 clips once \(0\.\.2\), got \[0, 0, 1\]"
    ):
        LoudestFirst(ranking=[0, 0, 1]).score(captions, loud, 16_000)  # the rain group comes first

    # In a cached RewardSet a groupwise score is never stored: it depends on the rest of the group.
    rewards = RewardSet([reward], cache=ScoreCache(tmp_path / "scores.jsonl"))
    first = rewards.score(captions, loud, 16_000)["loudest_first"]
    alone = rewards.score(captions[:1], loud[:1], 16_000)["loudest_first"]
    assert first[0] == 0.0 and alone.tolist() == [0.5]


def test_rank_makes_any_reward_groupwise_and_keeps_it_a_judge_when_it_is_one(model_dirs, baton):
    captions = [CAPTIONS[0]] * 3 + [CAPTIONS[1]] * 2
    clips = [clip_at(16_000, seed) for seed in range(5)]
    raw = baton.score(captions, clips, 16_000)
    ranked = build_reward({"name": "rank", "of": {"name": "baton", "model": str(model_dirs["baton"])}}, device="cpu")
    assert ranked.name == "rank(baton)" and isinstance(ranked, GroupwiseReward)
    scores = ranked.score(captions, clips, 16_000)
    expected = np.concatenate([np.argsort(np.argsort(raw[:3])) / 2, np.argsort(np.argsort(raw[3:])) / 1])
    np.testing.assert_allclose(scores, expected)
    register_reward("test_judge", JudgeOnly)
    try:
        with pytest.raises(RewardError, match="evaluation judge only"):
            RewardSet([{"name": "rank", "of": "test_judge"}]).check_training_allowed()
        ties = build_reward({"name": "rank", "of": {"name": "test_judge", "values": [0.3, 0.3, 0.9]}})
        np.testing.assert_allclose(ties.score(["a"] * 3, clips[:3], 16_000), [0.25, 0.25, 1.0])  # tied clips share ranks 0 and 1
    finally:
        REWARDS.pop("test_judge")


class JudgeOnly(ConstantReward):
    name = "test_judge"
    training_allowed = False
