"""Event-level evaluation: the detector path against the toy oracle, the PANNs SED model, the
caption -> event map, bootstrap intervals that cover, and the judge-is-the-reward warning."""

import json

import numpy as np
import pytest
import torch

from baton_trainer.evaluation.event_scores import (
    EventMap,
    EventMapError,
    EventThresholds,
    PannsSedDetector,
    ToyEventDetector,
    active_segments,
    detect_events,
    event_metrics,
    load_audioset_classes,
    score_clips,
    score_events,
)
from baton_trainer.evaluation.intervals import bootstrap_means, bootstrap_statistic, seed_spread
from baton_trainer.evaluation.models import PANNS_SED_FILE, Cnn14Config, MissingCheckpointError, PannsCnn14, PannsCnn14Sed
from baton_trainer.toyworld.oracle import OracleAnnotator, benchmark_cases


@pytest.fixture(scope="module")
def toy_cases():
    """Rendered clips of both tasks, half aligned, with a little noise so the detector has work."""
    cases = []
    rng = np.random.default_rng(0)
    for task in ("integrity", "temporal"):
        wavs, labels, _ = benchmark_cases(40, task, seed=5)
        wavs = [w + rng.normal(0, 0.02, len(w)).astype(np.float32) for w in wavs]
        cases += [
            ({"clip_id": f"{task}{i}", "caption_id": f"{task}{i // 2}", "labels": named, "task": task}, w) for i, (named, w) in enumerate(zip(labels, wavs))
        ]
    return [c[0] for c in cases], [c[1] for c in cases]


def test_toy_detector_path_reproduces_the_oracle_clip_for_clip(toy_cases):
    rows, wavs = toy_cases
    scores = score_clips(ToyEventDetector(), rows, wavs, 16000)
    oracle = OracleAnnotator()
    expected = [oracle.aligned_batch([w], [r["labels"]], r["task"])[0] for r, w in zip(rows, wavs)]
    got = [c["presence"] if c["task"] == "integrity" else c["order"] for c in scores.per_clip]
    assert got == expected
    assert 0 < sum(expected) < len(expected)  # both outcomes occur, so agreement is not trivial
    # parsimony is the oracle's allow_extra=False rule
    strict = OracleAnnotator(allow_extra=False)
    for row, wav, clip in zip(rows, wavs, scores.per_clip):
        if row["task"] == "integrity":
            assert clip["presence"] and clip["parsimony"] == strict.aligned_batch([wav], [row["labels"]], "integrity")[0] or not clip["presence"]
    metrics = event_metrics(scores)
    integrity = [e for r, e in zip(rows, expected) if r["task"] == "integrity"]
    assert metrics["integrity_accuracy"] == pytest.approx(np.mean(integrity)) and metrics["integrity_accuracy_clips"] == 40


def test_noise_on_the_detector_probabilities_degrades_accuracy_smoothly(toy_cases):
    rows, wavs = toy_cases
    detector = ToyEventDetector()
    clean = [c["presence"] if c["task"] == "integrity" else c["order"] for c in score_clips(detector, rows, wavs, 16000).per_clip]
    levels = [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5]
    agreement = []
    for sd in levels:
        runs = []
        for seed in range(2):
            noisy = score_clips(detector, rows, wavs, 16000, noise_sd=sd, noise_seed=seed).per_clip
            got = [c["presence"] if c["task"] == "integrity" else c["order"] for c in noisy]
            runs.append(np.mean(np.array(got) == np.array(clean)))
        agreement.append(float(np.mean(runs)))
    assert agreement[0] == 1.0
    assert agreement[2] >= 0.95  # a little noise changes a few clips, not the picture
    assert agreement[-1] < 0.9  # much noise (p of silence crossing 0.5 for 0.2 s) breaks it
    steps = np.diff(agreement)
    assert steps.max() <= 0.03  # more noise never helps beyond chance wobble
    assert -steps.min() <= 0.12  # and no cliff between neighbouring noise levels


