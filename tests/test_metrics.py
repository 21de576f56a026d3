"""Known answers for the metric math (FD, IS, KL) on arrays; no models involved."""

import numpy as np
import pytest

from baton_trainer.evaluation import (
    MetricInputError,
    embedding_statistics,
    frechet_distance,
    frechet_distance_from_embeddings,
    inception_score,
    kl_divergence,
    softmax,
)


def test_frechet_identity_covariances_gives_squared_mean_distance():
    rng = np.random.default_rng(0)
    dim = 64
    mu = rng.normal(size=dim)
    assert frechet_distance(np.zeros(dim), np.eye(dim), mu, np.eye(dim)) == pytest.approx(mu @ mu, rel=1e-10)


def test_frechet_diagonal_covariances_closed_form():
    rng = np.random.default_rng(1)
    dim = 32
    mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
    a, b = rng.uniform(0.1, 3.0, size=dim), rng.uniform(0.1, 3.0, size=dim)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_frechet_matches_the_sqrtm_formula_on_a_well_conditioned_case():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(400, 16)), rng.normal(size=(300, 16)) @ rng.normal(size=(16, 16)) * 0.5 + 0.3
    mu1, s1 = embedding_statistics(x)
    mu2, s2 = embedding_statistics(y)
    covmean = np.real(scipy_linalg.sqrtm(s1 @ s2))
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)


def test_frechet_identical_inputs_give_zero():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 128)) * rng.uniform(0.1, 5.0, size=128)
    mu, sigma = embedding_statistics(x)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-8
    assert frechet_distance_from_embeddings(x, x) < 1e-8


def test_frechet_with_fewer_samples_than_dimensions_is_finite_and_positive():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(20, 256)), rng.normal(size=(30, 256)) + 0.5
    value = frechet_distance_from_embeddings(x, y)
    assert np.isfinite(value) and value > 0
    # Rank-deficient covariances of identical sets still give zero.
    assert frechet_distance_from_embeddings(x, x) < 1e-8


def test_frechet_exactly_singular_covariance_is_handled():
    dim = 8
    sigma = np.zeros((dim, dim))
    sigma[0, 0] = 1.0
    value = frechet_distance(np.zeros(dim), sigma, np.ones(dim), np.eye(dim))
    assert value == pytest.approx(dim + 0.0 + (dim - 1), rel=1e-12)  # ||1||^2 + sum (sqrt a - sqrt b)^2


def test_frechet_refuses_bad_inputs_by_name():
    with pytest.raises(MetricInputError, match="mu2"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(MetricInputError, match="sigma2 is not positive semi-definite"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.diag([1.0, -1.0]))
    with pytest.raises(MetricInputError, match="sigma1 is not symmetric"):
        frechet_distance(np.zeros(2), np.array([[1.0, 0.5], [0.0, 1.0]]), np.zeros(2), np.eye(2))
    with pytest.raises(MetricInputError, match="NaN"):
        frechet_distance(np.array([np.nan, 0.0]), np.eye(2), np.zeros(2), np.eye(2))
    with pytest.raises(MetricInputError, match="at least 2 rows"):
        embedding_statistics(np.zeros((1, 4)))


def test_embedding_statistics_stacks_per_clip_frames():
    rng = np.random.default_rng(5)
    clips = [rng.normal(size=(n, 6)) for n in (3, 5, 4)]
    mu, sigma = embedding_statistics(clips)
    stacked = np.concatenate(clips)
    np.testing.assert_allclose(mu, stacked.mean(0))
    np.testing.assert_allclose(sigma, np.cov(stacked, rowvar=False))


def test_inception_score_two_confident_classes_is_two():
    probs = np.zeros((20, 5))
    probs[:10, 0] = 1.0
    probs[10:, 3] = 1.0
    mean, std = inception_score(probs, splits=1)
    assert mean == pytest.approx(2.0, rel=1e-12) and std == 0.0
    # Ten balanced splits (no shuffle) each hold both classes: every split scores 2.
    interleaved = np.zeros((20, 5))
    interleaved[0::2, 0] = 1.0
    interleaved[1::2, 3] = 1.0
    mean, std = inception_score(interleaved, splits=10, seed=None)
    assert mean == pytest.approx(2.0) and std == pytest.approx(0.0, abs=1e-12)


def test_inception_score_uniform_probabilities_is_one():
    mean, std = inception_score(np.full((30, 527), 1 / 527), splits=10)
    assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)


