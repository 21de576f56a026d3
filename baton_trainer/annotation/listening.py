"""A blinded listening test over the evaluation's clips: MOS-Q, MOS-F and A/B preference.

    campaign = build_campaign(store, "RUN/eval", "ab", models=["base", "aligned"], seed=0)
    app = build_listening_app(store, campaign, "RUN/eval", logins=True)   # several raters at once
    results = listening_results(store, campaign)                 # MOS, win rates, alpha

The BATON paper ran MOS-Q (audio quality) and MOS-F (faithfulness to the caption) on 5-point
scales with 40 raters. Here:

- Modes: `mos_q` (one clip, its quality; the caption is not shown), `mos_f` (one clip and its
  caption, how faithful), `ab` (one caption, the two models' clips of the same seed, which matches
  it better; forced choice).
- Blinding: raters never see a model name, a file name or a trial id. Trials are stored in a
  shuffled order (attention checks at random places), the A/B side of each model is drawn per
  trial, and each rater hears the trials in an order of their own, seeded by a secret salt. Every
  stimulus is served at one sample rate, padded to its caption's longest clip and normalised to
  one integrated loudness (`make_stimuli`), so neither the header nor the level names the model.
- Answers bound to what was shown: the browser gets an opaque token per trial (`issue`), and an
  answer counts only with a token the server issued to that rater, once (`answer`); with a users
  file the login name is the rater. The time from showing to answering is stored, and answers
  sooner than the stimulus lasts are flagged and left out of the numbers.
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
import secrets
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import krippendorff
import numpy as np
import soundfile

from ..atomic import atomic_write_json, atomic_write_text
from ..audio import integrated_loudness, load_audio, save_wav
from ..generations import read_generations
from .store import AnnotationError, AnnotationStore, _clean_annotator, _now, add_missing_columns

MODES = ("mos_q", "mos_f", "ab")
BAD_CLIP = "attention_noise.wav"
TARGET_LUFS = -23.0  # EBU R 128's programme loudness; lowered for a campaign whose peaks would not fit under the ceiling
PEAK_CEILING_DBFS = -1.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS listening_campaigns (
    campaign TEXT PRIMARY KEY,
    salt TEXT NOT NULL,               -- seeds each rater's order; never leaves the server
    stimuli TEXT NOT NULL             -- JSON: how the stimuli were made (sample rate, loudness, method)
);
CREATE TABLE IF NOT EXISTS listening_trials (
    campaign TEXT NOT NULL,
    trial_id INTEGER NOT NULL,        -- in a shuffled order: says nothing of model or kind
    mode TEXT NOT NULL,
    caption TEXT NOT NULL,
    caption_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('test', 'repeat', 'bad')),
    repeat_of INTEGER,
    clips TEXT NOT NULL,              -- JSON list of {"model", "file", "stimulus"} in the order shown (A, B)
    duration_s REAL,                  -- length of each stimulus: an answer sooner than this is flagged
    PRIMARY KEY (campaign, trial_id)
);
CREATE TABLE IF NOT EXISTS listening_tokens (   -- what the server showed to whom: the only handle a browser gets
    token TEXT PRIMARY KEY,
    campaign TEXT NOT NULL,
    trial_id INTEGER NOT NULL,
    rater TEXT NOT NULL,
    issued_at REAL NOT NULL,
    answered_at REAL
);
CREATE TABLE IF NOT EXISTS listening_answers (
    campaign TEXT NOT NULL,
    trial_id INTEGER NOT NULL,
    rater TEXT NOT NULL,
    answer INTEGER NOT NULL,          -- 1-5 for MOS, 0 (A) or 1 (B) for A/B
    created_at TEXT NOT NULL,
    seconds REAL,                     -- from the trial being shown to this answer
    UNIQUE (campaign, trial_id, rater)
);
"""
_ADDED_COLUMNS = {"listening_trials": {"duration_s": "REAL"}, "listening_answers": {"seconds": "REAL"}}


