"""The blinded listening test: campaigns, attention checks, statistics against hand computations,
and two raters at once in a real headless Chromium."""

import json
import math
import threading
from pathlib import Path

import numpy as np
import pytest
from helpers import free_port, tone
from scipy import stats

from baton_trainer.annotation.listening import (
    BAD_CLIP,
    ListeningStore,
    build_campaign,
    build_listening_app,
    export_results,
    krippendorff_alpha,
    listening_results,
)
from baton_trainer.annotation.store import AnnotationError
from baton_trainer.audio import save_wav


def make_eval_dir(root: Path, models=("base", "aligned"), captions=4, clips=2, rates=(16000, 16000), gains_db=(0.0, 0.0), seconds=(0.5, 0.5)) -> Path:
    """Evaluation clips of each model; `rates`, `gains_db` and `seconds` per model give a model a
    header, level or length of its own, as real backends do."""
    for m, model in enumerate(models):
        folder = root / "clips" / model
        (folder / "clips").mkdir(parents=True)
        lines = []
        for c in range(captions):
            for k in range(clips):
                name = f"clips/{c:05d}_{k}.wav"
                wav = tone(300 + 100 * c + 37 * m, seconds=seconds[m] * (1 + 0.1 * k), sr=rates[m], seed=k) * 10 ** (gains_db[m] / 20)
                save_wav(folder / name, wav, rates[m])
                lines.append(
                    json.dumps(
                        {
                            "file_name": name,
                            "clip_id": f"{c:05d}_{k}",
                            "caption": f"caption {c} ünïcode",
                            "task": "integrity",
                            "labels": [],
                            "caption_id": c,
                            "clip_index": k,
                        }
                    )
                    + "\n"
                )
        (folder / "metadata.jsonl").write_text("".join(lines))
    (root / "metrics.json").write_text(json.dumps({m: {"clap_score": 0.5} for m in models}))
    (root / "report.md").write_text("# report\n")
    return root


def hand_ab(trials, answers, excluded=()):
    wins, total = {}, 0
    for a in answers:
        t = trials[a["trial_id"]]
        if t["kind"] != "test" or a["rater"] in excluded:
            continue
        model = t["clips"][a["answer"]]["model"]
        wins[model] = wins.get(model, 0) + 1
        total += 1
    return wins, total


def answer_after_listening(store, campaign, issued, rater, value):
    """Answer as a rater who listened: the trial was shown a minute ago."""
    store._conn().execute("UPDATE listening_tokens SET issued_at = issued_at - 60 WHERE token = ?", (issued["token"],))
    return store.answer(campaign, issued["token"], rater, value)


def test_ab_campaign_is_blinded_balanced_and_has_attention_checks(tmp_path):
    eval_dir = make_eval_dir(tmp_path / "eval", captions=10, clips=2, rates=(16000, 22050), gains_db=(0.0, 2.0), seconds=(0.5, 0.6))
    store = ListeningStore(tmp_path / "annotations.sqlite")
    name = build_campaign(store, eval_dir, "ab", seed=3)
    assert build_campaign(store, eval_dir, "ab", seed=3) == name  # idempotent: the campaign is kept
    trials = store.trials(name)
    kinds = [t["kind"] for t in trials]
    assert kinds.count("test") == 20 and kinds.count("repeat") == 1 and kinds.count("bad") == 1
    first = [t["clips"][0]["model"] for t in trials if t["kind"] == "test"]
    assert 0 < first.count("aligned") < 20  # sides drawn per trial, not fixed
    repeat = next(t for t in trials if t["kind"] == "repeat")
    assert [c["model"] for c in repeat["clips"]] == [c["model"] for c in reversed(trials[repeat["repeat_of"]]["clips"])]
    assert (eval_dir / BAD_CLIP).is_file()
    # attention checks are stored at random places, not always last
    checks = {}
    for seed in range(4):
        other = build_campaign(store, eval_dir, "ab", seed=seed, name=f"order{seed}")
        checks[seed] = tuple(t["trial_id"] for t in store.trials(other) if t["kind"] != "test")
    assert len(set(checks.values())) > 1 and any(max(c) < len(trials) - 1 for c in checks.values())
    # stimuli: one rate, one loudness, the caption's clips padded to one length, random names
    import pyloudnorm
    import soundfile

    info = store.campaign_info(name)["stimuli"]
    meter = pyloudnorm.Meter(info["sample_rate"])
    for t in trials:
        lengths = set()
        for clip in t["clips"]:
            wav, sr = soundfile.read(eval_dir / clip["stimulus"])
            assert sr == info["sample_rate"] == 22050 and np.abs(wav).max() <= 10 ** (info["peak_ceiling_dbfs"] / 20) + 1e-4
            assert abs(meter.integrated_loudness(wav) - info["target_lufs"]) < 0.05
            assert not any(w in Path(clip["stimulus"]).name for w in ("base", "aligned", "noise"))
            lengths.add(wav.shape[0])
        assert len(lengths) == 1 and t["duration_s"] == pytest.approx(lengths.pop() / sr)
    # each rater hears the trials in an order of their own
    assert [t["trial_id"] for t in store._order(name, "alice", trials)] != [t["trial_id"] for t in store._order(name, "bob", trials)]
    # answers: only with a token the server issued to that rater, once
    issued = store.issue(name, "alice")
    assert store.issue(name, "alice") == issued  # a reloaded page gets the same trial and token
    with pytest.raises(AnnotationError, match="must be one of"):
        store.answer(name, issued["token"], "alice", 3)
    with pytest.raises(AnnotationError, match="not for a trial the server showed you"):
        store.answer(name, issued["token"], "bob", 1)
    with pytest.raises(AnnotationError, match="not for a trial the server showed you"):
        store.answer(name, "made-up-token", "alice", 1)
    assert store.answer(name, issued["token"], "alice", 1) == issued["trial"]["trial_id"]
    with pytest.raises(AnnotationError, match="already answered"):
        store.answer(name, issued["token"], "alice", 0)
    assert store.answers(name)[0]["fast"]  # answered at once, sooner than the clip lasts
    assert store.issue(name, "alice")["trial"]["trial_id"] != issued["trial"]["trial_id"]
    with pytest.raises(AnnotationError, match="exactly 2 models"):
        build_campaign(store, eval_dir, "ab", models=["base"])
    with pytest.raises(AnnotationError, match="not found"):
        build_campaign(store, eval_dir, "mos_q", models=["base", "missing"])


