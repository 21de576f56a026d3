"""The models behind the metrics: PANNs Cnn14 and VGGish (tiny widths of the real classes, and the
published layouts checked on the meta device), their checkpoint loading, and the CLAP score."""

import numpy as np
import pytest
import torch
from scipy.signal import resample_poly

from baton_trainer.evaluation import (
    PANNS_CNN14_16K_FILE,
    VGGISH_FILE,
    Cnn14Config,
    MetricInputError,
    MissingCheckpointError,
    PannsCnn14,
    VGGish,
    VGGishConfig,
    WeightFileError,
    clap_score,
    frechet_distance_from_embeddings,
)

TINY_CNN14 = Cnn14Config(channels=(4, 4, 8, 8, 8, 16), classes_num=527)
TINY_VGGISH = VGGishConfig(channels=(4, 4, 8, 8), hidden=16)


def _randomize_batch_norms(model: torch.nn.Module, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator))
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)


def test_published_cnn14_layout_matches_the_checkpoint_names():
    with torch.device("meta"):
        model = PannsCnn14()
    state = model.state_dict()
    assert len(state) == 84  # 13 batch norms x 5 + 12 convs + 2 stft + melW + 2 x 2 linear
    expected = {
        "spectrogram_extractor.stft.conv_real.weight": (257, 1, 512),
        "spectrogram_extractor.stft.conv_imag.weight": (257, 1, 512),
        "logmel_extractor.melW": (257, 64),
        "bn0.running_var": (64,),
        "conv_block1.conv1.weight": (64, 1, 3, 3),
        "conv_block6.conv2.weight": (2048, 2048, 3, 3),
        "conv_block6.bn2.num_batches_tracked": (),
        "fc1.weight": (2048, 2048),
        "fc_audioset.weight": (527, 2048),
        "fc_audioset.bias": (527,),
    }
    assert {k: tuple(state[k].shape) for k in expected} == expected


def test_published_vggish_layout_matches_the_checkpoint_names():
    with torch.device("meta"):
        model = VGGish()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    convs = {0: (64, 1), 3: (128, 64), 6: (256, 128), 8: (256, 256), 11: (512, 256), 13: (512, 512)}
    expected = {f"features.{i}.weight": (o, c, 3, 3) for i, (o, c) in convs.items()}
    expected |= {f"features.{i}.bias": (o,) for i, (o, _) in convs.items()}
    expected |= {"embeddings.0.weight": (4096, 12288), "embeddings.0.bias": (4096,), "embeddings.2.weight": (4096, 4096)}
    expected |= {"embeddings.2.bias": (4096,), "embeddings.4.weight": (128, 4096), "embeddings.4.bias": (128,)}
    assert shapes == expected


def test_cnn14_front_end_is_the_centred_power_stft_and_slaney_mel():
    model = PannsCnn14(TINY_CNN14)
    wav = torch.from_numpy(np.random.default_rng(0).normal(size=(2, 8000)).astype(np.float32))
    power = model.spectrogram_extractor(wav)[:, 0]  # (B, frames, bins)
    window = torch.hann_window(512, periodic=True)
    reference = torch.stft(wav, 512, 160, window=window, center=True, pad_mode="reflect", return_complex=True)
    torch.testing.assert_close(power, reference.abs().pow(2).transpose(1, 2), rtol=1e-3, atol=1e-2)
    # A 1 kHz tone peaks in the mel band around 1 kHz.
    tone = torch.sin(2 * torch.pi * 1000 * torch.arange(16000) / 16000)[None]
    log_mel = model.logmel_extractor(model.spectrogram_extractor(tone))[0, 0].mean(0)
    mel_centres = np.argmax(model.logmel_extractor.melW.numpy(), axis=0) * 16000 / 512
    assert abs(mel_centres[int(log_mel.argmax())] - 1000) < 100


