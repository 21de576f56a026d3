"""The blinded listening test: campaigns, attention checks, statistics against hand computations,
and two raters at once in a real headless Chromium."""

import json
import math
import threading
from pathlib import Path

import numpy as np
import pytest
from helpers import tone
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


def make_eval_dir(root: Path, models=("base", "aligned"), captions=4, clips=2) -> Path:
    for m, model in enumerate(models):
        folder = root / "clips" / model
        (folder / "clips").mkdir(parents=True)
        lines = []
        for c in range(captions):
            for k in range(clips):
                name = f"clips/{c:05d}_{k}.wav"
                save_wav(folder / name, tone(300 + 100 * c + 37 * m, seed=k), 16000)
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


def test_ab_campaign_is_blinded_balanced_and_has_attention_checks(tmp_path):
    eval_dir = make_eval_dir(tmp_path / "eval", captions=10, clips=2)
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
    # each rater hears the trials in an order of their own
    assert (
        store.next_trial(name, "alice")["trial_id"] != store.next_trial(name, "bob")["trial_id"]
        or store.next_trial(name, "carol")["trial_id"] != store.next_trial(name, "bob")["trial_id"]
    )
    with pytest.raises(AnnotationError, match="must be one of"):
        store.add_answer(name, 0, "alice", 3)
    store.add_answer(name, 0, "alice", 1)
    with pytest.raises(AnnotationError, match="already answered"):
        store.add_answer(name, 0, "alice", 0)
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
    for rater in ("r1", "r2", "r3", "sloppy"):
        for i, t in trials.items():
            model = t["clips"][0]["model"]
            if t["kind"] == "bad":
                score = 5 if rater == "sloppy" else 1
            elif t["kind"] == "repeat":
                continue
            else:
                score = int(np.clip((4 if model == "aligned" else 3) + rng.integers(-1, 2), 1, 5))
            store.add_answer(name, i, rater, score)
        repeat = next(i for i, t in trials.items() if t["kind"] == "repeat")
        first = next(a["answer"] for a in store.answers(name) if a["rater"] == rater and a["trial_id"] == trials[repeat]["repeat_of"])
        store.add_answer(name, repeat, rater, first)
    result = listening_results(store, name)
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
    assert path.is_file() and "MOS-F" in path.with_suffix(".md").read_text()
    export_results(store, name, eval_dir)  # again: the report's section is replaced, not repeated
    assert (eval_dir / "report.md").read_text().count("## Listening test") == 1
    from baton_trainer.cards import aligned_model_card

    (tmp_path / "aligned").mkdir()
    card = aligned_model_card(tmp_path / "aligned", "me/aligned", "apache-2.0", base_model="me/base", eval_dir=eval_dir)
    assert "MOS-F (1-5)" in str(card) and "mos_f" in str(card.data.to_dict())
    import datasets

    ds = datasets.load_from_disk(str(eval_dir / "listening" / f"{name}_dataset"))
    assert len(ds) == len(store.answers(name)) and set(ds.column_names) >= {"rater", "answer", "kind", "models_shown"}
    from baton_trainer.stages.push import PushConfig, push  # the Hub dataset, here to a file:// destination

    push(PushConfig(path=str(eval_dir / "listening" / f"{name}_dataset"), repo_id=f"file://{tmp_path / 'hub'}", license="cc-by-4.0"))
    back = datasets.load_dataset("parquet", data_files=str(tmp_path / "hub" / "data" / "*.parquet"))["train"]
    assert back["answer"] == ds["answer"] and back["rater"] == ds["rater"]


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
    from test_space import free_port

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
                    trial = store.next_trial(name, rater_name)
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
    result = listening_results(store, name)
    assert result["failed_attention"] == {}
    wins, total = hand_ab(trials, answers)
    assert total == 6 and wins == {"aligned": 3, "base": 3}  # each rater chose their model on all 3 test trials
    for model in ("base", "aligned"):
        got = result["models"][model]
        ci = stats.binomtest(wins[model], total).proportion_ci(0.95, method="exact")
        assert (got["ab_wins"], got["ab_trials"]) == (wins[model], total)
        assert got["ab_win_rate_lo"] == pytest.approx(ci.low) and got["ab_win_rate_hi"] == pytest.approx(ci.high)