def test_mos_results_match_a_hand_computation_and_failed_raters_are_left_out(tmp_path):
    eval_dir = make_eval_dir(tmp_path / "eval", captions=3, clips=2)
    store = ListeningStore(tmp_path / "annotations.sqlite")
    name = build_campaign(store, eval_dir, "mos_f", seed=0)
    trials = {t["trial_id"]: t for t in store.trials(name)}
    rng = np.random.default_rng(0)
    scores = {}  # (rater, trial or the trial it repeats) -> score: a consistent rater repeats an answer
    for rater in ("r1", "r2", "r3", "sloppy"):
        while (issued := store.issue(name, rater)) is not None:
            t = issued["trial"]
            model = t["clips"][0]["model"]
            key = (rater, t["repeat_of"] if t["kind"] == "repeat" else t["trial_id"])
            if t["kind"] == "bad":
                score = 5 if rater == "sloppy" else 1
            elif key not in scores:
                score = scores[key] = int(np.clip((4 if model == "aligned" else 3) + rng.integers(-1, 2), 1, 5))
            else:
                score = scores[key]
            answer_after_listening(store, name, issued, rater, score)
    # one quick answer from r1 would be flagged and left out: here every answer took a minute
    result = listening_results(store, name)
    assert result["fast_answers"] == {} and len(store.answers(name)) == 4 * len(trials)
    assert set(result["failed_attention"]) == {"sloppy"} and result["raters_kept"] == ["r1", "r2", "r3"]
    for model in ("base", "aligned"):
        scores = [
            a["answer"]
            for a in store.answers(name)
            if a["rater"] != "sloppy" and trials[a["trial_id"]]["kind"] == "test" and trials[a["trial_id"]]["clips"][0]["model"] == model
        ]
        mean = np.mean(scores)
        half = stats.t.ppf(0.975, len(scores) - 1) * np.std(scores, ddof=1) / math.sqrt(len(scores))
        got = result["models"][model]
        assert got["mos_f"] == pytest.approx(mean) and got["mos_f_ratings"] == len(scores) == 18
        assert got["mos_f_lo"] == pytest.approx(mean - half) and got["mos_f_hi"] == pytest.approx(mean + half)
    assert result["models"]["aligned"]["mos_f"] > result["models"]["base"]["mos_f"]
    assert -1.0 <= result["krippendorff_alpha"] <= 1.0
    # export: json, markdown, the numbers merged per model into metrics.json, and a dataset folder
    path = export_results(store, name, eval_dir)
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    assert metrics["aligned"]["mos_f"] == pytest.approx(result["models"]["aligned"]["mos_f"]) and metrics["aligned"]["clap_score"] == 0.5
    assert path.is_file() and "MOS-F" in path.with_suffix(".md").read_text() and "LUFS" in path.with_suffix(".md").read_text()
    export_results(store, name, eval_dir)  # again: the report's section is replaced, not repeated
    assert (eval_dir / "report.md").read_text().count("## Listening test") == 1
    from baton_trainer.cards import aligned_model_card

    (tmp_path / "aligned").mkdir()
    card = aligned_model_card(tmp_path / "aligned", "me/aligned", "apache-2.0", base_model="me/base", eval_dir=eval_dir)
    assert "MOS-F (1-5)" in str(card) and "mos_f" in str(card.data.to_dict())
    import datasets

    ds = datasets.load_from_disk(str(eval_dir / "listening" / f"{name}_dataset"))
    assert len(ds) == len(store.answers(name)) and set(ds.column_names) >= {"rater", "answer", "kind", "models_shown", "seconds", "fast"}
    from baton_trainer.stages.push import PushConfig, push  # the Hub dataset, here to a file:// destination

    push(PushConfig(path=str(eval_dir / "listening" / f"{name}_dataset"), repo_id=f"file://{tmp_path / 'hub'}", license="cc-by-4.0"))
    back = datasets.load_dataset("parquet", data_files=str(tmp_path / "hub" / "data" / "*.parquet"))["train"]
    assert back["answer"] == ds["answer"] and back["rater"] == ds["rater"]
    # quick answers are flagged and left out: a fourth honest-looking rater who never listened
    while (issued := store.issue(name, "hasty")) is not None:
        store.answer(name, issued["token"], "hasty", 1 if issued["trial"]["kind"] == "bad" else 5)
    again = listening_results(store, name)
    assert again["fast_answers"] == {"hasty": len(trials)} and "hasty" not in again["raters_kept"]
    assert again["models"]["aligned"]["mos_f"] == pytest.approx(result["models"]["aligned"]["mos_f"])