def test_segments_onsets_and_order_on_hand_made_probabilities():
    frame_s = 0.1
    active = np.array([0, 1, 1, 0, 1, 1, 1, 0, 0, 0, 1, 0], dtype=bool)
    # gap of 1 frame bridged (<= 0.1 s), the lone frame at 10 too short (0.2 s needs 2 active frames)
    assert active_segments(active, frame_s, max_gap_s=0.1, min_duration_s=0.2) == [(1, 7)]
    assert active_segments(active, frame_s, max_gap_s=0.0, min_duration_s=0.2) == [(1, 3), (4, 7)]
    probs = np.zeros((20, 3))
    probs[2:6, 0] = 0.9  # "a" at 0.2 s
    probs[8:12, 1] = 0.8  # "b" at 0.8 s
    probs[14:18, 2] = 0.6  # "c" at 1.4 s, weaker
    classes = ["a", "b", "c"]
    t = EventThresholds(presence=0.5, min_duration_s=0.2, max_gap_s=0.0, order_margin_s=0.1, parsimony=0.7)
    found = detect_events(probs, frame_s, classes, t.presence, t)
    assert found == [("a", 0.2, 0.6), ("b", 0.8, 1.2), ("c", 1.4, 1.8)]
    strong = detect_events(probs, frame_s, classes, t.parsimony_threshold, t)
    assert score_events(found, [["a"], ["b"], ["c"]], True, t, strong)["order"] is True
    assert score_events(found, [["b"], ["a"], ["c"]], True, t, strong)["order"] is False
    # "c" is unnamed but below the parsimony threshold: parsimonious; "b" unnamed and strong: not
    assert score_events(found, [["a"], ["b"]], False, t, strong)["parsimony"] is True
    result = score_events(found, [["a"], ["c"]], False, t, strong)
    assert result["parsimony"] is False and result["unnamed"] == ["b"] and result["order"] is None
    # an event named by several classes counts at the first onset of any of them
    assert score_events(found, [["x", "b"], ["c"]], True, t, strong)["onsets"] == [0.8, 1.4]
    assert score_events(found, [["x"], ["c"]], True, t, strong)["presence"] is False


def test_event_map_names_labels_and_free_text_events_in_order():
    classes = load_audioset_classes()
    assert len(classes) == 527 and classes[0] == "Speech" and classes[-1] == "Field recording" and classes[74] == "Dog"
    event_map = EventMap.from_file(__import__("baton_trainer.evaluation.event_scores", fromlist=["x"]).AUDIOSET_EVENT_MAP_FILE, classes)
    # free text: phrases found in the order they occur, stems matched, words between allowed
    events = event_map.find("A dog is barking, then a man speaks while rain falls")
    assert [e[0] for e in events] == ["Dog", "Speech", "Rain"]
    assert "Bark" in events[0]  # classes the dog may also fire do not count against parsimony
    # labels from the prompts stage; an AudioSet name is accepted as itself
    assert event_map.caption_events({"labels": ["dog barking", "Hammond organ"], "task": "integrity"})[0] == [
        event_map.label_classes("dog barking"),
        ["Hammond organ"],
    ]
    events, why = event_map.caption_events({"labels": ["quantum foam"], "task": "integrity"})
    assert events is None and "quantum foam" in why
    events, why = event_map.caption_events({"caption": "A strange noise", "task": "integrity"})
    assert events is None and "0 of 2" in why
    # unicode and empty captions are unscored, not errors
    assert event_map.caption_events({"caption": "", "task": "temporal"})[0] is None
    assert event_map.caption_events({"caption": "Ein Hund bellt — 犬", "task": "integrity"})[0] is None


def test_event_map_errors_name_the_line_and_the_class(tmp_path):
    path = tmp_path / "map.tsv"
    path.write_text("dog\tDog\nno tab here\n")
    with pytest.raises(EventMapError, match="line 2"):
        EventMap.from_file(path, load_audioset_classes())
    path.write_text("dog\tDoggo\n")
    with pytest.raises(EventMapError, match="Doggo"):
        EventMap.from_file(path, load_audioset_classes())


def test_published_sed_layout_matches_the_checkpoint_names():
    with torch.device("meta"):
        sed, tagger = PannsCnn14Sed(), PannsCnn14()
    shapes = {k: tuple(v.shape) for k, v in sed.state_dict().items()}
    # Cnn14_DecisionLevelMax has exactly Cnn14's parameter names; its front end is the 32 kHz one
    assert set(shapes) == set(tagger.state_dict())
    assert shapes["spectrogram_extractor.stft.conv_real.weight"] == (513, 1, 1024)
    assert shapes["logmel_extractor.melW"] == (513, 64)
    assert shapes["fc_audioset.weight"] == (527, 2048) and shapes["fc1.weight"] == (2048, 2048)
    assert sed.segment_seconds == pytest.approx(0.32)


TINY_SED = Cnn14Config(sample_rate=32_000, window_size=1024, hop_size=320, fmax=14_000.0, channels=(4, 4, 8, 8, 8, 16), min_samples=32_000)


