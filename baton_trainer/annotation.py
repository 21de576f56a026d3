"""Durable store of human ratings (SQLite) and the `export` stage (store -> preference dataset).

    store = AnnotationStore("RUN/annotations.sqlite")
    store.register_clips("RUN/generations")          # reads generations/metadata.jsonl
    clip = store.next_clip_for("alice", ratings_per_clip=3)
    store.add_rating(clip["clip_id"], "alice", ALIGNED)   # returns once the rating is on disk
    store.progress("alice", ratings_per_clip=3)

Durability: the database runs in WAL mode with `synchronous=FULL`, so every commit fsyncs the
write-ahead log before `add_rating` returns: an acknowledged rating survives a killed process and a
power cut. (WAL with `synchronous=NORMAL` would survive a killed process but could lose the last
commits on power loss; a rating is a person's time, and a click is rare, so FULL costs nothing.)
Each rating is its own transaction; `UNIQUE(clip_id, annotator)` makes a second rating of the same
clip by the same person an error instead of a silent double count.

Threads: each thread gets its own connection (SQLite connections must not be shared across
threads); writers are serialised by SQLite's lock with a generous busy timeout.

Labels: 1 aligned, 0 not aligned, -2 skipped (-1 is kept for "unrated" in preference datasets).
A skip counts as "seen" (the annotator is not shown the clip again) but not as a rating.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import json
import math
import sqlite3
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal

ALIGNED = 1
NOT_ALIGNED = 0
SKIP = -2
LABELS = {ALIGNED: "aligned", NOT_ALIGNED: "not aligned", SKIP: "skip"}
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS clips (
    clip_id TEXT PRIMARY KEY,
    file_name TEXT NOT NULL,          -- relative to the generations folder
    caption TEXT NOT NULL,
    task TEXT NOT NULL,
    labels TEXT NOT NULL,             -- JSON list, intended order
    caption_id INTEGER NOT NULL,
    clip_index INTEGER NOT NULL,
    error TEXT                        -- set when the clip's audio cannot be played; such clips are not handed out
);
CREATE TABLE IF NOT EXISTS ratings (
    rating_id INTEGER PRIMARY KEY AUTOINCREMENT,
    clip_id TEXT NOT NULL REFERENCES clips(clip_id),
    annotator TEXT NOT NULL,
    label INTEGER NOT NULL CHECK (label IN (1, 0, -2)),
    created_at TEXT NOT NULL,
    UNIQUE (clip_id, annotator)
);
CREATE INDEX IF NOT EXISTS ratings_by_annotator ON ratings(annotator);
CREATE TABLE IF NOT EXISTS leases (   -- who was shown which clip, so two people rating at once get different clips
    clip_id TEXT NOT NULL,
    annotator TEXT NOT NULL,
    leased_at REAL NOT NULL,
    PRIMARY KEY (clip_id, annotator)
);
"""


class AnnotationError(ValueError):
    """A rating, clip or store that cannot be used; the message names it."""


class DuplicateRatingError(AnnotationError):
    """The annotator has already rated (or skipped) this clip."""


class UnknownClipError(AnnotationError):
    """No clip with this id is registered."""


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def _clean_annotator(annotator: Any) -> str:
    name = " ".join(str(annotator or "").split())
    if not name:
        raise AnnotationError("annotator name is empty: enter a name before rating")
    if len(name) > 100:
        raise AnnotationError(f"annotator name is longer than 100 characters: {name[:20]!r}...")
    return name


