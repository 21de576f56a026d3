import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from baton_trainer.annotation import (
    ALIGNED,
    NOT_ALIGNED,
    SKIP,
    AnnotationError,
    AnnotationStore,
    DuplicateRatingError,
    UnknownClipError,
    cohen_kappa,
    fleiss_kappa,
    majority_vote,
)
from baton_trainer.audio import save_wav
from baton_trainer.stages.export import ExportConfig, export_feedback


def make_generations(folder: Path, num_captions: int, clips_per_caption: int, samples: int = 1600) -> Path:
    """A tiny RUN/generations/ folder following the generate stage's contract."""
    rows = []
    for caption_id in range(num_captions):
        task = "integrity" if caption_id % 2 == 0 else "temporal"
        labels = ["beep", "whoosh"] if task == "integrity" else ["beep", "whoosh", "chirp"]
        for clip_index in range(clips_per_caption):
            clip_id = f"{caption_id:05d}_{clip_index}"
            file_name = f"clips/{clip_id}.wav"
            tone = np.sin(2 * np.pi * (200 + 50 * caption_id + 10 * clip_index) * np.arange(samples) / 16000)
            save_wav(folder / file_name, (0.3 * tone).astype(np.float32), 16000)
            rows.append(
                {
                    "file_name": file_name,
                    "clip_id": clip_id,
                    "caption": f"caption {caption_id}",
                    "caption_id": caption_id,
                    "clip_index": clip_index,
                    "task": task,
                    "labels": labels,
                    "seed": clip_index,
                    "model": "test",
                }
            )
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return folder


@pytest.fixture
def store(tmp_path):
    make_generations(tmp_path / "generations", num_captions=3, clips_per_caption=2)
    s = AnnotationStore(tmp_path / "annotations.sqlite")
    s.register_clips(tmp_path / "generations")
    yield s
    s.close()


def test_store_is_wal_with_full_sync_and_unique_ratings(store):
    conn = store._conn()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    rating_id = store.add_rating("00000_0", "alice", ALIGNED)
    assert isinstance(rating_id, int)
    with pytest.raises(DuplicateRatingError, match="'alice' has already rated clip '00000_0'"):
        store.add_rating("00000_0", "alice", NOT_ALIGNED)
    with pytest.raises(UnknownClipError, match="no clip with id 'nope'"):
        store.add_rating("nope", "alice", ALIGNED)
    with pytest.raises(AnnotationError, match="must be 1"):
        store.add_rating("00000_1", "alice", 2)
    with pytest.raises(AnnotationError, match="annotator name is empty"):
        store.add_rating("00000_1", "  ", ALIGNED)
    assert [r["label"] for r in store.ratings()] == [ALIGNED]
    clip = store.get_clip("00000_0")
    assert clip["file_name"] == "clips/00000_0.wav" and clip["labels"] == ["beep", "whoosh"]


def test_next_clip_is_fair_and_nobody_rates_twice(store):
    # breadth first: with 3 annotators at once, each gets a different clip (leases)
    first = [store.next_clip_for(name, ratings_per_clip=2)["clip_id"] for name in ("a", "b", "c")]
    assert len(set(first)) == 3
    # showing again before rating returns the same clip (a reload does not skip it)
    assert store.next_clip_for("a", ratings_per_clip=2)["clip_id"] == first[0]
    seen: dict[str, list[str]] = {}
    for name in ("a", "b", "c", "d"):
        while (clip := store.next_clip_for(name, ratings_per_clip=2)) is not None:
            seen.setdefault(name, []).append(clip["clip_id"])
            store.add_rating(clip["clip_id"], name, SKIP if clip["clip_id"] == "00001_1" and name == "a" else ALIGNED)
    for name, clips in seen.items():
        assert len(clips) == len(set(clips)), name
    counted = {}
    for r in store.ratings(include_skips=False):
        counted[r["clip_id"]] = counted.get(r["clip_id"], 0) + 1
    assert counted == {c["clip_id"]: 2 for c in store.clips()}  # a skip does not count as a rating
    progress = store.progress("a", ratings_per_clip=2)
    assert progress["skipped"] == 1 and progress["remaining"] == 0 and progress["clips_complete"] == 6