def test_sed_segment_outputs_follow_the_decision_level_max_head(tmp_path):
    torch.manual_seed(0)
    model = PannsCnn14Sed(TINY_SED).eval()
    wav = torch.randn(2, 32_000 * 3) * 0.1
    with torch.no_grad():
        out = model(wav)
        x = model.trunk(wav)
        x = torch.nn.functional.max_pool1d(x, 3, 1, 1) + torch.nn.functional.avg_pool1d(x, 3, 1, 1)
        expected = torch.sigmoid(model.fc_audioset(torch.relu(model.fc1(x.transpose(1, 2)))))
    frames = 32_000 * 3 // 320 + 1  # centred STFT frames
    segments = frames
    for _ in range(5):
        segments //= 2
    assert out["segmentwise"].shape == (2, segments, 527)
    torch.testing.assert_close(out["segmentwise"], expected)
    torch.testing.assert_close(out["clipwise"], expected.max(dim=1).values)
    assert float(out["segmentwise"].min()) >= 0 and float(out["segmentwise"].max()) <= 1
    # checkpoint round trip in PANNs' {"model": ...} layout, then onsets framed at 0.32 s
    torch.save({"model": model.state_dict(), "iteration": 1}, tmp_path / PANNS_SED_FILE)
    loaded = PannsCnn14Sed.from_checkpoint(tmp_path, config=TINY_SED, device="cpu")
    detector = PannsSedDetector(loaded)
    probs = detector.frame_probabilities([wav[0].numpy()], 32_000)[0]
    np.testing.assert_allclose(probs, out["segmentwise"][0].numpy(), rtol=1e-5, atol=1e-6)
    t = EventThresholds(presence=float(np.median(probs)), min_duration_s=0.0, max_gap_s=0.0)
    for _, onset, offset in detect_events(probs, detector.frame_s, detector.classes, t.presence, t):
        assert round(onset / 0.32, 6) == round(onset / 0.32) and round(offset / 0.32, 6) == round(offset / 0.32)
    assert "0.32 s" in detector.describe()


def test_sed_checkpoint_missing_says_where_to_get_it(tmp_path):
    with pytest.raises(MissingCheckpointError, match="Cnn14_DecisionLevelMax_mAP=0.385.pth.*zenodo"):
        PannsCnn14Sed.from_checkpoint(tmp_path / "nowhere.pth")


def _clustered(rng, captions, per_caption, mean, caption_sd=0.5, clip_sd=1.0):
    ids = np.repeat(np.arange(captions), per_caption)
    return ids, mean + rng.normal(0, caption_sd, captions)[ids] + rng.normal(0, clip_sd, captions * per_caption)


def test_caption_bootstrap_covers_the_true_mean_and_difference_about_95_percent():
    rng = np.random.default_rng(2024)
    draws, covered, covered_difference, covered_naive = 400, 0, 0, 0
    for d in range(draws):
        ids, a = _clustered(rng, 100, 4, mean=0.3)
        b = a + 0.1 + rng.normal(0, 0.3, 100)[ids] + rng.normal(0, 0.5, a.size)  # paired: same captions and seeds
        result = bootstrap_means({"a": a, "b": b}, ids, resamples=1000, seed=d)
        covered += result["a"]["lo"] <= 0.3 <= result["a"]["hi"]
        covered_difference += result["b"]["difference_lo"] <= 0.1 <= result["b"]["difference_hi"]
        naive = bootstrap_means({"a": a}, np.arange(a.size), resamples=1000, seed=d)  # clips as if independent
        covered_naive += naive["a"]["lo"] <= 0.3 <= naive["a"]["hi"]
    assert 0.92 <= covered / draws <= 0.975
    assert 0.92 <= covered_difference / draws <= 0.975
    assert covered_naive / draws < 0.9  # resampling clips ignores the caption effect and under-covers (theory: 88 %)


def test_paired_interval_is_narrower_than_the_unpaired_one_and_nan_is_left_out():
    rng = np.random.default_rng(0)
    ids, a = _clustered(rng, 50, 4, 0.0, caption_sd=1.0, clip_sd=0.2)
    b = a + 0.05
    paired = bootstrap_means({"a": a, "b": b}, ids, resamples=500)
    width = paired["b"]["difference_hi"] - paired["b"]["difference_lo"]
    assert width < 1e-9 < paired["a"]["hi"] - paired["a"]["lo"]
    assert paired["b"]["difference"] == pytest.approx(0.05)
    with_nan = a.copy()
    with_nan[:4] = np.nan
    assert bootstrap_means({"a": with_nan}, ids, resamples=10)["a"]["mean"] == pytest.approx(np.mean(a[4:]))
    lo, hi = bootstrap_statistic(lambda picked: float(np.mean(a[picked])), ids, resamples=300)
    assert lo < np.mean(a) < hi
    spread = seed_spread([0.5, 0.6, 0.7])
    assert spread["mean"] == pytest.approx(0.6) and spread["sd"] == pytest.approx(0.1) and spread["seeds"] == 3


