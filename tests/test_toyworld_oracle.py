"""The oracle annotator: right on clean and vocoded clips, noisy at the rates asked, and it writes
through the annotation store."""

import json

import numpy as np
import pytest
import torch

from baton_trainer.annotation import SKIP, AnnotationStore
from baton_trainer.audio import save_wav
from baton_trainer.toyworld import (
    GriffinLimVocoder,
    LogMelSpectrogram,
    OracleAnnotator,
    OracleError,
    UnknownEventError,
    add_noise,
    annotate_store,
    integrity_accuracy,
    is_aligned,
    render_sequence,
    temporal_accuracy,
)
from baton_trainer.toyworld.oracle import benchmark_cases

SR = 16000


def judged_accuracy(oracle, wavs, labels, truths, task):
    answers = oracle.judge_batch(wavs, labels, task)
    return float(np.mean([a == t for a, t in zip(answers, truths)]))


@pytest.mark.parametrize("task", ["integrity", "temporal"])
def test_oracle_is_right_on_clean_clips(task):
    wavs, labels, truths = benchmark_cases(80, task, seed=11)
    assert sum(truths) == 40  # balanced: half aligned, half missing an event or out of order
    assert judged_accuracy(OracleAnnotator(), wavs, labels, truths, task) >= 0.95


@pytest.mark.parametrize("task", ["integrity", "temporal"])
def test_oracle_is_right_after_griffin_lim_and_noise(task):
    wavs, labels, truths = benchmark_cases(24, task, seed=12)
    with torch.no_grad():
        vocoded = GriffinLimVocoder()(LogMelSpectrogram()(torch.from_numpy(np.stack(wavs))).transpose(1, 2)).numpy()
    oracle = OracleAnnotator()
    assert judged_accuracy(oracle, list(vocoded), labels, truths, task) >= 0.95
    noisy = [add_noise(w, snr_db=20, seed=i) for i, w in enumerate(wavs)]
    assert judged_accuracy(oracle, noisy, labels, truths, task) >= 0.95


def test_oracle_ignores_sparse_bright_mel_pixels_after_vocoding():
    """Generated mels carry isolated bright pixels; vocoded, each lasts ~0.1 s and is no event."""
    wav = render_sequence(["hum", "beep"], seed=2)
    log_mel = LogMelSpectrogram()(torch.from_numpy(wav))
    rng = np.random.default_rng(0)
    salted = log_mel.clone()
    for _ in range(12):
        salted[rng.integers(64), rng.integers(log_mel.shape[1])] = log_mel.max()
    vocoded = GriffinLimVocoder()(salted.T[None])[0].numpy()
    assert [d[0] for d in OracleAnnotator().detect(vocoded, SR)] == ["hum", "beep"]


def test_rules_integrity_temporal_margin_and_extras():
    found = [("beep", 0.2, 0.7), ("hum", 0.9, 1.4), ("hiss", 1.6, 2.1)]
    assert is_aligned(found, ["hum", "beep"], "integrity")
    assert not is_aligned(found, ["hum", "knock"], "integrity")
    assert is_aligned(found, ["beep", "hum", "hiss"], "temporal")
    assert not is_aligned(found, ["hum", "beep", "hiss"], "temporal")
    assert is_aligned(found, ["Beep", " hum"], "integrity")  # labels are matched case-insensitively
    assert not is_aligned(found, ["beep", "hum"], "integrity", allow_extra=False)
    # First onsets decide; onsets closer than the margin are no stated order.
    close = [("beep", 0.20, 0.7), ("hum", 0.25, 0.8), ("hiss", 1.0, 1.5)]
    assert not is_aligned(close, ["beep", "hum", "hiss"], "temporal")
    assert is_aligned(close, ["beep", "hum", "hiss"], "temporal", order_margin_s=0.01)
    with pytest.raises(UnknownEventError, match="'dog barking'"):
        is_aligned(found, ["dog barking", "hum"], "integrity")
    with pytest.raises(OracleError, match="task must be one of"):
        is_aligned(found, ["beep", "hum"], "order")


def test_error_rate_flips_about_that_share_and_is_seeded():
    oracle = OracleAnnotator(error_rate=0.2, seed=3)
    ids = [f"{i:05d}_0" for i in range(3000)]
    answers = [oracle.answer(True, clip_id) for clip_id in ids]
    assert 0.17 <= answers.count(0) / len(ids) <= 0.23
    # Per-clip draws: the same clip gets the same answer whatever the visiting order.
    assert [oracle.answer(True, c) for c in reversed(ids)] == answers[::-1]
    other_seed = OracleAnnotator(error_rate=0.2, seed=4)
    assert [other_seed.answer(True, c) for c in ids] != answers
    # End to end on real clips: flips against the noise-free oracle at about the same rate.
    wavs, labels, truths = benchmark_cases(40, "integrity", seed=5)
    clean = OracleAnnotator().judge_batch(wavs, labels, "integrity")
    noisy = oracle.judge_batch(wavs, labels, "integrity", clip_ids=ids[:40])
    flips = sum(a != b for a, b in zip(clean, noisy))
    expected = sum(a != b for a, b in zip([1] * 40, answers[:40]))  # the same per-clip draws
    assert flips == expected and 2 <= flips <= 16