def test_inception_score_follows_audioldm_eval_shuffle_and_splits():
    rng = np.random.default_rng(6)
    logits = rng.normal(size=(53, 7)) * 3
    p = softmax(logits)[np.random.RandomState(2020).permutation(53)]
    expected = []
    for i in range(10):
        chunk = p[i * 53 // 10 : (i + 1) * 53 // 10]
        kl = (chunk * (np.log(chunk) - np.log(chunk.mean(0, keepdims=True)))).sum(1)
        expected.append(np.exp(kl.mean()))
    mean, std = inception_score(logits, from_logits=True)
    assert mean == pytest.approx(np.mean(expected), rel=1e-12)
    assert std == pytest.approx(np.std(expected), rel=1e-10)
    assert inception_score(logits, from_logits=True, seed=1)[0] != pytest.approx(mean, rel=1e-9)


def test_inception_score_refuses_logits_as_probabilities_and_too_few_clips():
    with pytest.raises(MetricInputError, match="from_logits"):
        inception_score(np.random.default_rng(0).normal(size=(20, 4)), splits=2)
    with pytest.raises(MetricInputError, match="at least 10 clips"):
        inception_score(np.full((5, 3), 1 / 3))


def test_kl_divergence_equals_direct_computation():
    rng = np.random.default_rng(7)
    ref, gen = rng.normal(size=(12, 527)) * 2, rng.normal(size=(12, 527)) * 2
    p, q = np.exp(ref) / np.exp(ref).sum(1, keepdims=True), np.exp(gen) / np.exp(gen).sum(1, keepdims=True)
    direct = np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=1))
    assert kl_divergence(ref, gen, eps=0.0) == pytest.approx(direct, rel=1e-10)
    with_eps = np.mean(np.sum(p * (np.log(p) - np.log(q + 1e-6)), axis=1))
    assert kl_divergence(ref, gen) == pytest.approx(with_eps, rel=1e-10)  # audioldm_eval's default
    assert kl_divergence(ref, ref, eps=0.0) == pytest.approx(0.0, abs=1e-12)
    # Direction: KL(reference || generated), not the reverse.
    reverse = np.mean(np.sum(q * (np.log(q) - np.log(p)), axis=1))
    assert abs(kl_divergence(ref, gen, eps=0.0) - reverse) > 1e-3


def test_kl_divergence_pairs_by_name_in_any_order():
    rng = np.random.default_rng(8)
    ref, gen = rng.normal(size=(5, 10)), rng.normal(size=(5, 10))
    names = [f"clip{i}.wav" for i in range(5)]
    order = [3, 0, 4, 1, 2]
    paired = kl_divergence(ref, gen[order], ref_names=names, gen_names=[names[i] for i in order])
    assert paired == pytest.approx(kl_divergence(ref, gen), rel=1e-12)
    mean, per_pair = kl_divergence(ref, gen, names, names, return_per_pair=True)
    assert per_pair.shape == (5,) and mean == pytest.approx(per_pair.mean())


def test_kl_divergence_refuses_mismatched_pairs_with_the_names():
    logits = np.zeros((3, 4))
    with pytest.raises(MetricInputError) as info:
        kl_divergence(logits, logits, ref_names=["a.wav", "b.wav", "c.wav"], gen_names=["a.wav", "b.wav", "x.wav"])
    assert "c.wav" in str(info.value) and "x.wav" in str(info.value)
    with pytest.raises(MetricInputError, match="duplicate"):
        kl_divergence(logits, logits, ref_names=["a", "a", "b"], gen_names=["a", "b", "c"])
    with pytest.raises(MetricInputError, match="3 clips but gen_logits has 2"):
        kl_divergence(logits, logits[:2])
    with pytest.raises(MetricInputError, match="both"):
        kl_divergence(logits, logits, ref_names=["a", "b", "c"])


