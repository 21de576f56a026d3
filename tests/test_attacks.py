"""The human path attacked the way a dishonest rater or a careless operator would: real servers on
127.0.0.1, real HTTP calls (gradio_client and httpx), no mocks. Every attack must fail while honest
raters and listeners finish their campaign with exactly what they answered."""

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import free_port
from test_annotation import make_generations
from test_listening import make_eval_dir

from baton_trainer.annotation.logins import add_user, read_users_file
from baton_trainer.annotation.store import AnnotationError, AnnotationStore
from baton_trainer.serving import client_message
from baton_trainer.stages.annotate import AnnotateConfig, annotate
from baton_trainer.stages.export import ExportConfig, export_feedback
from baton_trainer.stages.listen import ListenConfig, listen

gradio_client = pytest.importorskip("gradio_client")
httpx = pytest.importorskip("httpx")

RATERS = [f"rater{i}" for i in range(8)]
CLIP_S = 0.5  # the rating campaign's clips: long enough that an answer without listening is plainly faster


def write_users(path: Path, names) -> dict[str, str]:
    """A users file of bcrypt hashes (cheap rounds: the test is not about bcrypt's cost)."""
    passwords = {name: f"pw-{name}-{hashlib.sha1(name.encode()).hexdigest()[:6]}" for name in names}
    for name, password in passwords.items():
        add_user(path, name, password, rounds=4)
    return passwords


def login(url: str, name: str, password: str) -> httpx.Client:
    session = httpx.Client(base_url=url, timeout=30)
    response = session.post("/login", data={"username": name, "password": password})
    assert response.status_code == 200, response.text
    return session


def one_line_without_paths(message: str, *paths: Path) -> bool:
    return bool(message) and "\n" not in message.strip() and "Traceback" not in message and not any(str(p) in message for p in paths)


def raw_call(session: httpx.Client, api_name: str, data: list) -> str:
    """An event called over Gradio's HTTP API with whatever `data`; returns the status text of a
    normal answer, or raises with the error message Gradio streamed back."""
    event = session.post(f"/gradio_api/call/{api_name}", json={"data": data}).json()["event_id"]
    stream = session.get(f"/gradio_api/call/{api_name}/{event}").text
    kind = stream.split("event: ", 1)[1].split("\n", 1)[0].strip()
    payload = json.loads(stream.split("data: ", 1)[1].split("\n", 1)[0])
    if kind == "error":
        raise RuntimeError(payload.get("error"))  # None: Gradio's empty error
    return payload[5]


def assert_one_line_answer(call, *paths: Path) -> None:
    """An error answer is one non-empty line without a path; a normal answer's status, if any, too."""
    try:
        message = call()
        assert not message or one_line_without_paths(message, *paths), message
    except Exception as exc:  # noqa: BLE001 - a refusal by Gradio itself must still say what
        message = str(exc)
        assert message.strip() not in ("", "None", "null") and one_line_without_paths(message, *paths), message


def test_client_message_keeps_one_line_and_hides_absolute_paths():
    text = "could not open /home/me/runs/x.wav (see '/tmp/a b/c'); 1/2 of ~/f done\n  File \"/usr/lib/x.py\", line 3"
    assert client_message(text) == "could not open <path> (see '<path> b/c'); 1/2 of ~/f done"
    assert client_message("\n\n  second\nthird") == "second"
    assert len(client_message("x" * 1000)) == 300