class AnnotationStore:
    """Ratings of generated clips, in an SQLite file (see the module docstring for guarantees).

    `lease_seconds`: a clip shown to someone counts as "being rated" for this long, so that people
    rating at the same time are handed different clips.
    """

    def __init__(self, path: str | Path, lease_seconds: float = 600.0, timeout: float = 60.0):
        self.path = Path(path)
        self.lease_seconds = float(lease_seconds)
        self.timeout = float(timeout)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._conn()
        try:
            conn.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise AnnotationError(f"{self.path}: not a usable annotation store ({exc})") from exc
        conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    # -- connections ---------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # isolation_level=None: autocommit; multi-statement writes use explicit BEGIN IMMEDIATE.
            conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            try:
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            except sqlite3.DatabaseError as exc:
                conn.close()
                raise AnnotationError(f"{self.path}: not a usable annotation store ({exc})") from exc
            if str(mode).lower() != "wal":
                raise AnnotationError(f"{self.path}: could not switch the database to WAL mode (got {mode!r})")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
            with self._connections_lock:
                self._connections.append(conn)
        return conn

    def close(self) -> None:
        """Close every connection this store opened (in any thread)."""
        with self._connections_lock:
            for conn in self._connections:
                try:
                    conn.close()
                except sqlite3.ProgrammingError:
                    pass
            self._connections.clear()
        self._local = threading.local()

    def __enter__(self) -> "AnnotationStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- meta ----------------------------------------------------------------------------------

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self._conn().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row["value"] if row else default

    def set_meta(self, key: str, value: str) -> None:
        self._conn().execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, str(value)))

    # -- clips ---------------------------------------------------------------------------------

    def register_clips(self, generations_dir: str | Path) -> int:
        """Add (or refresh) the clips listed in `generations_dir/metadata.jsonl`; returns how many.

        Re-registering is safe: ratings are kept, clip fields are updated, and a clip previously
        marked unplayable is handed out again (its file may have been fixed).
        """
        from .generate import GenerationError, read_generations

        try:
            generated = read_generations(generations_dir)
        except GenerationError as exc:
            raise AnnotationError(str(exc)) from None
        rows = [
            (
                str(row["clip_id"]), str(row["file_name"]), str(row["caption"]), str(row["task"]),
                json.dumps(list(row["labels"]), ensure_ascii=False), int(row["caption_id"]), int(row["clip_index"]),
            )
            for row in generated
        ]
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(
                """INSERT INTO clips(clip_id, file_name, caption, task, labels, caption_id, clip_index, error)
                   VALUES (?, ?, ?, ?, ?, ?, ?, NULL)
                   ON CONFLICT(clip_id) DO UPDATE SET file_name=excluded.file_name, caption=excluded.caption,
                       task=excluded.task, labels=excluded.labels, caption_id=excluded.caption_id,
                       clip_index=excluded.clip_index, error=NULL""",
                rows,
            )
            conn.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES ('generations_dir', ?)", (str(generations_dir.resolve()),)
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return len(rows)

    @staticmethod
    def _clip_dict(row: sqlite3.Row) -> dict[str, Any]:
        clip = dict(row)
        clip["labels"] = json.loads(clip["labels"])
        return clip

    def get_clip(self, clip_id: str) -> dict[str, Any]:
        row = self._conn().execute("SELECT * FROM clips WHERE clip_id = ?", (str(clip_id),)).fetchone()
        if row is None:
            raise UnknownClipError(f"{self.path}: no clip with id {clip_id!r}")
        return self._clip_dict(row)

    def clips(self) -> list[dict[str, Any]]:
        rows = self._conn().execute("SELECT * FROM clips ORDER BY caption_id, clip_index, clip_id").fetchall()
        return [self._clip_dict(r) for r in rows]

    def mark_clip_error(self, clip_id: str, message: str) -> None:
        """Record that a clip cannot be played; it is no longer handed out (until re-registered)."""
        self._conn().execute("UPDATE clips SET error = ? WHERE clip_id = ?", (str(message) or "error", str(clip_id)))

    # -- ratings -------------------------------------------------------------------------------

    def add_rating(self, clip_id: str, annotator: str, label: int) -> int:
        """Store one rating and return its id once it is committed to disk.

        `label`: 1 aligned, 0 not aligned, -2 skip. Raises DuplicateRatingError if this annotator
        already rated the clip, UnknownClipError for an unregistered clip.
        """
        annotator = _clean_annotator(annotator)
        if isinstance(label, bool) or label not in LABELS:
            raise AnnotationError(f"rating label must be 1 (aligned), 0 (not aligned) or -2 (skip), got {label!r}")
        conn = self._conn()
        try:
            cursor = conn.execute(
                "INSERT INTO ratings(clip_id, annotator, label, created_at) VALUES (?, ?, ?, ?)",
                (str(clip_id), annotator, int(label), _now()),
            )
        except sqlite3.IntegrityError as exc:
            message = str(exc)
            if "UNIQUE" in message:
                raise DuplicateRatingError(f"{annotator!r} has already rated clip {clip_id!r}") from None
            if "FOREIGN KEY" in message:
                raise UnknownClipError(f"{self.path}: no clip with id {clip_id!r}") from None
            raise
        conn.execute("DELETE FROM leases WHERE clip_id = ? AND annotator = ?", (str(clip_id), annotator))
        return int(cursor.lastrowid)

    def next_clip_for(self, annotator: str, ratings_per_clip: int = 1, lease: bool = True) -> dict[str, Any] | None:
        """The next clip this annotator should rate, or None when there is nothing left for them.

        Candidates: playable clips this annotator has neither rated nor skipped, with fewer than
        `ratings_per_clip` ratings (skips do not count). Fair order: clips with the fewest ratings
        plus others' live leases first (every clip gets a first rating before any gets a second),
        then by caption and clip index, so a person hears a caption's clips one after another. The
        clip is leased to the annotator (`lease_seconds`) so that others are handed different ones.
        """
        annotator = _clean_annotator(annotator)
        if ratings_per_clip < 1:
            raise AnnotationError(f"ratings_per_clip must be >= 1, got {ratings_per_clip}")
        now = time.time()
        conn = self._conn()
        row = conn.execute(
            """
            SELECT c.*,
                   (SELECT COUNT(*) FROM ratings r WHERE r.clip_id = c.clip_id AND r.label IN (0, 1)) AS n_ratings,
                   (SELECT COUNT(*) FROM leases l WHERE l.clip_id = c.clip_id AND l.annotator != :who
                        AND l.leased_at > :fresh) AS n_leases,
                   (SELECT COUNT(*) FROM leases l WHERE l.clip_id = c.clip_id AND l.annotator = :who
                        AND l.leased_at > :fresh) AS mine
            FROM clips c
            WHERE c.error IS NULL
              AND NOT EXISTS (SELECT 1 FROM ratings r WHERE r.clip_id = c.clip_id AND r.annotator = :who)
              AND (SELECT COUNT(*) FROM ratings r WHERE r.clip_id = c.clip_id AND r.label IN (0, 1)) < :n
            ORDER BY mine DESC, MIN(n_ratings + n_leases, :n) ASC, n_ratings DESC, c.caption_id, c.clip_index, c.clip_id
            LIMIT 1
            """,
            {"who": annotator, "n": int(ratings_per_clip), "fresh": now - self.lease_seconds},
        ).fetchone()
        if row is None:
            return None
        if lease:
            conn.execute(
                "INSERT OR REPLACE INTO leases(clip_id, annotator, leased_at) VALUES (?, ?, ?)",
                (row["clip_id"], annotator, now),
            )
        clip = self._clip_dict(row)
        for key in ("n_leases", "mine"):
            clip.pop(key, None)
        return clip

    def progress(self, annotator: str, ratings_per_clip: int = 1) -> dict[str, int | str]:
        """Counts for one annotator and the campaign: rated, skipped, left for them, clips complete."""
        annotator = _clean_annotator(annotator)
        conn = self._conn()
        mine = Counter(
            {r["label"]: r["n"] for r in conn.execute(
                "SELECT label, COUNT(*) AS n FROM ratings WHERE annotator = ? GROUP BY label", (annotator,)
            )}
        )
        counts = conn.execute(
            """
            SELECT COUNT(*) AS total,
                   SUM(CASE WHEN c.error IS NOT NULL THEN 1 ELSE 0 END) AS unplayable,
                   SUM(CASE WHEN c.error IS NULL AND n >= :n THEN 1 ELSE 0 END) AS complete,
                   SUM(CASE WHEN c.error IS NULL AND n < :n AND NOT EXISTS
                        (SELECT 1 FROM ratings r WHERE r.clip_id = c.clip_id AND r.annotator = :who) THEN 1 ELSE 0 END) AS left_for_me
            FROM (SELECT clips.*, (SELECT COUNT(*) FROM ratings r WHERE r.clip_id = clips.clip_id AND r.label IN (0, 1)) AS n
                  FROM clips) c
            """,
            {"n": int(ratings_per_clip), "who": annotator},
        ).fetchone()
        return {
            "annotator": annotator,
            "rated": mine[ALIGNED] + mine[NOT_ALIGNED],
            "aligned": mine[ALIGNED],
            "not_aligned": mine[NOT_ALIGNED],
            "skipped": mine[SKIP],
            "remaining": int(counts["left_for_me"] or 0),
            "total_clips": int(counts["total"] or 0),
            "clips_complete": int(counts["complete"] or 0),
            "unplayable_clips": int(counts["unplayable"] or 0),
            "ratings_per_clip": int(ratings_per_clip),
        }

    def ratings(self, include_skips: bool = True) -> list[dict[str, Any]]:
        """Every rating as a dict (rating_id, clip_id, annotator, label, created_at), oldest first."""
        query = "SELECT rating_id, clip_id, annotator, label, created_at FROM ratings"
        if not include_skips:
            query += " WHERE label IN (0, 1)"
        return [dict(r) for r in self._conn().execute(query + " ORDER BY rating_id")]


