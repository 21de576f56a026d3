"""The toy world's events and renderer: deterministic, in order, each event found alone."""

import numpy as np
import pytest

from baton_trainer.captions import caption_keeps_labels
from baton_trainer.toyworld import (
    EVENT_NAMES,
    EVENTS,
    OracleAnnotator,
    RenderError,
    UnknownEventError,
    render_dataset,
    render_event,
    render_mixture,
    render_sequence,
)

SR = 16000


def test_at_least_eight_events_with_caption_friendly_names():
    assert len(EVENTS) >= 8
    for name in EVENT_NAMES:
        assert name == name.lower() and name.isalpha() and len(name) <= 8


@pytest.mark.parametrize("name", EVENT_NAMES)
def test_event_render_is_seeded_and_varied(name):
    first, again, other = render_event(name, 1), render_event(name, 1), render_event(name, 2)
    np.testing.assert_array_equal(first, again)
    assert not (len(first) == len(other) and np.allclose(first, other))
    spec = EVENTS[name]
    assert abs(len(first) / SR - spec.duration_s) <= spec.duration_s * spec.duration_jitter + 1e-3
    assert first.dtype == np.float32 and np.all(np.isfinite(first)) and 0.01 < np.abs(first).max() < 1.0


@pytest.mark.parametrize("name", EVENT_NAMES)
def test_every_event_is_detected_alone(name):
    oracle = OracleAnnotator()
    for seed in range(3):
        wav, placed = render_sequence([name], seed=seed, return_events=True)
        found = oracle.detect(wav, SR)
        assert [d[0] for d in found] == [name], (seed, found)
        assert abs(found[0][1] - placed[0].onset_s) < 0.06


def test_background_alone_has_no_events():
    oracle = OracleAnnotator()
    assert all(oracle.detect(render_sequence([], seed=s), SR) == [] for s in range(3))


def test_sequence_is_deterministic_ordered_and_non_overlapping():
    names = ["beep", "hum", "hiss"]
    wav, placed = render_sequence(names, seed=5, return_events=True)
    again = render_sequence(names, seed=5)
    np.testing.assert_array_equal(wav, again)
    assert wav.shape == (int(2.56 * SR),) and wav.dtype == np.float32
    assert [p.name for p in placed] == names
    for earlier, later in zip(placed, placed[1:]):
        assert later.onset_s - earlier.offset_s >= 0.1 - 1e-6
    assert placed[0].onset_s >= 0.05 and placed[-1].offset_s <= 2.56 - 0.05 + 1e-6
    assert not np.array_equal(wav, render_sequence(names, seed=6))
    # A longer clip is a parameter, not a constant.
    assert render_sequence(names, seed=5, duration_s=4.0).shape == (64000,)


def test_render_errors_name_the_problem():
    with pytest.raises(UnknownEventError, match="'meow'.*known: rumble"):
        render_sequence(["beep", "meow"], seed=0)
    with pytest.raises(RenderError, match="more than the 1.0 s clip"):
        render_sequence(["beep", "hum", "hiss"], seed=0, duration_s=1.0)


def test_mixture_overlaps_and_oracle_hears_both():
    wav, placed = render_mixture(["hum", "whistle"], seed=3, return_events=True)
    assert wav.shape == (int(2.56 * SR),)
    found = {d[0] for d in OracleAnnotator().detect(wav, SR)}
    assert found == {"hum", "whistle"}
    assert [p.onset_s for p in placed] == sorted(p.onset_s for p in placed)


def test_dataset_items_depend_only_on_seed_and_index():
    data = render_dataset(6, seed=4)
    assert data["audio"].shape == (6, int(2.56 * SR)) and data["sample_rate"] == SR
    tail = render_dataset(2, seed=4, start=4)
    np.testing.assert_array_equal(tail["audio"], data["audio"][4:])
    assert tail["caption"] == data["caption"][4:]
    for caption, task, labels, events in zip(data["caption"], data["task"], data["labels"], data["events"]):
        assert 1 <= len(labels) <= 3 and caption_keeps_labels(caption, labels, ordered=False)
        assert sorted(labels) == sorted(e[0] for e in events)
        if task == "temporal":  # three events sound in the stated order
            assert [e[0] for e in events] == labels


def test_dataset_captions_match_the_audio():
    """3-event captions state the order the audio has; the oracle agrees on every clip."""
    data = render_dataset(12, seed=0, event_count_probs=(0.0, 0.5, 0.5))
    oracle = OracleAnnotator()
    for wav, labels, task in zip(data["audio"], data["labels"], data["task"]):
        assert oracle.judge(wav, SR, labels, task) == 1


def test_order_noise_breaks_stated_order():
    data = render_dataset(40, seed=1, event_count_probs=(0, 0, 1), order_noise=1.0)
    shuffled = sum([e[0] for e in events] != labels for labels, events in zip(data["labels"], data["events"]))
    assert shuffled >= 25  # 5 of 6 permutations differ from the stated order


def test_event_dropout_leaves_named_events_out_of_the_audio():
    """Each named event goes missing with the given chance; one always sounds; nothing unnamed sounds."""
    data = render_dataset(300, seed=2, event_count_probs=(0, 0, 1), event_dropout=0.3)
    counts = [len(events) for events in data["events"]]
    assert min(counts) >= 1
    for labels, events in zip(data["labels"], data["events"]):
        assert {e[0] for e in events} <= set(labels)
    # P(all 3 kept | at least one kept) = 0.7^3 / (1 - 0.3^3) = 0.353; 300 clips: se 0.028
    assert abs(np.mean([c == 3 for c in counts]) - 0.353) < 0.09
    clean = render_dataset(50, seed=2, event_count_probs=(0, 0, 1))
    assert all(len(events) == 3 for events in clean["events"])


def test_pair_event_dropout_applies_to_two_event_captions_only():
    data = render_dataset(400, seed=3, event_count_probs=(0, 1, 1), event_dropout=0.0, pair_event_dropout=0.5)
    pairs = [len(e) for labels, e in zip(data["labels"], data["events"]) if len(labels) == 2]
    triples = [len(e) for labels, e in zip(data["labels"], data["events"]) if len(labels) == 3]
    assert all(c == 3 for c in triples)
    # P(both kept | at least one kept) = 0.25 / 0.75; about 200 pairs: se 0.033
    assert min(pairs) >= 1 and abs(np.mean([c == 2 for c in pairs]) - 1 / 3) < 0.1


def test_gap_concentration_puts_events_nearer_fixed_places():
    def first_onsets(concentration):
        return [render_sequence(["beep", "hum", "hiss"], seed=s, gap_concentration=concentration, return_events=True)[1][0].onset_s for s in range(60)]

    assert np.std(first_onsets(20.0)) < 0.5 * np.std(first_onsets(1.0))