def test_users_file_refuses_duplicates_and_unstorable_names_and_hashes_work(tmp_path, capsys):
    users = tmp_path / "users.txt"
    passwords = write_users(users, ["alice", "Zoë Ångström"])
    assert oct(users.stat().st_mode & 0o777) == "0o600"
    secrets = read_users_file(users)
    assert all(s.startswith("$2b$") for s in secrets.values()) and passwords["alice"] not in users.read_text()
    from baton_trainer.annotation.logins import check_password

    assert check_password(secrets["alice"], passwords["alice"]) and not check_password(secrets["alice"], "guess")
    text = users.read_text()
    users.write_text(text + "alice:other\n")
    users.chmod(0o600)
    with pytest.raises(AnnotationError, match="line 3: name 'alice' appears twice"):
        read_users_file(users)
    users.write_text(text + "bad\u202ename:pw\n")
    with pytest.raises(AnnotationError, match="line 3: .*control character U\\+202E"):
        read_users_file(users)
    users.write_text(text + "two  spaces:pw\n")
    with pytest.raises(AnnotationError, match="would be stored as 'two spaces'"):
        read_users_file(users)
    users.write_text(text)
    users.chmod(0o644)
    with pytest.warns(UserWarning, match="can be read by other users"):
        read_users_file(users)
    # an app reachable beyond this machine without logins says so
    import warnings

    from baton_trainer.serving import warn_if_open

    with pytest.warns(UserWarning, match="without --users_file"):
        warn_if_open("0.0.0.0", False, None)
    with pytest.warns(UserWarning, match="gradio.live"):
        warn_if_open("127.0.0.1", True, None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_open("127.0.0.1", False, None)
        warn_if_open("0.0.0.0", True, str(users))
    # the `users` stage, as an operator runs it with the password on standard input
    import io
    import sys

    from baton_trainer.__main__ import main

    stdin, sys.stdin = sys.stdin, io.StringIO("s3cret pass\n")
    try:
        assert main(["users", "--users_file", str(tmp_path / "new.txt"), "--add", "carol"]) == 0
    finally:
        sys.stdin = stdin
    assert check_password(read_users_file(tmp_path / "new.txt")["carol"], "s3cret pass")


@pytest.mark.slow
def test_rating_app_attacks_fail_and_eight_honest_raters_finish_the_campaign(tmp_path):
    run = tmp_path / "run"
    generations = make_generations(run / "generations", num_captions=24, clips_per_caption=2, samples=int(CLIP_S * 16000))
    users = tmp_path / "users.txt"
    passwords = write_users(users, RATERS + ["mallory"])
    # short leases: the clip mallory is handed last and never rates goes back to the others soon
    config = AnnotateConfig(run_dir=str(run), ratings_per_clip=2, users_file=str(users), server_port=free_port(), spectrogram=False, lease_seconds=3)
    app = annotate(config, prevent_thread_lock=True)
    url = f"http://127.0.0.1:{config.server_port}"
    store_path = run / "annotations.sqlite"
    try:
        mallory = gradio_client.Client(url + "/", auth=("mallory", passwords["mallory"]), verbose=False)
        # 1. a rating for a clip never handed out is refused and not stored
        status = mallory.predict("mallory", "00003_1", api_name="/aligned")[5]
        assert "was not handed to 'mallory'" in status and one_line_without_paths(status, tmp_path)
        # 2. a clip leased to someone else cannot be rated; a typed name does not override the login
        rater0 = gradio_client.Client(url + "/", auth=("rater0", passwords["rater0"]), verbose=False)
        theirs = rater0.predict("", api_name="/start")[0]
        assert "was not handed to 'mallory'" in mallory.predict("rater0", theirs, api_name="/aligned")[5]
        shown = mallory.predict("rater0", api_name="/start")[0]
        assert shown and shown != theirs and "**mallory**" in mallory.predict("rater0", "", api_name="/skip")[4]
        with AnnotationStore(store_path) as store:
            assert store.ratings() == []
        # 3. mallory rates the clip she was shown without listening: stored, flagged, left out of the export
        mallory.predict("mallory", shown, api_name="/not_aligned")
        # 4. no server file is reachable: the store, its WAL, the users file, metadata.jsonl, a clip
        session = login(url, "mallory", passwords["mallory"])
        for path in (store_path, Path(f"{store_path}-wal"), users, generations / "metadata.jsonl", generations / "clips" / "00000_0.wav"):
            response = session.get(f"/gradio_api/file={path.resolve()}")
            assert response.status_code != 200 or response.content != path.read_bytes(), path
        # 5. bad API inputs get one line, never an empty error, a traceback or a server path
        for args in ((None, None), (5, 5), ({"a": 1}, ["x"]), ("x" * 10000, "\x00" * 100)):
            assert_one_line_answer(lambda: mallory.predict(*args, api_name="/aligned")[5], tmp_path)
        assert_one_line_answer(lambda: raw_call(session, "aligned", []), tmp_path)  # too few inputs
        # 6. uploads beyond a few kilobytes are refused and not kept
        response = session.post("/gradio_api/upload", files={"files": ("big.wav", b"\0" * 5_000_000)})
        assert response.status_code >= 400

        # eight honest raters at once: each rates what it is shown after hearing it
        acknowledged, errors = set(), []

        def rater(name: str) -> None:
            try:
                client = gradio_client.Client(url + "/", auth=(name, passwords[name]), verbose=False)
                result = client.predict("", api_name="/start")
                deadline = time.monotonic() + 120
                while result[0] or "someone else right now" in result[5]:
                    assert time.monotonic() < deadline, "campaign did not finish"
                    if not result[0]:  # the last clips are leased to others: ask again, as the page says
                        time.sleep(0.2)
                        result = client.predict("", api_name="/start")
                        continue
                    clip_id = result[0]
                    digest = int(hashlib.sha1(f"{name}/{clip_id}".encode()).hexdigest(), 16)
                    endpoint, label = [("/aligned", 1), ("/not_aligned", 0), ("/skip", -2)][digest % 3 if digest % 7 == 0 else digest % 2]
                    time.sleep(CLIP_S + 0.05)  # listens to the clip
                    result = client.predict("", clip_id, api_name=endpoint)
                    if not any(w in result[5] for w in ("You had already rated", "got its last rating from someone else", "was not handed")):
                        acknowledged.add((clip_id, name, label))
                assert "No clips left" in result[5], result[5]
            except Exception as exc:  # noqa: BLE001 - reported by the main thread
                errors.append(f"{name}: {exc!r}")

        threads = [threading.Thread(target=rater, args=(name,)) for name in RATERS]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert not errors, errors
        # 7. password guessing is throttled: five failures, then "too many attempts" for that name and
        # for that client, even with the right password
        guesser = httpx.Client(base_url=url, timeout=30)
        codes = [guesser.post("/login", data={"username": "rater0", "password": f"guess{i}"}).status_code for i in range(5)]
        assert codes == [400] * 5
        blocked = guesser.post("/login", data={"username": "rater0", "password": passwords["rater0"]})
        assert blocked.status_code == 429 and "too many attempts" in blocked.json()["detail"]
        assert guesser.post("/login", data={"username": "rater1", "password": passwords["rater1"]}).status_code == 429  # same client
    finally:
        app.close()
        app.annotation_store.close()

    with AnnotationStore(store_path) as store:
        ratings = store.ratings()
        clips = store.clips()
    honest = [r for r in ratings if r["annotator"] != "mallory"]
    assert {(r["clip_id"], r["annotator"], r["label"]) for r in honest} == acknowledged  # acknowledged == stored
    counts = {c["clip_id"]: 0 for c in clips}
    for r in ratings:
        counts[r["clip_id"]] += r["label"] in (0, 1)
    assert set(counts.values()) == {2}  # every clip rated exactly as asked
    assert [r["fast"] for r in ratings if r["annotator"] == "mallory"] == [True] and not any(r["fast"] for r in honest)
    with sqlite3.connect(store_path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    export_feedback(ExportConfig(run_dir=str(run)))
    stats = json.loads((run / "feedback_agreement.json").read_text())
    assert stats["fast_ratings_by_annotator"] == {"mallory": 1} and "mallory" not in stats["annotators"]


def served_features(client, store, campaign: str, answer_api: str) -> list[dict]:
    """Walk a rater's whole test through HTTP, keeping what the browser got for each trial; the
    truth (the model behind each token) is looked up in the store afterwards."""
    import pyloudnorm
    import soundfile

    rows = []
    result = client.predict("blind", api_name="/start")
    position = 0
    while result[0]:
        token, audio = result[0], result[2]
        wav, sr = soundfile.read(audio)
        rows.append(
            {
                "token": token,
                "position": position,
                "sample_rate": sr,
                "seconds": wav.shape[0] / sr,
                "lufs": pyloudnorm.Meter(sr).integrated_loudness(wav),
                "peak": float(np.abs(wav).max()),
            }
        )
        position += 1
        result = client.predict("blind", token, api_name=answer_api)
    with sqlite3.connect(store) as conn:
        for row in rows:
            trial_id = conn.execute("SELECT trial_id FROM listening_tokens WHERE token = ?", (row["token"],)).fetchone()[0]
            clips, kind = conn.execute("SELECT clips, kind FROM listening_trials WHERE campaign = ? AND trial_id = ?", (campaign, trial_id)).fetchone()
            row["model"], row["kind"], row["file"] = json.loads(clips)[0]["model"], kind, json.loads(clips)[0]["file"]
    return rows


def cv_accuracy(features: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression())
    return float(cross_val_score(model, features, labels, cv=StratifiedKFold(5, shuffle=True, random_state=0)).mean())


@pytest.mark.slow
def test_no_feature_the_browser_gets_tells_the_condition(tmp_path):
    """Base and aligned clips differ in sample rate, length and level (as real backends can); what a
    browser receives must not tell them apart better than chance."""
    run = tmp_path / "run"
    eval_dir = make_eval_dir(run / "eval", captions=48, clips=1, rates=(16000, 22050), gains_db=(0.0, 3.0), seconds=(0.5, 0.6))
    config = ListenConfig(run_dir=str(run), mode="mos_q", models="base,aligned", server_port=free_port())
    app = listen(config, prevent_thread_lock=True)
    try:
        client = gradio_client.Client(f"http://127.0.0.1:{config.server_port}/", verbose=False)
        rows = served_features(client, run / "annotations.sqlite", "mos_q_base_vs_aligned_seed0", "/answer_3")
    finally:
        app.close()
        app.listening_store.close()
    tests = [r for r in rows if r["kind"] == "test"]
    assert len(tests) == 96
    labels = np.array([r["model"] == "aligned" for r in tests])
    assert {r["sample_rate"] for r in rows} == {22050}  # one rate
    lufs = np.array([r["lufs"] for r in rows])
    assert lufs.max() - lufs.min() < 0.5 and max(r["peak"] for r in rows) < 1.0  # one loudness, no clipping
    by_caption: dict[str, set] = {}
    for r in tests:
        by_caption.setdefault(Path(r["file"]).name, set()).add(round(r["seconds"], 6))
    assert all(len(lengths) == 1 for lengths in by_caption.values())  # a caption's clips last as long
    features = np.array(
        [[int(hashlib.sha1(r["token"].encode()).hexdigest(), 16) % 1000, r["position"], r["seconds"], r["sample_rate"], r["lufs"]] for r in tests]
    )
    # chance is 0.5; 0.7 lies > 4 standard errors above it for 96 trials
    assert cv_accuracy(features, labels) < 0.7
    # the same classifier on the clips as the models wrote them finds the condition: the test can fail
    import pyloudnorm
    import soundfile

    raw = []
    for r in tests:
        wav, sr = soundfile.read(eval_dir / r["file"])
        raw.append([0, r["position"], wav.shape[0] / sr, sr, pyloudnorm.Meter(sr).integrated_loudness(wav)])
    assert cv_accuracy(np.array(raw), labels) > 0.95


@pytest.mark.slow
def test_listening_forged_answers_are_refused_and_mos_is_the_honest_one(tmp_path):
    run = tmp_path / "run"
    make_eval_dir(run / "eval", captions=6, clips=1)
    users = tmp_path / "users.txt"
    passwords = write_users(users, RATERS + ["mallory"])
    config = ListenConfig(run_dir=str(run), mode="mos_q", models="base,aligned", users_file=str(users), server_port=free_port())
    app = listen(config, prevent_thread_lock=True)
    url = f"http://127.0.0.1:{config.server_port}"
    store_path = run / "annotations.sqlite"
    campaign = "mos_q_base_vs_aligned_seed0"

    def truth(token: str) -> tuple[str, str, int, int | None, float]:
        with sqlite3.connect(store_path) as conn:
            trial_id = conn.execute("SELECT trial_id FROM listening_tokens WHERE token = ?", (token,)).fetchone()[0]
            clips, kind, repeat_of, seconds = conn.execute(
                "SELECT clips, kind, repeat_of, duration_s FROM listening_trials WHERE campaign = ? AND trial_id = ?", (campaign, trial_id)
            ).fetchone()
        return json.loads(clips)[0]["model"], kind, trial_id, repeat_of, seconds

    honest: dict[tuple[str, int], int] = {}
    errors = []
    try:
        # no login, no test: the API refuses anonymous clients
        assert httpx.get(url + "/config", timeout=30).status_code in (401, 403) or "auth_required" in httpx.get(url + "/config", timeout=30).text
        mallory = gradio_client.Client(url + "/", auth=("mallory", passwords["mallory"]), verbose=False)
        status = mallory.predict("mallory", "made-up-token", api_name="/answer_5")[5]
        assert "not for a trial the server showed you" in status and one_line_without_paths(status, tmp_path)
        # bad API inputs get one line, never an empty error, a traceback or a server path
        for args in ((None, None), (5, 5), ({"a": 1}, ["x"]), ("x" * 10000, "y" * 10000), ("\u202e", "\x00")):
            assert_one_line_answer(lambda: mallory.predict(*args, api_name="/answer_1")[5], tmp_path)
        session = login(url, "mallory", passwords["mallory"])
        assert_one_line_answer(lambda: raw_call(session, "answer_1", ["mallory"]), tmp_path)  # too few inputs
        assert_one_line_answer(lambda: raw_call(session, "start", [{"nested": [1, 2]}]), tmp_path)

        def listener(name: str) -> None:
            try:
                client = gradio_client.Client(url + "/", auth=(name, passwords[name]), verbose=False)
                offset = RATERS.index(name) % 2
                result = client.predict("", api_name="/start")
                while result[0]:
                    model, kind, trial_id, repeat_of, seconds = truth(result[0])
                    key = repeat_of if kind == "repeat" else trial_id
                    score = 1 if kind == "bad" else (4 if model == "aligned" else 2) + offset
                    time.sleep(seconds + 0.05)  # listens to the whole stimulus
                    result = client.predict("", result[0], api_name=f"/answer_{score}")
                    honest[(name, key if kind != "repeat" else -1 - trial_id)] = score
                assert "no trials left" in result[1]
            except Exception as exc:  # noqa: BLE001 - reported by the main thread
                errors.append(f"{name}: {exc!r}")

        threads = [threading.Thread(target=listener, args=(name,)) for name in RATERS]
        for t in threads:
            t.start()
        # while they listen, mallory forges: a token she stole from rater0, and the same after it was used
        stolen, deadline = None, time.time() + 120
        while stolen is None and time.time() < deadline:  # as soon as rater0 has been shown a trial (a busy machine takes a while)
            time.sleep(0.2)
            with sqlite3.connect(store_path) as conn:
                stolen = conn.execute("SELECT token FROM listening_tokens WHERE rater = 'rater0' ORDER BY issued_at LIMIT 1").fetchone()
        assert stolen is not None, f"rater0 was shown no trial within 120 s: {errors}"
        stolen = stolen[0]
        for _ in range(3):
            status = mallory.predict("rater0", stolen, api_name="/answer_5")[5]
            assert "not for a trial the server showed you" in status
        for t in threads:
            t.join(timeout=300)
        assert not errors, errors
        rater0 = gradio_client.Client(url + "/", auth=("rater0", passwords["rater0"]), verbose=False)
        assert "already answered" in rater0.predict("", stolen, api_name="/answer_5")[5]  # a replay
    finally:
        app.close()
        app.listening_store.close()
    from baton_trainer.annotation.listening import ListeningStore, listening_results

    with ListeningStore(store_path) as store:
        answers = store.answers(campaign)
        trials = {t["trial_id"]: t for t in store.trials(campaign)}
        result = listening_results(store, campaign)
    assert {a["rater"] for a in answers} == set(RATERS) and not any(a["fast"] for a in answers)  # mallory's were all refused
    assert result["failed_attention"] == {} and result["raters_kept"] == RATERS
    for model in ("base", "aligned"):
        scores = [a["answer"] for a in answers if trials[a["trial_id"]]["kind"] == "test" and trials[a["trial_id"]]["clips"][0]["model"] == model]
        expected = [s for (name, key), s in honest.items() if key >= 0 and trials[key]["kind"] == "test" and trials[key]["clips"][0]["model"] == model]
        assert sorted(scores) == sorted(expected) and len(scores) == 8 * 6
        assert result["models"][model]["mos_q"] == pytest.approx(np.mean(expected))