# ----------------------------------------------------------------------------------------------
# Agreement statistics


def fleiss_kappa(counts: Iterable[Iterable[int]]) -> float | None:
    """Fleiss' kappa from per-item category counts (items with >= 2 raters; raters may vary).

    Each item i has n_i >= 2 ratings; its agreement is P_i = (sum_j n_ij^2 - n_i) / (n_i (n_i - 1)).
    P_bar is their mean, P_e = sum_j p_j^2 with p_j the share of all ratings in category j, and
    kappa = (P_bar - P_e) / (1 - P_e). With a constant number of raters this is Fleiss (1971); with a
    varying number it is the usual extension. None when undefined (no items, or one category only).
    """
    items = [list(map(int, row)) for row in counts if sum(row) >= 2]
    if not items:
        return None
    totals = [0] * max(len(row) for row in items)
    agreements = []
    for row in items:
        n = sum(row)
        agreements.append((sum(c * c for c in row) - n) / (n * (n - 1)))
        for j, c in enumerate(row):
            totals[j] += c
    all_ratings = sum(totals)
    p_e = sum((t / all_ratings) ** 2 for t in totals)
    if math.isclose(p_e, 1.0):
        return None
    p_bar = sum(agreements) / len(agreements)
    return (p_bar - p_e) / (1.0 - p_e)