class ListeningStore(AnnotationStore):
    """The annotation store with the listening test's tables beside the ratings."""

    def __init__(self, path: str | Path, **kwargs: Any):
        super().__init__(path, **kwargs)
        conn = self._conn()
        conn.executescript(_SCHEMA)
        add_missing_columns(conn, _ADDED_COLUMNS)

    def trials(self, campaign: str) -> list[dict[str, Any]]:
        rows = self._conn().execute("SELECT * FROM listening_trials WHERE campaign = ? ORDER BY trial_id", (campaign,)).fetchall()
        return [{**dict(r), "clips": json.loads(r["clips"])} for r in rows]

    def campaign_info(self, campaign: str) -> dict[str, Any] | None:
        row = self._conn().execute("SELECT * FROM listening_campaigns WHERE campaign = ?", (campaign,)).fetchone()
        return None if row is None else {"salt": row["salt"], "stimuli": json.loads(row["stimuli"])}

    def answers(self, campaign: str) -> list[dict[str, Any]]:
        rows = (
            self._conn()
            .execute(
                """SELECT a.*, (a.seconds IS NOT NULL AND t.duration_s IS NOT NULL AND a.seconds < t.duration_s) AS fast
               FROM listening_answers a JOIN listening_trials t ON t.campaign = a.campaign AND t.trial_id = a.trial_id
               WHERE a.campaign = ? ORDER BY a.rowid""",
                (campaign,),
            )
            .fetchall()
        )
        return [{**dict(r), "fast": bool(r["fast"])} for r in rows]

    def _order(self, campaign: str, rater: str, trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
        info = self.campaign_info(campaign)
        if info is None:
            raise AnnotationError(f"no listening campaign named {campaign!r}")
        order = list(trials)
        random.Random(f"{info['salt']}\0{rater}").shuffle(order)  # each rater's own order, unguessable without the salt
        return order

    def issue(self, campaign: str, rater: str) -> dict[str, Any] | None:
        """Show `rater` their next unanswered trial: `{"token", "trial"}`, or None when none is left.

        The token is the only handle the browser gets; `answer` accepts it once, from this rater.
        Asking again before answering returns the same trial and token (a reloaded page)."""
        rater = _clean_annotator(rater)
        trials = self.trials(campaign)
        order = self._order(campaign, rater, trials)
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            done = {r[0] for r in conn.execute("SELECT trial_id FROM listening_answers WHERE campaign = ? AND rater = ?", (campaign, rater))}
            trial = next((t for t in order if t["trial_id"] not in done), None)
            token = None
            if trial is not None:
                row = conn.execute(
                    "SELECT token FROM listening_tokens WHERE campaign = ? AND rater = ? AND trial_id = ? AND answered_at IS NULL",
                    (campaign, rater, trial["trial_id"]),
                ).fetchone()
                token = row[0] if row else secrets.token_urlsafe(18)
                if row is None:
                    conn.execute("INSERT INTO listening_tokens VALUES (?, ?, ?, ?, ?, NULL)", (token, campaign, trial["trial_id"], rater, time.time()))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return None if trial is None else {"token": token, "trial": trial}

    def answer(self, campaign: str, token: str, rater: str, answer: int) -> int:
        """Store `rater`'s answer to the trial behind `token`; returns the trial id. Refused unless
        the server issued that token to this rater and it has not been answered yet."""
        rater = _clean_annotator(rater)
        if isinstance(answer, bool) or not isinstance(answer, (int, np.integer)):
            raise AnnotationError(f"an answer is a whole number, got {answer!r}")
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute("SELECT * FROM listening_tokens WHERE token = ? AND campaign = ?", (str(token), campaign)).fetchone()
            if row is None or row["rater"] != rater:
                raise AnnotationError("this answer is not for a trial the server showed you; press Start to get yours")
            if row["answered_at"] is not None:
                raise AnnotationError("you have already answered this trial; the first answer is kept")
            mode = conn.execute("SELECT mode FROM listening_trials WHERE campaign = ? AND trial_id = ?", (campaign, row["trial_id"])).fetchone()["mode"]
            allowed = (0, 1) if mode == "ab" else (1, 2, 3, 4, 5)
            if int(answer) not in allowed:
                raise AnnotationError(f"the answer must be one of {allowed}, got {answer}")
            now = time.time()
            try:
                conn.execute(
                    "INSERT INTO listening_answers VALUES (?, ?, ?, ?, ?, ?)",
                    (campaign, row["trial_id"], rater, int(answer), _now(), max(0.0, now - row["issued_at"])),
                )
            except Exception as exc:  # sqlite3.IntegrityError: answered under an earlier token
                if "UNIQUE" in str(exc):
                    raise AnnotationError("you have already answered this trial; the first answer is kept") from None
                raise
            conn.execute("UPDATE listening_tokens SET answered_at = ? WHERE token = ?", (now, str(token)))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return int(row["trial_id"])


def make_stimuli(eval_dir: Path, files: dict[str, str], out: Path) -> tuple[dict[str, tuple[str, float]], dict[str, Any]]:
    """Write every clip of a campaign as a stimulus no listener can tell apart by header or level:
    one sample rate (the highest among the clips), silence padded to the longest clip of its group
    (`files` maps each file, relative to `eval_dir`, to its group: the caption), and one integrated
    loudness (ITU-R BS.1770-4 through pyloudnorm) with every peak below PEAK_CEILING_DBFS, written
    as 16-bit PCM under random names. Returns {file: (stimulus relative to eval_dir, seconds)} and
    how it was done."""
    import pyloudnorm  # lazy: only making a campaign's stimuli needs it

    # Three passes over the files (lengths, levels, writing) rather than all clips in memory: a
    # campaign over the whole evaluation set can hold thousands of clips.
    sr = max(soundfile.info(str(eval_dir / f)).samplerate for f in files)
    longest: dict[str, int] = {}
    for f, group in files.items():
        longest[group] = max(longest.get(group, 0), load_audio(eval_dir / f, target_sr=sr)[0].shape[0])

    def padded(f: str) -> np.ndarray:
        wav = load_audio(eval_dir / f, target_sr=sr)[0].astype(np.float64)
        return np.pad(wav, (0, longest[files[f]] - wav.shape[0]))

    meter = pyloudnorm.Meter(sr)
    loudness, peaks = {}, {}
    for f in files:
        wav = padded(f)
        loudness[f] = integrated_loudness(wav, sr, meter)
        peaks[f] = 20 * math.log10(max(float(np.abs(wav).max()), 1e-9))
    audible = [f for f in files if math.isfinite(loudness[f])]
    if not audible:
        raise AnnotationError(f"every clip of the campaign in {eval_dir} is silent: nothing to listen to")
    target = min([TARGET_LUFS] + [loudness[f] + PEAK_CEILING_DBFS - peaks[f] for f in audible])
    out.mkdir(parents=True, exist_ok=True)
    made: dict[str, tuple[str, float]] = {}
    after = []
    for f in files:
        y = padded(f) * 10 ** ((target - loudness[f] if f in audible else 0.0) / 20)
        path = out / f"{secrets.token_hex(8)}.wav"
        pcm = np.round(np.clip(y, -1, 1) * 32767).astype(np.int16)
        soundfile.write(str(path), pcm, sr, subtype="PCM_16")
        made[f] = (path.relative_to(eval_dir).as_posix(), y.shape[0] / sr)
        if f in audible:
            after.append(integrated_loudness(pcm / 32767.0, sr, meter))
    info = {
        "sample_rate": sr,
        "target_lufs": round(target, 2),
        "peak_ceiling_dbfs": PEAK_CEILING_DBFS,
        "loudness_after_lufs": [round(min(after), 2), round(max(after), 2)],
        "silent_clips": len(files) - len(audible),
        "method": (
            f"every stimulus resampled to {sr} Hz, padded with silence to the longest clip of its caption, and scaled to "
            f"{target:.1f} LUFS integrated loudness (ITU-R BS.1770-4, pyloudnorm; {TARGET_LUFS:.0f} LUFS unless a clip's "
            f"peak would then pass {PEAK_CEILING_DBFS:.0f} dBFS), written as 16-bit PCM under random names"
        ),
    }
    return made, info


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
    for every model), plus one repeated and one known-bad trial, stored in a shuffled order, with
    their stimuli (`make_stimuli`) under `eval_dir/listening/<campaign>_stimuli/`. Idempotent: an
    existing campaign of that name is kept as it is. Returns the campaign name."""

    if mode not in MODES:
        raise AnnotationError(f"mode must be one of {list(MODES)}, got {mode!r}")
    models = list(models)
    if mode == "ab" and len(models) != 2:
        raise AnnotationError(f"an A/B campaign compares exactly 2 models, got {models}")
    name = name or f"{mode}_{'_vs_'.join(models)}_seed{seed}"
    if store.trials(name):
        if store.campaign_info(name) is None:
            raise AnnotationError(f"campaign {name!r} was made by an older version without blind stimuli: start a new one (another --seed)")
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
    # Stimuli: one rate, one loudness, padded per caption, under random names.
    groups = {c["file"]: t["caption_id"] for t in trials for c in t["clips"]}
    folder = eval_dir / "listening" / f"{name}_stimuli"
    shutil.rmtree(folder, ignore_errors=True)  # left by a build killed before its trials were stored
    stimuli, info = make_stimuli(eval_dir, groups, folder)
    for t in trials:
        t["clips"] = [{**c, "stimulus": stimuli[c["file"]][0]} for c in t["clips"]]
        t["duration_s"] = max(stimuli[c["file"]][1] for c in t["clips"])
    # Stored in a shuffled order, so a trial id says nothing of the model or of an attention check.
    order = list(range(len(trials)))
    rng.shuffle(order)
    new_id = {old: new for new, old in enumerate(order)}
    conn = store._conn()
    conn.execute("BEGIN IMMEDIATE")
    try:
        for old in order:
            t = trials[old]
            repeat_of = new_id[t["repeat_of"]] if t.get("repeat_of") is not None else None
            conn.execute(
                "INSERT INTO listening_trials VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (name, new_id[old], mode, t["caption"], t["caption_id"], t["kind"], repeat_of, json.dumps(t["clips"]), t["duration_s"]),
            )
        conn.execute("INSERT INTO listening_campaigns VALUES (?, ?, ?)", (name, secrets.token_hex(16), json.dumps(info)))
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


def listening_results(store: ListeningStore, campaign: str, exclude_failed: bool = True, exclude_fast: bool = True) -> dict[str, Any]:
    """The campaign's numbers, on the test trials (attention checks left out), without the raters
    who failed an attention check unless `exclude_failed` is False, and without answers given
    sooner than the stimulus lasts (flagged per rater) unless `exclude_fast` is False."""
    from scipy.stats import binomtest  # lazy: only the export's numbers need scipy, serving the test does not

    trials = {t["trial_id"]: t for t in store.trials(campaign)}
    if not trials:
        raise AnnotationError(f"no listening campaign named {campaign!r} in {store.path}")
    mode = next(iter(trials.values()))["mode"]
    given = store.answers(campaign)
    by_rater: dict[str, dict[int, int]] = {}
    fast: dict[str, int] = {}
    for a in given:
        by_rater.setdefault(a["rater"], {})[a["trial_id"]] = a["answer"]
        fast[a["rater"]] = fast.get(a["rater"], 0) + a["fast"]
    flagged = {r: why for r, answers in by_rater.items() if (why := _attention(trials, answers, mode))}
    kept = {r: a for r, a in by_rater.items() if not (exclude_failed and r in flagged)}
    if exclude_fast:
        slow = {(a["rater"], a["trial_id"]) for a in given if not a["fast"]}
        kept = {r: v for r, a in kept.items() if (v := {i: x for i, x in a.items() if (r, i) in slow})}
    info = store.campaign_info(campaign)
    result: dict[str, Any] = {
        "campaign": campaign,
        "mode": mode,
        "raters": sorted(by_rater),
        "raters_kept": sorted(kept),
        "failed_attention": flagged,
        "fast_answers": {r: n for r, n in sorted(fast.items()) if n},
        "fast_answers_excluded": exclude_fast,
        "test_trials": sum(t["kind"] == "test" for t in trials.values()),
        "stimuli": info["stimuli"] if info else None,
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
        f"({len(results['failed_attention'])} failed an attention check); "
        f"{sum(results['fast_answers'].values())} answer(s) given sooner than the clip lasts"
        + (" left out." if results["fast_answers_excluded"] else " kept."),
        "",
    ]
    if results.get("stimuli"):
        lines += [f"Stimuli: {results['stimuli']['method']}.", ""]
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
        "seconds": [a["seconds"] for a in answers],
        "fast": [a["fast"] for a in answers],
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


def build_listening_app(store: ListeningStore, campaign: str, eval_dir: str | Path, logins: bool = False):
    """The blinded test as a Gradio app. A browser gets, per trial, an opaque token and the
    stimuli under names made from their content (never a server path, a trial id or a model name); an answer counts only
    with the token the server issued to that rater (`ListeningStore.issue` / `answer`). With
    `logins` the login name is the rater, whatever name a client sends."""
    # lazy: only serving the test needs gradio (which .app imports), the export does not
    import gradio as gr

    from ..serving import OneLineErrorBlocks, ServedFiles, client_message, one_line_errors
    from .app import rater_name

    root = Path(eval_dir).resolve()
    trials = store.trials(campaign)
    if not trials:
        raise AnnotationError(f"no listening campaign named {campaign!r} in {store.path}")
    mode = trials[0]["mode"]
    ask = "Log in, then press Start." if logins else "Enter your name, then press Start."
    served = ServedFiles()

    def blank(message: str) -> tuple:
        return "", "", None, None, "", message

    def audio(clip: dict[str, Any]):
        path = (root / clip["stimulus"]).resolve()
        if not path.is_relative_to(root):
            raise AnnotationError(f"stimulus {clip['stimulus']!r} resolves outside the evaluation folder; not served")
        wav, sr = soundfile.read(str(path), dtype="int16")  # already 16-bit PCM at the campaign's rate and loudness
        return served.audio(wav, sr)

    def progress(rater: str) -> str:
        done = sum(a["rater"] == rater for a in store.answers(campaign))
        return f"**{rater}**: {done} of {len(trials)} trials answered."

    def show(rater: str, note: str = "") -> tuple:
        issued = store.issue(campaign, rater)
        if issued is None:
            return "", "### Thank you: no trials left.", None, None, progress(rater), note
        trial = issued["trial"]
        caption = "" if mode == "mos_q" else f"### {trial['caption']}"
        a = audio(trial["clips"][0])
        b = audio(trial["clips"][1]) if len(trial["clips"]) > 1 else None
        return issued["token"], caption, a, b, progress(rater), note

    def guarded(handler):
        failure = "Something went wrong on the server; your answers so far are saved. Press Start to go on."
        return one_line_errors(handler, blank, AnnotationError, failure)

    def start(name: str, request: gr.Request = None) -> tuple:
        rater = rater_name(name, request, logins)
        return show(rater) if rater else blank(ask)

    def make_answer(value: int):
        def answer(name: str, token: str, request: gr.Request = None) -> tuple:
            rater = rater_name(name, request, logins)
            if not rater:
                return blank(ask)
            note = ""
            if isinstance(token, str) and token:
                try:
                    store.answer(campaign, token, rater, value)
                except AnnotationError as exc:
                    note = client_message(exc)
            else:
                note = "No trial to answer: here is your next one."
            return show(rater, note)

        return answer

    with OneLineErrorBlocks(title="Listening test") as app:
        gr.Markdown(f"## Listening test\n{QUESTIONS[mode]}")
        with gr.Row():
            name_box = gr.Textbox(label="Your name", scale=3, interactive=not logins, info="logged in" if logins else None, elem_id="baton-listen-rater")
            start_button = gr.Button("Start", variant="primary", scale=1, elem_id="baton-listen-start")
        token_box = gr.Textbox(value="", visible=False, elem_id="baton-listen-token")
        caption_md = gr.Markdown(elem_id="baton-listen-caption")
        with gr.Row():
            player_a = gr.Audio(label="A" if mode == "ab" else "Clip", type="filepath", interactive=False, elem_id="baton-listen-a")
            player_b = gr.Audio(label="B", type="filepath", interactive=False, visible=mode == "ab", elem_id="baton-listen-b")
        choices = [(0, "A is better"), (1, "B is better")] if mode == "ab" else [(k, str(k)) for k in range(1, 6)]
        with gr.Row():
            buttons = [(gr.Button(label, elem_id=f"baton-listen-answer-{value}"), value) for value, label in choices]
        progress_md = gr.Markdown(elem_id="baton-listen-progress")
        status_md = gr.Markdown(elem_id="baton-listen-status")
        outputs = [token_box, caption_md, player_a, player_b, progress_md, status_md]
        start_button.click(guarded(start), [name_box], outputs, api_name="start")
        for button, value in buttons:
            button.click(guarded(make_answer(value)), [name_box, token_box], outputs, api_name=f"answer_{value}", trigger_mode="once")
        if logins:
            app.load(lambda request=None: getattr(request, "username", "") or "", None, [name_box], api_name=False)
    app.listening_store = store
    return app