def test_loudness_matches_the_bs1770_reference_sine_and_peak_is_the_sample_peak():
    """ITU-R BS.1770: a 997 Hz sine at 0 dBFS peak reads -3.01 LKFS; each halving of the amplitude
    is -6.02 dB in both loudness and peak; silence has neither."""
    from baton_trainer.evaluation.metrics import loudness_and_peak

    sr = 48000
    t = np.arange(2 * sr) / sr
    sine = np.sin(2 * np.pi * 997 * t)
    lufs, peaks = loudness_and_peak([sine, 0.5 * sine, np.zeros(sr), sine[: sr // 10]], sr)
    assert lufs[0] == pytest.approx(-3.01, abs=0.05) and lufs[1] == pytest.approx(-9.03, abs=0.05)
    assert peaks[0] == pytest.approx(0.0, abs=1e-3) and peaks[1] == pytest.approx(-6.02, abs=1e-2)
    assert np.isnan(lufs[2]) and np.isnan(peaks[2])
    assert lufs[3] == pytest.approx(-3.01, abs=0.1)  # shorter than one 400 ms block: measured repeated


def test_spectrogram_diversity_ignores_level_and_sees_when_events_happen():
    from baton_trainer.evaluation.metrics import log_mel_embeddings, within_caption_spread

    sr = 16000
    t = np.arange(2 * sr) / sr
    early, late = np.sin(2 * np.pi * 440 * t) * (t < 1), np.sin(2 * np.pi * 440 * t) * (t >= 1)
    chirp = np.sin(2 * np.pi * (300 + 400 * t) * t) * (t < 1)
    e = log_mel_embeddings([early, 0.1 * early, early, late, early, chirp], sr)
    assert within_caption_spread(e[:2], [0, 0]) < 1e-3  # the same clip 20 dB quieter: no diversity
    assert within_caption_spread(e[2:4], [1, 1]) > 0.5  # the same sound a second later
    assert 0.05 < within_caption_spread(e[4:], [2, 2]) < within_caption_spread(e[2:4], [1, 1])  # another sound, same time
    assert log_mel_embeddings([early, late[: sr // 2]], sr).shape == (2, 64 * 5)  # cut to the shortest clip, 0.1 s frames


def test_loudness_normalised_clips_read_the_target_loudness_and_a_louder_copy_is_the_same_clip():
    """Clips at any level come out at -23 LUFS (so a level-dependent embedding sees a louder copy
    as the same clip); silence stays silence; the peak is kept above 1, not clipped."""
    from baton_trainer.evaluation.metrics import METRIC_LOUDNESS_LUFS, loudness_and_peak, loudness_normalised

    sr = 16000
    t = np.arange(2 * sr) / sr
    tone = (0.05 * np.sin(2 * np.pi * 440 * t) * (t < 1.2)).astype(np.float32)
    clicks = np.zeros(2 * sr, dtype=np.float32)
    clicks[:: sr // 4] = 0.05  # sparse clicks: at -23 LUFS their peaks pass 1
    clips = [tone, 8.0 * tone, np.zeros(sr, dtype=np.float32), clicks]
    heard = loudness_normalised(clips, sr)
    lufs, _ = loudness_and_peak(heard, sr)
    np.testing.assert_allclose(lufs[[0, 1, 3]], METRIC_LOUDNESS_LUFS, atol=0.05)
    assert np.isnan(lufs[2]) and not heard[2].any()
    np.testing.assert_allclose(heard[0], heard[1], rtol=1e-5, atol=1e-7)
    assert heard[3].max() > 1.0  # scaled, not clipped
    # a level-dependent feature (energy in dB) tells the raw copies apart, not the normalised ones
    raw_db = [10 * np.log10(np.mean(c**2) + 1e-12) for c in clips[:2]]
    heard_db = [10 * np.log10(np.mean(c**2) + 1e-12) for c in heard[:2]]
    assert abs(raw_db[1] - raw_db[0]) > 17 and abs(heard_db[1] - heard_db[0]) < 0.01


@pytest.mark.parametrize("sample_rate", [16_000, 8_000, 44_100])
def test_log_mel_db_is_transformers_spectrogram_with_silences(sample_rate):
    """The one-call spectrogram (silent frames skipped) gives transformers' frame-by-frame
    `spectrogram` in dB, for sound, digital silence before, between and after it, all silence,
    and a clip shorter than one FFT."""
    from transformers.audio_utils import spectrogram, window_function

    from baton_trainer.audio import slaney_mel_filters
    from baton_trainer.spectrogram import N_MELS, log_mel_db

    rng = np.random.default_rng(7)
    sound = np.zeros(3 * sample_rate)
    sound[1_234:9_000] = rng.normal(0, 0.3, 7_766)
    sound[2 * sample_rate : 2 * sample_rate + 333] = rng.normal(0, 0.3, 333)
    n_fft = 1024 if sample_rate >= 16_000 else 512
    bank = slaney_mel_filters(sample_rate, n_fft, N_MELS, 0.0, sample_rate / 2).T.astype(np.float64)
    for clip in (sound, rng.normal(0, 0.1, sample_rate), np.zeros(sample_rate), rng.normal(0, 0.1, 100)):
        padded = np.pad(clip, (0, max(0, n_fft - clip.size)))
        want = spectrogram(
            padded, window_function(n_fft, "hann"), frame_length=n_fft, hop_length=sample_rate // 100, power=2.0, mel_filters=bank, log_mel="dB", db_range=80.0
        )
        got = log_mel_db(clip, sample_rate)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-6)