def cohen_kappa(first: list[int], second: list[int]) -> float | None:
    """Cohen's kappa of two raters over the same items; None when chance agreement is 1."""
    if len(first) != len(second):
        raise AnnotationError(f"cohen_kappa needs two equally long rating lists ({len(first)} != {len(second)})")
    if not first:
        return None
    n = len(first)
    categories = sorted(set(first) | set(second))
    p_o = sum(a == b for a, b in zip(first, second)) / n
    count_a, count_b = Counter(first), Counter(second)
    p_e = sum(count_a[c] * count_b[c] for c in categories) / (n * n)
    if math.isclose(p_e, 1.0):
        return None
    return (p_o - p_e) / (1.0 - p_e)


def agreement_statistics(ratings: list[dict[str, Any]]) -> dict[str, Any]:
    """Fleiss' kappa over clips with >= 2 ratings, Cohen's kappa per annotator pair, raw agreement."""
    by_clip: dict[str, dict[str, int]] = defaultdict(dict)
    skips = 0
    for r in ratings:
        if r["label"] == SKIP:
            skips += 1
            continue
        by_clip[r["clip_id"]][r["annotator"]] = int(r["label"])
    multi = {clip: votes for clip, votes in by_clip.items() if len(votes) >= 2}
    counts = [[sum(v == 0 for v in votes.values()), sum(v == 1 for v in votes.values())] for votes in multi.values()]
    unanimous = sum(1 for c in counts if min(c) == 0)
    annotators = sorted({a for votes in by_clip.values() for a in votes})
    pairs = []
    for a, b in itertools.combinations(annotators, 2):
        shared = [clip for clip, votes in by_clip.items() if a in votes and b in votes]
        if not shared:
            continue
        first = [by_clip[c][a] for c in shared]
        second = [by_clip[c][b] for c in shared]
        pairs.append(
            {
                "annotators": [a, b],
                "clips": len(shared),
                "cohen_kappa": cohen_kappa(first, second),
                "percent_agreement": sum(x == y for x, y in zip(first, second)) / len(shared),
            }
        )
    return {
        "clips_rated": len(by_clip),
        "ratings": sum(len(v) for v in by_clip.values()),
        "skips": skips,
        "annotators": annotators,
        "ratings_per_clip_histogram": {str(k): v for k, v in sorted(Counter(len(v) for v in by_clip.values()).items())},
        "clips_with_2plus_ratings": len(multi),
        "fleiss_kappa": fleiss_kappa(counts),
        "unanimous_fraction": (unanimous / len(multi)) if multi else None,
        "cohen_kappa_pairs": pairs,
    }