def test_breadth_first_order_without_leases(store):
    order = []
    for name in ("a", "b"):
        clip = store.next_clip_for(name, ratings_per_clip=3, lease=False)
        order.append(clip["clip_id"])
        store.add_rating(clip["clip_id"], name, ALIGNED)
    # the second person gets an unrated clip before anyone rates a clip twice
    assert order[0] != order[1]


def test_unplayable_clip_is_not_handed_out_until_reregistered(store, tmp_path):
    store.mark_clip_error("00000_0", "file not found")
    handed = []
    while (clip := store.next_clip_for("a")) is not None:
        handed.append(clip["clip_id"])
        store.add_rating(clip["clip_id"], "a", ALIGNED)
    assert "00000_0" not in handed and len(handed) == 5
    assert store.progress("a")["unplayable_clips"] == 1
    store.register_clips(tmp_path / "generations")
    assert store.next_clip_for("a")["clip_id"] == "00000_0"


def test_register_refuses_paths_outside_and_bad_metadata(tmp_path):
    gen = tmp_path / "gen"
    gen.mkdir()
    (gen / "metadata.jsonl").write_text(
        json.dumps({"file_name": "../x.wav", "clip_id": "00000_0", "caption": "c", "task": "integrity", "labels": ["a", "b"], "caption_id": 0, "clip_index": 0})
        + "\n"
    )
    with AnnotationStore(tmp_path / "s.sqlite") as s:
        with pytest.raises(AnnotationError, match="line 1: file_name '../x.wav' must be relative"):
            s.register_clips(gen)
        (gen / "metadata.jsonl").write_text('{"clip_id": "1"}\n')
        with pytest.raises(AnnotationError, match="metadata.jsonl: line 1 lacks the key 'file_name'"):
            s.register_clips(gen)
        with pytest.raises(AnnotationError, match="not found"):
            s.register_clips(tmp_path / "nowhere")
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(AnnotationError, match="garbage.sqlite: not a usable annotation store"):
        AnnotationStore(garbage)


def test_eight_threads_times_100_ratings_stored_exactly_once(tmp_path):
    make_generations(tmp_path / "generations", num_captions=20, clips_per_caption=5, samples=160)
    store = AnnotationStore(tmp_path / "annotations.sqlite")
    store.register_clips(tmp_path / "generations")
    clip_ids = [c["clip_id"] for c in store.clips()]
    assert len(clip_ids) == 100
    acknowledged: list[list[int]] = [[] for _ in range(8)]
    duplicates = [0] * 8
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def work(worker: int) -> None:
        try:
            barrier.wait()
            # each thread is its own annotator and also races a shared one ("crowd") over the same clips
            for clip_id in clip_ids:
                acknowledged[worker].append(store.add_rating(clip_id, f"worker{worker}", ALIGNED))
                try:
                    store.add_rating(clip_id, "crowd", NOT_ALIGNED)
                except DuplicateRatingError:
                    duplicates[worker] += 1
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    ratings = store.ratings()
    store.close()
    assert len(ratings) == 8 * 100 + 100
    ids = sorted(i for worker in acknowledged for i in worker)
    assert len(ids) == 800 and len(set(ids)) == 800
    assert set(ids) <= {r["rating_id"] for r in ratings}
    assert sum(duplicates) == 7 * 100  # the shared annotator got each clip exactly once
    pairs = [(r["clip_id"], r["annotator"]) for r in ratings]
    assert len(pairs) == len(set(pairs))


CHILD = textwrap.dedent(
    """
    import sys
    from baton_trainer.annotation import AnnotationStore
    store = AnnotationStore(sys.argv[1])
    clip_ids = [c["clip_id"] for c in store.clips()]
    i = 0
    while True:
        rating_id = store.add_rating(clip_ids[i % len(clip_ids)], f"rater{i // len(clip_ids)}", i % 2)
        print(rating_id, flush=True)
        i += 1
    """
)


