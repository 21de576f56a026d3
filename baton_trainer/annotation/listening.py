"""A blinded listening test over the evaluation's clips: MOS-Q, MOS-F and A/B preference.

    campaign = build_campaign(store, "RUN/eval", "ab", models=["base", "aligned"], seed=0)
    app = build_listening_app(store, campaign, "RUN/eval")      # several raters at once
    results = listening_results(store, campaign)                 # MOS, win rates, alpha

The BATON paper ran MOS-Q (audio quality) and MOS-F (faithfulness to the caption) on 5-point
scales with 40 raters. Here:

- Modes: `mos_q` (one clip, its quality; the caption is not shown), `mos_f` (one clip and its
  caption, how faithful), `ab` (one caption, the two models' clips of the same seed, which matches
  it better; forced choice).
- Blinding: raters never see a model name; the A/B side of each model is drawn per trial, and
  each rater hears the trials in an order of their own (seeded by campaign and rater name).
- Attention checks, mixed in unmarked: a repeated trial (the same trial again, sides swapped) and
  a known-bad clip (noise at the clip's length: MOS should be at most 2; in A/B it sits against a
  real clip, which should win). A rater who fails either is flagged; `listening_results` reports
  the numbers without flagged raters (and says how many there were).
- Storage: the same SQLite file as the ratings (`AnnotationStore`'s WAL, fsync per answer), one
  answer per rater and trial.

Results (`listening_results`): MOS per model with a 95 % t-interval over ratings; A/B win rate of
each model with a 95 % Clopper-Pearson interval (`scipy.stats.binomtest`); Krippendorff's alpha
(ordinal) over raters x trials for the 5-point modes (the `krippendorff` package).
"""

from __future__ import annotations

import json
import math
import random
import zlib
from pathlib import Path
from typing import Any, Sequence

import krippendorff
import numpy as np

from ..atomic import atomic_write_json, atomic_write_text
from ..audio import load_audio, save_wav
from ..generations import read_generations
from .store import AnnotationError, AnnotationStore, _clean_annotator, _now

MODES = ("mos_q", "mos_f", "ab")
BAD_CLIP = "attention_noise.wav"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS listening_trials (
    campaign TEXT NOT NULL,
    trial_id INTEGER NOT NULL,
    mode TEXT NOT NULL,
    caption TEXT NOT NULL,
    caption_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('test', 'repeat', 'bad')),
    repeat_of INTEGER,
    clips TEXT NOT NULL,              -- JSON list of {"model", "file"} in the order shown (A, B)
    PRIMARY KEY (campaign, trial_id)
);
CREATE TABLE IF NOT EXISTS listening_answers (
    campaign TEXT NOT NULL,
    trial_id INTEGER NOT NULL,
    rater TEXT NOT NULL,
    answer INTEGER NOT NULL,          -- 1-5 for MOS, 0 (A) or 1 (B) for A/B
    created_at TEXT NOT NULL,
    UNIQUE (campaign, trial_id, rater)
);
"""


class ListeningStore(AnnotationStore):
    """The annotation store with the listening test's tables beside the ratings."""

    def __init__(self, path: str | Path, **kwargs: Any):
        super().__init__(path, **kwargs)
        self._conn().executescript(_SCHEMA)

    def trials(self, campaign: str) -> list[dict[str, Any]]:
        rows = self._conn().execute("SELECT * FROM listening_trials WHERE campaign = ? ORDER BY trial_id", (campaign,)).fetchall()
        return [{**dict(r), "clips": json.loads(r["clips"])} for r in rows]

    def answers(self, campaign: str) -> list[dict[str, Any]]:
        rows = self._conn().execute("SELECT * FROM listening_answers WHERE campaign = ? ORDER BY rowid", (campaign,)).fetchall()
        return [dict(r) for r in rows]

    def add_answer(self, campaign: str, trial_id: int, rater: str, answer: int) -> None:
        rater = _clean_annotator(rater)
        trial = self._conn().execute("SELECT mode FROM listening_trials WHERE campaign = ? AND trial_id = ?", (campaign, int(trial_id))).fetchone()
        if trial is None:
            raise AnnotationError(f"campaign {campaign!r} has no trial {trial_id}")
        allowed = (0, 1) if trial["mode"] == "ab" else (1, 2, 3, 4, 5)
        if int(answer) not in allowed:
            raise AnnotationError(f"trial {trial_id} ({trial['mode']}): answer must be one of {allowed}, got {answer}")
        try:
            self._conn().execute("INSERT INTO listening_answers VALUES (?, ?, ?, ?, ?)", (campaign, int(trial_id), rater, int(answer), _now()))
        except Exception as exc:  # sqlite3.IntegrityError: this rater answered this trial already
            if "UNIQUE" in str(exc):
                raise AnnotationError(f"{rater} has already answered trial {trial_id}; the first answer is kept") from exc
            raise

    def next_trial(self, campaign: str, rater: str) -> dict[str, Any] | None:
        """The rater's next unanswered trial, in the rater's own shuffled order."""
        rater = _clean_annotator(rater)
        trials = self.trials(campaign)
        done = {r["trial_id"] for r in self._conn().execute("SELECT trial_id FROM listening_answers WHERE campaign = ? AND rater = ?", (campaign, rater))}
        order = list(range(len(trials)))
        random.Random(zlib.crc32(f"{campaign}\0{rater}".encode())).shuffle(order)
        for i in order:
            if trials[i]["trial_id"] not in done:
                return trials[i]
        return None