def test_cnn14_checkpoint_round_trip_with_training_extras(tmp_path):
    source = PannsCnn14(TINY_CNN14)
    _randomize_batch_norms(source)
    # PANNs training checkpoints hold {"iteration", "model", "sampler"}; NumPy inside must not block loading.
    checkpoint = {"iteration": 10, "model": source.state_dict(), "sampler": {"indexes": np.arange(5)}}
    torch.save(checkpoint, tmp_path / PANNS_CNN14_16K_FILE)
    loaded = PannsCnn14.from_checkpoint(tmp_path, config=TINY_CNN14, device="cpu")  # a folder holding the file
    rng = np.random.default_rng(1)
    clips = [rng.normal(size=n).astype(np.float32) * 0.1 for n in (16000 * 3, 12000, 16000 * 3)]
    embeddings, logits = loaded.embed(clips, 16000, batch_size=2)
    assert embeddings.shape == (3, 16) and logits.shape == (3, 527)
    assert np.all(embeddings >= 0)  # relu(fc1)
    with torch.no_grad():
        one = source(torch.from_numpy(loaded.prepare(clips[1], 16000))[None])
    np.testing.assert_allclose(logits[1], one["logits"][0].numpy(), rtol=1e-4, atol=1e-5)
    # Batching clips together gives the same as one by one.
    single = [loaded.embed([c], 16000)[1][0] for c in clips]
    np.testing.assert_allclose(logits, np.stack(single), rtol=1e-4, atol=1e-5)
    # Other sample rates are resampled to 16 kHz first.
    up = resample_poly(clips[0], 2, 1).astype(np.float32)
    assert loaded.prepare(up, 32000).shape == loaded.prepare(clips[0], 16000).shape


def test_missing_checkpoints_say_which_metric_needs_which_file(tmp_path):
    with pytest.raises(MissingCheckpointError) as info:
        PannsCnn14.from_checkpoint(tmp_path / "nowhere.pth")
    message = str(info.value)
    assert "FD, KL and IS" in message and PANNS_CNN14_16K_FILE in message and "zenodo.org/record/3987831" in message
    with pytest.raises(MissingCheckpointError) as info:
        VGGish.from_checkpoint(None)
    assert "FAD" in str(info.value) and VGGISH_FILE in str(info.value) and "torchvggish" in str(info.value)


def test_a_checkpoint_of_the_wrong_model_is_refused_by_key(tmp_path):
    torch.save(VGGish(TINY_VGGISH).state_dict(), tmp_path / "vggish.pth")
    with pytest.raises(WeightFileError, match="not a PANNs Cnn14 checkpoint"):
        PannsCnn14.from_checkpoint(tmp_path / "vggish.pth", config=TINY_CNN14)
    (tmp_path / "junk.pth").write_bytes(b"not a pickle")
    with pytest.raises(WeightFileError, match="junk.pth"):
        VGGish.from_checkpoint(tmp_path / "junk.pth", config=TINY_VGGISH)


def test_vggish_examples_and_fad_embeddings(tmp_path):
    model = VGGish(TINY_VGGISH)
    torch.save(model.state_dict(), tmp_path / VGGISH_FILE)
    loaded = VGGish.from_checkpoint(tmp_path / VGGISH_FILE, config=TINY_VGGISH, device="cpu")
    t = np.arange(160000) / 16000
    tone = 0.5 * np.sin(2 * np.pi * 1000 * t)
    examples = loaded.log_mel_examples(tone)
    assert examples.shape == (10, 96, 64)  # 10 s -> ten 0.96 s examples
    assert loaded.log_mel_examples(tone[:8000]).shape == (0, 96, 64)
    centres = np.argmax(loaded.mel_bank.numpy(), axis=0) * 16000 / 512
    assert abs(centres[int(examples.mean(axis=(0, 1)).argmax())] - 1000) < 100
    rng = np.random.default_rng(2)
    clips = [rng.normal(size=40000) * 0.1, tone[:48000], tone]
    frames = loaded.embed(clips, 16000)
    assert [f.shape for f in frames] == [(2, 128), (3, 128), (10, 128)]
    # 48 kHz input is resampled to 16 kHz first.
    assert loaded.embed([resample_poly(tone, 3, 1)], 48000)[0].shape == (10, 128)
    assert frechet_distance_from_embeddings(frames, frames) < 1e-8
    noise = loaded.embed([rng.normal(size=160000) * 0.3 for _ in range(2)], 16000)
    assert frechet_distance_from_embeddings(frames, noise) > 0