def test_sigkill_while_writing_keeps_every_acknowledged_rating(tmp_path):
    make_generations(tmp_path / "generations", num_captions=5, clips_per_caption=4, samples=160)
    path = tmp_path / "annotations.sqlite"
    with AnnotationStore(path) as s:
        s.register_clips(tmp_path / "generations")
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    acknowledged = []
    deadline = time.monotonic() + 60
    try:
        while len(acknowledged) < 150 and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            acknowledged.append(int(line))
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
        acknowledged += [int(line) for line in child.stdout.read().split()]  # printed before the kill
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL
    assert len(acknowledged) >= 150
    # the store opens cleanly and holds every rating the child acknowledged
    with AnnotationStore(path) as s:
        stored = {r["rating_id"] for r in s.ratings()}
        assert s._conn().execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    missing = set(acknowledged) - stored
    assert not missing, f"{len(missing)} acknowledged ratings lost"


def test_majority_vote_and_ties():
    assert majority_vote([1, 1, 0]) == 1
    assert majority_vote([0, 0, 1, SKIP, SKIP]) == 0
    assert majority_vote([1, 0]) is None
    assert majority_vote([1, 0], "positive") == 1
    assert majority_vote([1, 0, SKIP], "negative") == 0
    assert majority_vote([SKIP]) is None