# ----------------------------------------------------------------------------------------------
# The export stage


@dataclass
class ExportConfig:
    run_dir: str = field(default="run", metadata={"help": "run folder: reads RUN/annotations.sqlite and RUN/generations/, writes RUN/feedback/"})
    store: str | None = field(default=None, metadata={"help": "annotation store; default RUN/annotations.sqlite"})
    generations_dir: str | None = field(default=None, metadata={"help": "folder the clips' file names are relative to; default RUN/generations"})
    out: str | None = field(default=None, metadata={"help": "output preference dataset folder; default RUN/feedback"})
    ties: Literal["drop", "positive", "negative"] = field(
        default="drop", metadata={"help": "a clip with as many 'aligned' as 'not aligned' votes: leave it out, or count it as 1 or 0"}
    )
    min_ratings: int = field(default=1, metadata={"help": "leave out clips with fewer (non-skip) ratings than this"})

    def __post_init__(self) -> None:
        if self.min_ratings < 1:
            raise AnnotationError(f"config key 'min_ratings' must be >= 1, got {self.min_ratings}")


def majority_vote(labels: list[int], ties: str = "drop") -> int | None:
    """1 or 0 by majority of non-skip labels; a tie follows `ties`; None when dropped or no votes."""
    votes = [label for label in labels if label in (ALIGNED, NOT_ALIGNED)]
    if not votes:
        return None
    positive = sum(votes)
    negative = len(votes) - positive
    if positive != negative:
        return ALIGNED if positive > negative else NOT_ALIGNED
    return {"drop": None, "positive": ALIGNED, "negative": NOT_ALIGNED}[ties]