def test_fd_intervals_cover_the_expected_fd_that_bootstrap_refits_miss():
    """FD refit on a caption bootstrap resample (repeated clips) is biased upwards, so its
    percentile interval misses the FD expected at the sample's size; the delete-one-caption
    jackknife the evaluate stage uses covers it, and holds the estimate, paired differences too."""
    from baton_trainer.evaluation.intervals import jackknife_statistic, model_intervals
    from baton_trainer.evaluation.metrics import frechet_distance_from_embeddings

    rng = np.random.default_rng(0)
    dims, captions, clips = 32, 20, 4
    reference = rng.normal(size=(400, dims))
    ids = np.repeat(np.arange(captions), clips)

    def draw():  # clips share their caption's offset, as a caption's clips share its difficulty
        offsets = np.repeat(rng.normal(size=(captions, dims)) * 0.3, clips, axis=0)
        return rng.normal(size=(captions * clips, dims)) * 0.95 + offsets + 0.2

    expected = np.mean([frechet_distance_from_embeddings(draw(), reference) for _ in range(300)])
    covered = {"bootstrap": 0, "jackknife": 0}
    draws = 40
    for draw_index in range(draws):
        x = draw()
        fd = lambda picked, x=x: frechet_distance_from_embeddings(x[picked], reference)  # noqa: E731
        lo, hi = bootstrap_statistic(fd, ids, resamples=100, seed=draw_index)
        covered["bootstrap"] += lo <= expected <= hi
        lo, hi = jackknife_statistic(fd, ids)
        covered["jackknife"] += lo <= expected <= hi
    assert covered["jackknife"] / draws >= 0.85 and covered["bootstrap"] / draws <= 0.5, covered
    embeddings = {"fd_matched": {"base": x, "aligned": x + 0.1, "reference": reference}}
    intervals = model_intervals({"base": {}, "aligned": {}}, embeddings, ids)
    for model, rows in (("base", x), ("aligned", x + 0.1)):
        assert intervals[model]["fd_matched"]["lo"] <= frechet_distance_from_embeddings(rows, reference) <= intervals[model]["fd_matched"]["hi"]
    difference = frechet_distance_from_embeddings(x + 0.1, reference) - frechet_distance_from_embeddings(x, reference)
    assert intervals["aligned"]["fd_matched"]["difference_lo"] < difference < intervals["aligned"]["fd_matched"]["difference_hi"]


def test_report_names_the_judge_and_warns_when_it_is_the_reward_backbone(tmp_path):
    from baton_trainer.evaluation.reward_summary import scorer_lines
    from baton_trainer.layout import RunLayout

    layout = RunLayout.of(tmp_path)
    layout.reward_model.mkdir(parents=True)
    (layout.reward_model / "config.json").write_text(json.dumps({"clap_model_name_or_path": "laion/clap-htsat-unfused"}))
    same = scorer_lines(layout, "laion/clap-htsat-unfused", None)
    assert "laion/clap-htsat-unfused" in same["trained_by"] and "not an independent judge" in same["warning"]
    other = scorer_lines(layout, "laion/larger_clap_general", "PANNs Cnn14_DecisionLevelMax")
    assert "warning" not in other and "event scores by PANNs" in other["judged_by"]


def test_evaluate_across_seeds_reports_mean_sd_and_each_seed(tmp_path):
    from baton_trainer.stages.evaluate import EvaluateConfig, evaluate

    folders = []
    for seed, (base, aligned) in enumerate([(0.30, 0.55), (0.32, 0.61), (0.28, 0.58)]):
        folder = tmp_path / f"seed{seed}" / "eval"
        folder.mkdir(parents=True)
        metrics = {"base": {"temporal_accuracy": base, "temporal_accuracy_se": 0.02}, "aligned": {"temporal_accuracy": aligned}}
        (folder / "metrics.json").write_text(json.dumps({"metrics": metrics}))
        folders.append(str(folder))
    out = evaluate(EvaluateConfig(run_dir=str(tmp_path / "all"), across_seeds=",".join(folders)))
    data = json.loads((out / "seeds.json").read_text())
    aligned = data["models"]["aligned"]["temporal_accuracy"]
    assert aligned["per_seed"] == [0.55, 0.61, 0.58] and aligned["mean"] == pytest.approx(0.58)
    assert aligned["sd"] == pytest.approx(np.std([0.55, 0.61, 0.58], ddof=1)) and aligned["seeds"] == 3
    assert "temporal_accuracy_se" not in data["models"]["base"]  # companions are not metrics of their own
    assert "58.00 ± 1.73" in (out / "seeds.md").read_text()
    with pytest.raises(Exception, match="not found"):
        evaluate(EvaluateConfig(run_dir=str(tmp_path / "all"), across_seeds=str(tmp_path / "nowhere")))