def test_skip_rate_skips_and_does_not_shift_errors():
    skipping = OracleAnnotator(error_rate=0.2, skip_rate=0.3, seed=3)
    plain = OracleAnnotator(error_rate=0.2, seed=3)
    ids = [str(i) for i in range(2000)]
    answers = [skipping.answer(False, c) for c in ids]
    assert 0.26 <= answers.count(None) / len(ids) <= 0.34
    kept = [(a, plain.answer(False, c)) for a, c in zip(answers, ids) if a is not None]
    assert all(a == b for a, b in kept)
    with pytest.raises(OracleError, match="error_rate"):
        OracleAnnotator(error_rate=1.5)


def test_accuracy_helpers_give_mean_and_standard_error():
    aligned = [render_sequence(["chirp", "knock", "hiss"], seed=s) for s in range(6)]
    swapped = [render_sequence(["knock", "chirp", "hiss"], seed=s) for s in range(6, 10)]
    labels = [["chirp", "knock", "hiss"]] * 10
    mean, stderr = temporal_accuracy(aligned + swapped, labels)
    assert mean == pytest.approx(0.6) and stderr == pytest.approx(np.sqrt(0.6 * 0.4 / 10))
    mean, stderr = integrity_accuracy(aligned + swapped, [["chirp", "hiss"]] * 10)
    assert (mean, stderr) == (1.0, 0.0)
    with pytest.raises(OracleError, match="no clips"):
        integrity_accuracy([], [])


def test_alignment_outcomes_takes_a_task_per_clip():
    """A swapped clip fails the temporal question and passes the integrity one, in one call."""
    from baton_trainer.toyworld import alignment_outcomes

    swapped = render_sequence(["knock", "chirp", "hiss"], seed=3)
    labels = [["chirp", "knock", "hiss"]] * 2
    assert alignment_outcomes([swapped, swapped], labels, ["temporal", "integrity"]) == [False, True]
    with pytest.raises(OracleError, match="1 tasks"):
        alignment_outcomes([swapped, swapped], labels, ["temporal"])


def test_judge_resamples_other_rates():
    from baton_trainer.audio import resample

    wav = render_sequence(["whistle", "rumble"], seed=1)
    assert OracleAnnotator().judge(resample(wav, SR, 48000), 48000, ["whistle", "rumble"], "integrity") == 1


def _write_generations(folder, cases):
    rows = []
    for caption_id, (labels, played, task) in enumerate(cases):
        clip_id = f"{caption_id:05d}_0"
        file_name = f"clips/{clip_id}.wav"
        save_wav(folder / file_name, render_sequence(played, seed=caption_id), SR)
        rows.append(
            {
                "file_name": file_name,
                "clip_id": clip_id,
                "caption": " then ".join(labels),
                "caption_id": caption_id,
                "clip_index": 0,
                "task": task,
                "labels": labels,
                "seed": caption_id,
                "model": "render",
            }
        )
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def test_annotate_store_rates_through_the_store_and_resumes(tmp_path):
    generations = tmp_path / "generations"
    cases = [
        (["beep", "hum"], ["hum", "beep"], "integrity"),  # aligned (order free)
        (["beep", "hum"], ["beep"], "integrity"),  # missing an event
        (["beep", "hum", "hiss"], ["beep", "hum", "hiss"], "temporal"),
        (["beep", "hum", "hiss"], ["hiss", "hum", "beep"], "temporal"),
        (["chirp", "trill"], ["trill", "chirp", "knock"], "integrity"),  # extra event is fine
    ]
    _write_generations(generations, cases)
    store = AnnotationStore(tmp_path / "annotations.sqlite")
    counts = annotate_store(store, generations, annotator="oracle", progress=False, batch_size=2)
    assert counts == {"rated": 5, "aligned": 3, "not_aligned": 2, "skipped": 0, "already_done": 0}
    labels = {r["clip_id"]: r["label"] for r in store.ratings() if r["annotator"] == "oracle"}
    assert labels == {"00000_0": 1, "00001_0": 0, "00002_0": 1, "00003_0": 0, "00004_0": 1}
    again = annotate_store(store, generations, annotator="oracle", progress=False)
    assert again["rated"] == 0 and again["already_done"] == 5
    # A second, always-skipping annotator on a seeded subset of 3 clips: skips are stored as skips.
    counts = annotate_store(store, generations, annotator="lazy", oracle=OracleAnnotator(skip_rate=1.0), max_clips=3, seed=1, progress=False)
    assert counts["skipped"] == 3 and counts["rated"] == 0
    assert sorted(r["label"] for r in store.ratings() if r["annotator"] == "lazy") == [SKIP] * 3
    with pytest.raises(OracleError, match="no clip with id '99999_0'"):
        annotate_store(store, generations, annotator="x", clip_ids=["99999_0"], progress=False)
    store.close()