# ---------------------------------------------------------------------------------------------
# CLAP score (through reward_hub.clap.ClapEmbedder, with a tiny ClapModel)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_clap(tmp_path_factory):
    from baton_trainer.testing import save_tiny_clap

    return save_tiny_clap(tmp_path_factory.mktemp("clap") / "tiny_clap", seed=0)


def _tone_mix(sample_rate: int, seconds: float, freqs=(440.0, 1300.0, 3100.0)) -> np.ndarray:
    t = np.arange(int(sample_rate * seconds)) / sample_rate
    return (sum(np.sin(2 * np.pi * f * t + i) for i, f in enumerate(freqs)) / len(freqs) * 0.5).astype(np.float32)


def test_clap_score_equals_a_direct_clap_computation(tiny_clap):
    from transformers import ClapModel, ClapProcessor

    from baton_trainer.clap import ClapEmbedder

    texts = ["a dog barks while a car passes by", "rain falls on a roof"]
    clips_48k = [_tone_mix(48000, 10.0), np.random.default_rng(3).normal(size=480000).astype(np.float32) * 0.1]
    mean, per_pair = clap_score(texts, clips_48k, 48000, model=ClapEmbedder(tiny_clap))

    model, processor = ClapModel.from_pretrained(tiny_clap).eval(), ClapProcessor.from_pretrained(tiny_clap)
    with torch.no_grad():
        tokens = processor.tokenizer(texts, padding=True, return_tensors="pt")
        text = model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        features = processor.feature_extractor(clips_48k, sampling_rate=48000, return_tensors="pt")
        audio = model.get_audio_features(input_features=features["input_features"], is_longer=features["is_longer"])
    text = getattr(text, "pooler_output", text).double()
    audio = getattr(audio, "pooler_output", audio).double()
    direct = torch.nn.functional.cosine_similarity(text, audio, dim=-1).numpy()
    np.testing.assert_allclose(per_pair, direct, rtol=1e-5, atol=1e-6)
    assert mean == pytest.approx(direct.mean(), abs=1e-6)
    assert per_pair.dtype == np.float64 and np.all(np.abs(per_pair) <= 1 + 1e-9)


def test_clap_score_is_the_same_at_16_and_48_khz_and_for_long_clips(tiny_clap):
    from baton_trainer.clap import ClapEmbedder

    embedder = ClapEmbedder(tiny_clap)
    texts = ["birds chirp followed by a man speaking"]
    at_48k = clap_score(texts, [_tone_mix(48000, 10.0)], 48000, model=embedder)[1][0]
    at_16k = clap_score(texts, [_tone_mix(16000, 10.0)], 16000, model=embedder)[1][0]
    assert at_16k == pytest.approx(at_48k, abs=1e-3)
    other = clap_score(texts, [_tone_mix(16000, 10.0, freqs=(5000.0, 7000.0))], 16000, model=embedder)[1][0]
    assert abs(other - at_48k) > 1e-2  # the tolerance above is far below what another sound changes
    # TANGO's 10.24 s clips are cut to the first 10 s: the score is repeatable, not a random crop.
    long_clip = _tone_mix(16000, 10.24, freqs=(440.0, 2000.0))
    scores = {clap_score(texts, [long_clip], 16000, model=embedder)[1][0] for _ in range(3)}
    assert len(scores) == 1


def test_clap_score_refuses_unpaired_inputs(tiny_clap):
    with pytest.raises(MetricInputError, match="2 captions but 1 clips"):
        clap_score(["a", "b"], [np.zeros(16000, dtype=np.float32)], 16000, model=tiny_clap)