def build_campaign(
    store: ListeningStore,
    eval_dir: str | Path,
    mode: str,
    models: Sequence[str] = ("base", "aligned"),
    seed: int = 0,
    max_trials: int | None = None,
    name: str | None = None,
) -> str:
    """Trials over `eval_dir/clips/<model>/` (the evaluate stage's clips: same captions and seeds
    for every model), plus one repeated and one known-bad trial. Idempotent: an existing campaign
    of that name is kept as it is. Returns the campaign name."""

    if mode not in MODES:
        raise AnnotationError(f"mode must be one of {list(MODES)}, got {mode!r}")
    models = list(models)
    if mode == "ab" and len(models) != 2:
        raise AnnotationError(f"an A/B campaign compares exactly 2 models, got {models}")
    name = name or f"{mode}_{'_vs_'.join(models)}_seed{seed}"
    if store.trials(name):
        return name
    eval_dir = Path(eval_dir)
    rows = {}
    for model in models:
        folder = eval_dir / "clips" / model
        if not (folder / "metadata.jsonl").is_file():
            raise AnnotationError(f"{folder / 'metadata.jsonl'}: not found (run the evaluate stage for model {model!r} first)")
        rows[model] = {(str(r["caption_id"]), int(r["clip_index"])): r for r in read_generations(folder)}
    keys = sorted(set.intersection(*(set(r) for r in rows.values())))
    if not keys:
        raise AnnotationError(f"models {models} share no (caption, clip) in {eval_dir / 'clips'}")
    rng = random.Random(seed)
    if max_trials is not None and len(keys) > max_trials // (1 if mode == "ab" else len(models)):
        keys = sorted(rng.sample(keys, max(1, max_trials // (1 if mode == "ab" else len(models)))))
    trials: list[dict[str, Any]] = []
    for key in keys:
        caption = rows[models[0]][key]["caption"]
        clips = [{"model": m, "file": f"clips/{m}/{rows[m][key]['file_name']}"} for m in models]
        if mode == "ab":
            rng.shuffle(clips)  # which model is A is drawn per trial
            trials.append({"caption": caption, "caption_id": key[0], "kind": "test", "clips": clips})
        else:
            trials += [{"caption": caption, "caption_id": key[0], "kind": "test", "clips": [c]} for c in clips]
    repeated = rng.randrange(len(trials))
    trials.append({**trials[repeated], "kind": "repeat", "repeat_of": repeated, "clips": list(reversed(trials[repeated]["clips"]))})
    # The known-bad clip: noise at a real clip's length and level, written beside the clips.
    first = trials[0]["clips"][0]
    wav, sr = load_audio(eval_dir / first["file"])
    noise = np.random.default_rng(seed).normal(0.0, max(float(np.std(wav)), 0.05), wav.shape[0]).clip(-1, 1).astype(np.float32)
    save_wav(eval_dir / BAD_CLIP, noise, sr)
    bad = {"model": "attention_noise", "file": BAD_CLIP}
    bad_clips = [dict(first), bad] if mode == "ab" else [bad]
    rng.shuffle(bad_clips)
    trials.append({"caption": trials[0]["caption"], "caption_id": trials[0]["caption_id"], "kind": "bad", "clips": bad_clips})
    conn = store._conn()
    conn.execute("BEGIN IMMEDIATE")
    try:
        for i, t in enumerate(trials):
            conn.execute(
                "INSERT INTO listening_trials VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (name, i, mode, t["caption"], t["caption_id"], t["kind"], t.get("repeat_of"), json.dumps(t["clips"])),
            )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return name


def _attention(trials: dict[int, dict[str, Any]], answers: dict[int, int], mode: str) -> list[str]:
    """Why a rater's answers fail the attention checks (empty: passed)."""
    failed = []
    for trial_id, trial in trials.items():
        if trial_id not in answers:
            continue
        if trial["kind"] == "bad":
            if mode == "ab":
                chosen = trial["clips"][answers[trial_id]]["model"]
                if chosen == "attention_noise":
                    failed.append("preferred the noise clip")
            elif answers[trial_id] > 2:
                failed.append(f"rated the noise clip {answers[trial_id]}")
        elif trial["kind"] == "repeat" and trial["repeat_of"] in answers:
            first, again = answers[trial["repeat_of"]], answers[trial_id]
            if mode == "ab" and trial["clips"][again]["model"] != trials[trial["repeat_of"]]["clips"][first]["model"]:
                failed.append("chose differently on the repeated trial")
            elif mode != "ab" and abs(first - again) > 1:
                failed.append(f"repeated trial rated {first} then {again}")
    return failed


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, lo, hi): the Student-t interval of a mean."""
    from scipy import stats  # lazy: only the export's numbers need scipy, serving the test does not

    x = np.asarray(values, dtype=np.float64)
    mean = float(x.mean())
    if x.size < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + confidence / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return mean, mean - half, mean + half


def listening_results(store: ListeningStore, campaign: str, exclude_failed: bool = True) -> dict[str, Any]:
    """The campaign's numbers, on the test trials (attention checks left out), without the raters
    who failed an attention check unless `exclude_failed` is False."""
    from scipy.stats import binomtest  # lazy: only the export's numbers need scipy, serving the test does not

    trials = {t["trial_id"]: t for t in store.trials(campaign)}
    if not trials:
        raise AnnotationError(f"no listening campaign named {campaign!r} in {store.path}")
    mode = next(iter(trials.values()))["mode"]
    by_rater: dict[str, dict[int, int]] = {}
    for a in store.answers(campaign):
        by_rater.setdefault(a["rater"], {})[a["trial_id"]] = a["answer"]
    flagged = {r: why for r, answers in by_rater.items() if (why := _attention(trials, answers, mode))}
    kept = {r: a for r, a in by_rater.items() if not (exclude_failed and r in flagged)}
    result: dict[str, Any] = {
        "campaign": campaign,
        "mode": mode,
        "raters": sorted(by_rater),
        "raters_kept": sorted(kept),
        "failed_attention": flagged,
        "test_trials": sum(t["kind"] == "test" for t in trials.values()),
        "models": {},
    }
    tests = {i: t for i, t in trials.items() if t["kind"] == "test"}
    if mode == "ab":
        models = sorted({c["model"] for t in tests.values() for c in t["clips"]})
        wins = {m: 0 for m in models}
        total = 0
        for answers in kept.values():
            for i, answer in answers.items():
                if i in tests:
                    wins[tests[i]["clips"][answer]["model"]] += 1
                    total += 1
        for m in models:
            ci = binomtest(wins[m], total).proportion_ci(0.95, method="exact") if total else None
            result["models"][m] = {
                "ab_win_rate": wins[m] / total if total else float("nan"),
                "ab_wins": wins[m],
                "ab_trials": total,
                "ab_win_rate_lo": ci.low if ci else float("nan"),
                "ab_win_rate_hi": ci.high if ci else float("nan"),
            }
        return result
    key = mode  # "mos_q" or "mos_f"
    scores: dict[str, list[int]] = {}
    for answers in kept.values():
        for i, answer in answers.items():
            if i in tests:
                scores.setdefault(tests[i]["clips"][0]["model"], []).append(answer)
    for m, values in sorted(scores.items()):
        mean, lo, hi = t_interval(values)
        result["models"][m] = {key: mean, f"{key}_lo": lo, f"{key}_hi": hi, f"{key}_ratings": len(values)}
    raters = sorted(kept)
    matrix = np.full((len(raters), len(tests)), np.nan)
    columns = {i: j for j, i in enumerate(sorted(tests))}
    for r, rater in enumerate(raters):
        for i, answer in kept[rater].items():
            if i in columns:
                matrix[r, columns[i]] = answer
    result["krippendorff_alpha"] = krippendorff_alpha(matrix)
    return result


def krippendorff_alpha(matrix: np.ndarray) -> float | None:
    """Ordinal Krippendorff's alpha of a raters x items matrix (NaN: not rated); None when there
    are not two ratings of any item or only one value occurs."""

    pairable = np.sum(np.isfinite(matrix), axis=0) >= 2
    values = matrix[np.isfinite(matrix)]
    if matrix.shape[0] < 2 or not pairable.any() or np.unique(values).size < 2:
        return None
    return float(krippendorff.alpha(reliability_data=matrix, level_of_measurement="ordinal", value_domain=[1, 2, 3, 4, 5]))


def export_results(store: ListeningStore, campaign: str, eval_dir: str | Path) -> Path:
    """`eval_dir/listening/<campaign>.json` and `.md`, a section in `eval_dir/report.md`, the
    numbers merged into `eval_dir/metrics.json` (per model, where the aligned model's card reads
    them) and the trials and answers as a datasets folder (`save_to_disk`) for `push_to_hub`."""
    import datasets  # lazy: only the export needs `datasets`, serving the test does not

    eval_dir = Path(eval_dir)
    results = listening_results(store, campaign)
    out = eval_dir / "listening"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / f"{campaign}.json", results)
    lines = [
        f"## Listening test: {campaign}",
        "",
        f"{results['mode']}; {results['test_trials']} test trials; raters {len(results['raters_kept'])} of {len(results['raters'])} kept "
        f"({len(results['failed_attention'])} failed an attention check).",
        "",
    ]
    for model, numbers in results["models"].items():
        if results["mode"] == "ab":
            lines.append(
                f"- {model}: wins {numbers['ab_wins']} of {numbers['ab_trials']} = {100 * numbers['ab_win_rate']:.1f}% "
                f"[{100 * numbers['ab_win_rate_lo']:.1f}, {100 * numbers['ab_win_rate_hi']:.1f}] (95% Clopper-Pearson)"
            )
        else:
            k = results["mode"]
            lines.append(
                f"- {model}: {k.upper().replace('_', '-')} {numbers[k]:.2f} [{numbers[k + '_lo']:.2f}, {numbers[k + '_hi']:.2f}] "
                f"(95% t-interval, {numbers[k + '_ratings']} ratings)"
            )
    if results.get("krippendorff_alpha") is not None:
        lines.append(f"- Krippendorff's alpha (ordinal): {results['krippendorff_alpha']:.3f}")
    atomic_write_text(out / f"{campaign}.md", "\n".join(lines) + "\n")
    report = eval_dir / "report.md"
    if report.is_file():  # the section replaces this campaign's previous one, or is appended
        begin, end = f"<!-- listening {campaign} -->", f"<!-- /listening {campaign} -->"
        text = report.read_text(encoding="utf-8")
        section = f"{begin}\n" + "\n".join(lines) + f"\n{end}"
        if begin in text and end in text:
            text = text[: text.index(begin)] + section + text[text.index(end) + len(end) :]
        else:
            text = text.rstrip("\n") + "\n\n" + section + "\n"
        atomic_write_text(report, text)
    metrics_file = eval_dir / "metrics.json"
    if metrics_file.is_file():
        data = json.loads(metrics_file.read_text(encoding="utf-8"))
        for model, numbers in results["models"].items():
            if isinstance(data.get(model), dict):
                data[model].update({k: v for k, v in numbers.items() if isinstance(v, (int, float))})
        data.setdefault("listening", {})[campaign] = results
        atomic_write_json(metrics_file, data)
    trials = {t["trial_id"]: t for t in store.trials(campaign)}
    answers = store.answers(campaign)
    table = {
        "trial_id": [a["trial_id"] for a in answers],
        "rater": [a["rater"] for a in answers],
        "answer": [a["answer"] for a in answers],
        "kind": [trials[a["trial_id"]]["kind"] for a in answers],
        "caption": [trials[a["trial_id"]]["caption"] for a in answers],
        "models_shown": [[c["model"] for c in trials[a["trial_id"]]["clips"]] for a in answers],
        "mode": [results["mode"]] * len(answers),
    }
    datasets.Dataset.from_dict(table).save_to_disk(str(out / f"{campaign}_dataset"))
    return out / f"{campaign}.json"


QUESTIONS = {
    "mos_q": "How good is the **audio quality** of this clip? 1 bad, 2 poor, 3 fair, 4 good, 5 excellent. (Ignore what it depicts.)",
    "mos_f": "How **faithfully** does this clip match the caption (every event, in the stated order)? 1 not at all ... 5 completely.",
    "ab": "Which clip matches the caption **better** (every event, in the stated order)? Listen to both.",
}


def build_listening_app(store: ListeningStore, campaign: str, eval_dir: str | Path):
    """The blinded test as a Gradio app. Clips are sent as audio data, never as file paths, so
    neither a player label nor a URL names the model; only files inside `eval_dir` are read."""
    import gradio as gr  # lazy: only serving the test needs gradio, the export does not

    root = Path(eval_dir).resolve()
    trials = store.trials(campaign)
    if not trials:
        raise AnnotationError(f"no listening campaign named {campaign!r} in {store.path}")
    mode = trials[0]["mode"]

    def audio(clip: dict[str, Any]):
        path = (root / clip["file"]).resolve()
        if not path.is_relative_to(root):
            raise AnnotationError(f"{clip['file']!r} resolves outside {root}; not served")
        wav, sr = load_audio(path)
        return sr, (np.clip(wav, -1.0, 1.0) * 32767).astype(np.int16)  # 16-bit PCM, as the browser gets it anyway

    def progress(rater: str) -> str:
        done = sum(a["rater"] == rater for a in store.answers(campaign))
        return f"**{rater}**: {done} of {len(trials)} trials answered."

    def show(rater: str, note: str = "") -> tuple:
        trial = store.next_trial(campaign, rater)
        if trial is None:
            return -1, "### Thank you: no trials left.", None, None, progress(rater), note
        caption = "" if mode == "mos_q" else f"### {trial['caption']}"
        a = audio(trial["clips"][0])
        b = audio(trial["clips"][1]) if len(trial["clips"]) > 1 else None
        return trial["trial_id"], caption, a, b, progress(rater), note

    def start(name: str) -> tuple:
        rater = " ".join(str(name or "").split())
        if not rater:
            return -1, "", None, None, "", "Enter your name, then press Start."
        return show(rater)

    def make_answer(value: int):
        def answer(name: str, trial_id: float) -> tuple:
            rater = " ".join(str(name or "").split())
            if not rater:
                return -1, "", None, None, "", "Enter your name, then press Start."
            note = ""
            if trial_id is not None and int(trial_id) >= 0:
                try:
                    store.add_answer(campaign, int(trial_id), rater, value)
                except AnnotationError as exc:
                    note = str(exc)
            return show(rater, note)

        return answer

    with gr.Blocks(title="Listening test") as app:
        gr.Markdown(f"## Listening test\n{QUESTIONS[mode]}")
        with gr.Row():
            name_box = gr.Textbox(label="Your name", scale=3, elem_id="baton-listen-rater")
            start_button = gr.Button("Start", variant="primary", scale=1, elem_id="baton-listen-start")
        trial_box = gr.Number(value=-1, visible=False, elem_id="baton-listen-trial")
        caption_md = gr.Markdown(elem_id="baton-listen-caption")
        with gr.Row():
            player_a = gr.Audio(label="A" if mode == "ab" else "Clip", type="numpy", interactive=False, elem_id="baton-listen-a")
            player_b = gr.Audio(label="B", type="numpy", interactive=False, visible=mode == "ab", elem_id="baton-listen-b")
        choices = [(0, "A is better"), (1, "B is better")] if mode == "ab" else [(k, str(k)) for k in range(1, 6)]
        with gr.Row():
            buttons = [(gr.Button(label, elem_id=f"baton-listen-answer-{value}"), value) for value, label in choices]
        progress_md = gr.Markdown(elem_id="baton-listen-progress")
        status_md = gr.Markdown(elem_id="baton-listen-status")
        outputs = [trial_box, caption_md, player_a, player_b, progress_md, status_md]
        start_button.click(start, [name_box], outputs, api_name="start")
        for button, value in buttons:
            button.click(make_answer(value), [name_box, trial_box], outputs, api_name=f"answer_{value}", trigger_mode="once")
    app.listening_store = store
    return app