def export_feedback(config: ExportConfig) -> Path:
    """Run the `export` stage: majority-voted human ratings -> RUN/feedback/ (a saved Dataset).

    One row per clip with at least `min_ratings` non-skip ratings (skips never reach training
    data); feedback and reward are the majority label; annotator lists the raters, comma-separated.
    Agreement statistics go to RUN/feedback_agreement.json and are printed.
    """
    from .audio import atomic_write_bytes
    from .data import PREFERENCE_FEATURES, build_dataset, save_dataset_atomic, validate_preference_dataset

    run_dir = Path(config.run_dir)
    store_path = Path(config.store) if config.store else run_dir / "annotations.sqlite"
    if not store_path.is_file():
        raise AnnotationError(f"{store_path}: annotation store not found (run the annotate stage first)")
    out = Path(config.out) if config.out else run_dir / "feedback"
    store = AnnotationStore(store_path)
    try:
        generations_dir = Path(
            config.generations_dir or store.get_meta("generations_dir") or run_dir / "generations"
        )
        if config.generations_dir is None and not generations_dir.is_dir():
            generations_dir = run_dir / "generations"
        clips = {c["clip_id"]: c for c in store.clips()}
        ratings = store.ratings()
    finally:
        store.close()

    by_clip: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in ratings:
        by_clip[r["clip_id"]].append(r)
    columns: dict[str, list[Any]] = {name: [] for name in PREFERENCE_FEATURES}
    ties = dropped_ties = too_few = 0
    root = generations_dir.resolve()
    for clip_id in sorted(by_clip, key=lambda c: (clips[c]["caption_id"], clips[c]["clip_index"], c)):
        clip = clips[clip_id]
        votes = [r for r in by_clip[clip_id] if r["label"] in (ALIGNED, NOT_ALIGNED)]
        if len(votes) < config.min_ratings:
            too_few += 1
            continue
        labels = [r["label"] for r in votes]
        if 2 * sum(labels) == len(labels):
            ties += 1
        feedback = majority_vote(labels, config.ties)
        if feedback is None:
            dropped_ties += 1
            continue
        path = (generations_dir / clip["file_name"]).resolve()
        if not path.is_relative_to(root):
            raise AnnotationError(f"clip {clip_id}: file {clip['file_name']!r} resolves outside {generations_dir}")
        if not path.is_file():
            raise AnnotationError(f"clip {clip_id}: rated audio file {path} not found")
        columns["caption"].append(clip["caption"])
        columns["audio"].append({"bytes": path.read_bytes(), "path": clip["file_name"]})
        columns["feedback"].append(feedback)
        columns["reward"].append(float(feedback))
        columns["source"].append("human")
        columns["task"].append(clip["task"])
        columns["labels"].append(clip["labels"])
        columns["caption_id"].append(clip["caption_id"])
        columns["clip_index"].append(clip["clip_index"])
        columns["annotator"].append(",".join(sorted(r["annotator"] for r in votes)))
    dataset = build_dataset(columns, PREFERENCE_FEATURES)  # builds audio without torchcodec
    validate_preference_dataset(dataset, name=str(out))
    save_dataset_atomic(dataset, out)  # also writes an empty export loadably

    stats = agreement_statistics(ratings)
    stats.update(
        {
            "exported_rows": len(dataset),
            "exported_positive": int(sum(columns["feedback"])),
            "exported_negative": len(dataset) - int(sum(columns["feedback"])),
            "exported_by_task": dict(Counter(columns["task"])),
            "tie_policy": config.ties,
            "tied_clips": ties,
            "dropped_ties": dropped_ties,
            "below_min_ratings": too_few,
            "min_ratings": config.min_ratings,
        }
    )
    report = run_dir / "feedback_agreement.json"
    atomic_write_bytes(report, (json.dumps(stats, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))

    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    print(
        f"exported {len(dataset)} rated clips to {out} ({stats['exported_positive']} aligned, "
        f"{stats['exported_negative']} not aligned; {ties} ties, {dropped_ties} dropped; {stats['skips']} skips left out)"
    )
    print(
        f"agreement: Fleiss' kappa {fmt(stats['fleiss_kappa'])} over {stats['clips_with_2plus_ratings']} clips "
        f"with >= 2 ratings; {len(stats['annotators'])} annotators"
    )
    for pair in stats["cohen_kappa_pairs"]:
        a, b = pair["annotators"]
        print(f"  Cohen's kappa {a} / {b}: {fmt(pair['cohen_kappa'])} over {pair['clips']} shared clips")
    print(f"statistics saved to {report}")
    return out


__all__ = [
    "ALIGNED",
    "NOT_ALIGNED",
    "SKIP",
    "AnnotationError",
    "AnnotationStore",
    "DuplicateRatingError",
    "ExportConfig",
    "UnknownClipError",
    "agreement_statistics",
    "cohen_kappa",
    "export_feedback",
    "fleiss_kappa",
    "majority_vote",
]