def test_compute_metrics_scores_every_model_and_lists_what_it_skipped(tmp_path, tiny_clap):
    from baton_trainer.clap import ClapEmbedder
    from baton_trainer.evaluation import compute_metrics, write_report

    rng = np.random.default_rng(5)
    captions = [f"a dog barks then a car passes {i}" for i in range(10)]
    names = [f"ref{i}.wav" for i in range(10)]
    reference = {n: rng.normal(size=16000).astype(np.float32) * 0.1 for n in names[:9]}  # one reference missing
    generated = {
        "base": [rng.normal(size=16000).astype(np.float32) * 0.3 for _ in captions],
        "aligned": [list(reference.values())[i % 9] + 0.01 for i in range(10)],
    }
    panns, vggish = PannsCnn14(TINY_CNN14), VGGish(TINY_VGGISH)
    _randomize_batch_norms(panns)
    with torch.no_grad():
        panns.fc_audioset.weight.mul_(100.0)  # spread the tiny model's class probabilities so KL can tell clips apart
    result = compute_metrics(
        captions, generated, 16000, clap=ClapEmbedder(tiny_clap), panns=panns, vggish=vggish,
        reference=reference, names=names, caption_ids=range(100, 110),
    )  # fmt: skip
    assert result.skipped == {}
    assert result.info["kl_pairs"] == 9
    for model in ("base", "aligned"):
        assert set(result.metrics[model]) == {"clap_score", "fd", "fad", "kl", "is", "is_std"}
        assert all(np.isfinite(v) for v in result.metrics[model].values())
    # Clips close to their references are closer in every reference-based metric.
    for key in ("fd", "fad", "kl"):
        assert result.metrics["aligned"][key] < result.metrics["base"][key]
    assert [r["caption_id"] for r in result.per_caption] == list(range(100, 110))
    assert result.metrics["base"]["clap_score"] == pytest.approx(np.mean([r["base"] for r in result.per_caption]))

    # Every metric gets an interval over captions: KL per pair (the unpaired caption left out) by the
    # bootstrap, FD and FAD by the delete-one-caption jackknife; differences against the base model
    # paired. IS has none here: a leave-out of these 10 clips has 9, too few for its 10 splits.
    from baton_trainer.evaluation.intervals import model_intervals

    per_clip = {m: {"clap_score": [r[m] for r in result.per_caption], **result.per_clip[m]} for m in generated}
    assert np.isnan(per_clip["base"]["kl"][9]) and np.isfinite(per_clip["base"]["kl"][:9]).all()
    assert np.nanmean(per_clip["aligned"]["kl"]) == pytest.approx(result.metrics["aligned"]["kl"])
    intervals = model_intervals(per_clip, result.embeddings, [r["caption_id"] for r in result.per_caption], resamples=300)
    assert np.isnan(intervals["base"]["is"]["lo"]) and np.isnan(intervals["aligned"]["is"]["difference_hi"])
    for key in ("clap_score", "kl", "fd", "fad"):
        assert intervals["base"][key]["lo"] <= intervals["base"][key]["hi"], key
        assert intervals["aligned"][key]["difference_lo"] <= intervals["aligned"][key]["difference_hi"], key
    assert intervals["aligned"]["kl"]["difference_hi"] < 0 and intervals["aligned"]["fd"]["difference_hi"] < 0  # clearly closer

    bare = compute_metrics(captions[:3], {"base": generated["base"][:3]}, 16000, panns=panns, vggish=tmp_path / "missing.pth")
    assert set(bare.skipped) == {"clap_score", "fd", "kl", "is", "fad"}
    assert "at least 10 clips" in bare.skipped["is"] and "reference audio" in bare.skipped["fd"]
    assert VGGISH_FILE in bare.skipped["fad"] and "not found" in bare.skipped["fad"]
    written = write_report(tmp_path / "eval", result.metrics, result.per_caption, None, skipped=bare.skipped, info=result.info)
    assert "clap_per_caption.png" in written