def test_kappas_match_references():
    # Fleiss (1971) worked example as given on Wikipedia: 10 items, 14 raters, 5 categories -> 0.210
    table = [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
    assert fleiss_kappa(table) == pytest.approx(0.20993, abs=1e-4)
    assert fleiss_kappa([[2, 0], [0, 2]]) == pytest.approx(1.0)
    assert fleiss_kappa([[3, 0], [3, 0]]) is None  # one category only: undefined
    a = [1, 1, 0, 1, 0, 0, 1, 1, 0, 1]
    b = [1, 0, 0, 1, 0, 1, 1, 1, 0, 0]
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    assert cohen_kappa(a, b) == pytest.approx(sklearn_metrics.cohen_kappa_score(a, b))
    assert cohen_kappa(a, a) == pytest.approx(1.0)


def test_export_majority_skips_ties_and_agreement(tmp_path):
    run = tmp_path / "run"
    make_generations(run / "generations", num_captions=2, clips_per_caption=3)
    store = AnnotationStore(run / "annotations.sqlite")
    store.register_clips(run / "generations")
    votes = {
        "00000_0": {"ann": 1, "bob": 1, "cy": 0},  # -> 1
        "00000_1": {"ann": 0, "bob": 0, "cy": SKIP},  # -> 0
        "00000_2": {"ann": 1, "bob": 0},  # tie
        "00001_0": {"ann": SKIP},  # skipped only: left out
        "00001_1": {"ann": 1, "bob": 1, "cy": 1},  # -> 1
    }
    for clip_id, by in votes.items():
        for annotator, label in by.items():
            store.add_rating(clip_id, annotator, label)
    store.close()

    from baton_trainer.data import PREFERENCE_FEATURES, load_preference_dataset

    out = export_feedback(ExportConfig(run_dir=str(run)))
    assert out == run / "feedback"
    ds = load_preference_dataset(out)
    assert ds.features == PREFERENCE_FEATURES
    rows = {(r["caption_id"], r["clip_index"]): r for r in ds}
    assert {k: r["feedback"] for k, r in rows.items()} == {(0, 0): 1, (0, 1): 0, (1, 1): 1}
    assert all(r["source"] == "human" and r["reward"] == r["feedback"] for r in rows.values())
    assert rows[(0, 1)]["annotator"] == "ann,bob"  # the skip is not a vote
    assert rows[(1, 1)]["task"] == "temporal" and rows[(1, 1)]["labels"] == ["beep", "whoosh", "chirp"]
    wav = (run / "generations" / "clips" / "00000_0.wav").read_bytes()
    assert rows[(0, 0)]["audio"]["bytes"] == wav

    stats = json.loads((run / "feedback_agreement.json").read_text())
    assert stats["exported_rows"] == 3 and stats["tied_clips"] == 1 and stats["dropped_ties"] == 1
    assert stats["skips"] == 2 and stats["clips_with_2plus_ratings"] == 4
    assert stats["fleiss_kappa"] == pytest.approx(fleiss_kappa([[1, 2], [2, 0], [1, 1], [0, 3]]))
    pair = next(p for p in stats["cohen_kappa_pairs"] if p["annotators"] == ["ann", "bob"])
    assert pair["clips"] == 4 and pair["percent_agreement"] == 0.75

    export_feedback(ExportConfig(run_dir=str(run), ties="positive"))
    assert len(load_preference_dataset(out)) == 4
    export_feedback(ExportConfig(run_dir=str(run), ties="negative", min_ratings=3))
    assert sorted(load_preference_dataset(out)["feedback"]) == [1, 1]


def test_export_names_missing_store_and_missing_audio(tmp_path):
    with pytest.raises(AnnotationError, match="annotations.sqlite: annotation store not found"):
        export_feedback(ExportConfig(run_dir=str(tmp_path)))
    make_generations(tmp_path / "generations", num_captions=1, clips_per_caption=1)
    with AnnotationStore(tmp_path / "annotations.sqlite") as s:
        s.register_clips(tmp_path / "generations")
        s.add_rating("00000_0", "ann", ALIGNED)
    (tmp_path / "generations" / "clips" / "00000_0.wav").unlink()
    with pytest.raises(AnnotationError, match="clip 00000_0: rated audio file .*00000_0.wav not found"):
        export_feedback(ExportConfig(run_dir=str(tmp_path)))


def test_store_survives_reopen_and_plain_sqlite_reads_it(store, tmp_path):
    store.add_rating("00000_0", "alice", ALIGNED)
    store.close()
    conn = sqlite3.connect(tmp_path / "annotations.sqlite")
    assert conn.execute("SELECT clip_id, annotator, label FROM ratings").fetchall() == [("00000_0", "alice", 1)]
    conn.close()


def test_export_with_nothing_to_export_or_a_broken_rated_clip_keeps_the_feedback_it_had(tmp_path):
    from baton_trainer.data import load_preference_dataset

    make_generations(tmp_path / "generations", num_captions=1, clips_per_caption=3)
    with AnnotationStore(tmp_path / "annotations.sqlite") as s:
        s.register_clips(tmp_path / "generations")
        s.add_rating("00000_0", "ann", ALIGNED)
        s.add_rating("00000_1", "ann", NOT_ALIGNED)
    good = export_feedback(ExportConfig(run_dir=str(tmp_path)))
    assert len(load_preference_dataset(good)) == 2

    # A store with no decided rating (only a skip): an error, and RUN/feedback is not emptied.
    empty = tmp_path / "empty.sqlite"
    with AnnotationStore(empty) as s:
        s.register_clips(tmp_path / "generations")
        s.add_rating("00000_2", "ann", SKIP)
    with pytest.raises(AnnotationError, match="no clip has a rating to export .*1 of them skips.*feedback is left as it was"):
        export_feedback(ExportConfig(run_dir=str(tmp_path), store=str(empty)))
    assert len(load_preference_dataset(good)) == 2

    # A rated clip whose wav is corrupt: named, and RUN/feedback is not replaced.
    with AnnotationStore(tmp_path / "annotations.sqlite") as s:
        s.add_rating("00000_2", "ann", ALIGNED)
    (tmp_path / "generations" / "clips" / "00000_2.wav").write_bytes(b"RIFF garbage, not a wav")
    with pytest.raises(AnnotationError, match=r"clip 00000_2 .*00000_2\.wav.*unreadable audio.*left as it was"):
        export_feedback(ExportConfig(run_dir=str(tmp_path)))
    assert len(load_preference_dataset(good)) == 2
    assert json.loads((tmp_path / "feedback_agreement.json").read_text())["exported_rows"] == 2


RATER_SCRIPT = r"""
import sys, time
from pathlib import Path
from baton_trainer.annotation.store import ALIGNED, NOT_ALIGNED, AnnotationStore, ClipCompleteError

store_path, name, per_clip, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
store = AnnotationStore(store_path, timeout=120)
(go.parent / f"ready.{name}").touch()
while not go.exists():  # every rater starts at the same moment
    time.sleep(0.005)
rated = refused = 0
while True:
    clip = store.next_clip_for(name, ratings_per_clip=per_clip)
    if clip is None:
        if store.progress(name, per_clip)["remaining"] == 0:
            break
        time.sleep(0.01)  # the clips left are held by others: ask again
        continue
    time.sleep(0.002)  # the listening: a lease is held while others ask, as in a real campaign
    try:
        store.add_rating(clip["clip_id"], name, ALIGNED if hash(clip["clip_id"]) % 2 else NOT_ALIGNED, ratings_per_clip=per_clip)
        rated += 1
    except ClipCompleteError:
        refused += 1
print(rated, refused)
"""


@pytest.mark.slow
@pytest.mark.parametrize("ratings_per_clip", [1, 2])
def test_eight_rating_processes_give_each_clip_exactly_the_ratings_it_asks_for(tmp_path, ratings_per_clip):
    import subprocess
    import sys
    import time
    from collections import Counter

    make_generations(tmp_path / "generations", num_captions=30, clips_per_caption=4, samples=160)
    with AnnotationStore(tmp_path / "annotations.sqlite") as store:
        store.register_clips(str(tmp_path / "generations"))  # a str, as the module docstring shows
    script = tmp_path / "rater.py"
    script.write_text(RATER_SCRIPT)
    go = tmp_path / "go"
    raters = [
        subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / "annotations.sqlite"), f"rater{i}", str(ratings_per_clip), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(8)
    ]
    # Open the gate only once every interpreter has started (a slow machine may take many seconds to import).
    deadline = time.monotonic() + 240
    while sum(1 for _ in tmp_path.glob("ready.rater*")) < len(raters):
        assert time.monotonic() < deadline and all(r.poll() is None for r in raters), "a rater did not start"
        time.sleep(0.05)
    go.touch()
    outputs = [r.communicate(timeout=300) for r in raters]
    assert all(r.returncode == 0 for r in raters), [err[-2000:] for _, err in outputs]
    counts = [tuple(map(int, out.split())) for out, _ in outputs]
    with AnnotationStore(tmp_path / "annotations.sqlite") as store:
        per_clip = Counter(r["clip_id"] for r in store.ratings())
        assert len(store.clips()) == 120
    assert set(per_clip.values()) == {ratings_per_clip} and len(per_clip) == 120  # every clip, never more
    assert sum(rated for rated, _ in counts) == 120 * ratings_per_clip
    assert sum(refused for _, refused in counts) == 0  # nobody was handed a clip that others covered
    assert sum(1 for rated, _ in counts if rated) > 1  # the work was shared