def test_krippendorff_alpha_known_values():
    perfect = np.array([[1, 2, 3, 4, 5], [1, 2, 3, 4, 5]], dtype=float)
    assert krippendorff_alpha(perfect) == pytest.approx(1.0)
    # Krippendorff (2011), "Computing Krippendorff's alpha-reliability", the 4 observers x 12 units example
    # (nominal alpha 0.743 there); ordinal on the same data is higher, interval is 0.849
    data = np.array(
        [
            [1, 2, 3, 3, 2, 1, 4, 1, 2, np.nan, np.nan, np.nan],
            [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, np.nan, 3],
            [np.nan, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, np.nan],
            [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, np.nan],
        ]
    )
    import krippendorff

    assert krippendorff.alpha(reliability_data=data, level_of_measurement="nominal") == pytest.approx(0.743, abs=1e-3)
    assert krippendorff_alpha(data) > 0.743
    assert krippendorff_alpha(np.array([[3, 3], [3, 3]], dtype=float)) is None  # one value only: undefined


CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (apt-get install chromium)")
def test_two_raters_at_once_in_a_browser_and_the_export_matches_the_stored_trials(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")

    eval_dir = make_eval_dir(tmp_path / "eval", captions=3, clips=1)
    store = ListeningStore(tmp_path / "annotations.sqlite")
    name = build_campaign(store, eval_dir, "ab", seed=1)
    trials = {t["trial_id"]: t for t in store.trials(name)}
    app = build_listening_app(store, name, eval_dir)
    port = free_port()
    app.queue(default_concurrency_limit=8)
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True)
    errors = []

    def rater(rater_name: str, prefer: str):
        """A rater who prefers one model whenever it is offered (and passes the attention checks)."""
        try:
            with sync_api.sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
                page = browser.new_page()
                page.goto(f"http://127.0.0.1:{port}/")
                page.locator("#baton-listen-rater input, #baton-listen-rater textarea").first.fill(rater_name)
                page.locator("#baton-listen-start").click()
                for answered in range(len(trials)):
                    sync_api.expect(page.locator("#baton-listen-progress")).to_contain_text(f"{answered} of {len(trials)}", timeout=30000)
                    page.wait_for_selector("#baton-listen-a audio[src]", state="attached", timeout=30000)
                    page.wait_for_selector("#baton-listen-b audio[src]", state="attached", timeout=30000)
                    sources = [page.locator(f"{p} audio[src]").first.get_attribute("src") for p in ("#baton-listen-a", "#baton-listen-b")]
                    assert not any(w in s for s in sources for w in ("aligned", "base", "attention", "clips/")), sources  # blinded
                    trial = store.issue(name, rater_name)["trial"]  # the trial this rater's page shows
                    models = [c["model"] for c in trial["clips"]]
                    side = models.index(prefer) if prefer in models else (1 - models.index("attention_noise") if "attention_noise" in models else 0)
                    page.locator(f"#baton-listen-answer-{side}").click()
                sync_api.expect(page.locator("#baton-listen-caption")).to_contain_text("no trials left", timeout=30000)
                browser.close()
        except Exception as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(f"{rater_name}: {exc!r}")

    threads = [threading.Thread(target=rater, args=("alice", "aligned")), threading.Thread(target=rater, args=("bob", "base"))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=240)
    finally:
        app.close()
    assert not errors, errors
    answers = store.answers(name)
    assert sorted({a["rater"] for a in answers}) == ["alice", "bob"] and len(answers) == 2 * len(trials)
    result = listening_results(store, name, exclude_fast=False)  # a script clicks sooner than a person listens
    assert result["failed_attention"] == {}
    wins, total = hand_ab(trials, answers)
    assert total == 6 and wins == {"aligned": 3, "base": 3}  # each rater chose their model on all 3 test trials
    for model in ("base", "aligned"):
        got = result["models"][model]
        ci = stats.binomtest(wins[model], total).proportion_ci(0.95, method="exact")
        assert (got["ab_wins"], got["ab_trials"]) == (wins[model], total)
        assert got["ab_win_rate_lo"] == pytest.approx(ci.low) and got["ab_win_rate_hi"] == pytest.approx(ci.high)