def test_a_rating_beyond_the_clips_count_is_refused_after_a_lease_runs_out(tmp_path):
    from baton_trainer.annotation import ClipCompleteError

    make_generations(tmp_path / "generations", num_captions=1, clips_per_caption=1)
    with AnnotationStore(tmp_path / "annotations.sqlite", lease_seconds=0.0) as store:
        store.register_clips(tmp_path / "generations")
        assert store.next_clip_for("a")["clip_id"] == "00000_0"
        assert store.next_clip_for("b")["clip_id"] == "00000_0"  # a's lease has run out: b gets it too
        store.add_rating("00000_0", "b", ALIGNED, ratings_per_clip=1)
        with pytest.raises(ClipCompleteError, match="already has its 1 rating"):
            store.add_rating("00000_0", "a", NOT_ALIGNED, ratings_per_clip=1)
        store.add_rating("00000_0", "a", SKIP, ratings_per_clip=1)  # a skip is stored: a has seen it
        assert [(r["annotator"], r["label"]) for r in store.ratings()] == [("b", ALIGNED), ("a", SKIP)]
        assert store.next_clip_for("c") is None


@pytest.mark.parametrize(
    "name, code", [("ali\x00ce", "0000"), ("\x1b[31mbob", "001B"), ("bell\x07", "0007"), ("del\x7f", "007F"), ("evil\u202egnp.exe", "202E")]
)
def test_annotator_names_with_control_characters_are_refused(store, name, code):
    with pytest.raises(AnnotationError, match=f"control character U\\+{code}"):
        store.next_clip_for(name)
    with pytest.raises(AnnotationError, match=f"control character U\\+{code}"):
        store.add_rating("00000_0", name, ALIGNED)
    assert store.ratings() == [] and store._conn().execute("SELECT COUNT(*) FROM leases").fetchone()[0] == 0


def test_annotator_names_in_any_script_are_kept(store):
    for name in ("Zoë", "علی‌رضا", "山田 太郎", "👩‍🔬 Ana"):  # the Persian name holds a zero-width non-joiner
        store.add_rating("00000_0", name, ALIGNED)
    assert len(store.ratings()) == 4
