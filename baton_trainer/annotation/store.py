"""The durable store of ratings (SQLite): which clip each person is shown, and what they answered.

SQLite rather than a dataset or files: one file, transactions that several rating processes share
safely, and an fsync per rating; no server to run.

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
import json
import sqlite3
import threading
import time
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any

ALIGNED = 1
NOT_ALIGNED = 0
SKIP = -2
LABELS = {ALIGNED: "aligned", NOT_ALIGNED: "not aligned", SKIP: "skip"}
SCHEMA_VERSION = 2
# Columns added after version 1, added to older stores on open (their old rows keep NULL).
_ADDED_COLUMNS = {"clips": {"duration_s": "REAL"}, "ratings": {"seconds": "REAL"}}

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
    error TEXT,                       -- set when the clip's audio cannot be played; such clips are not handed out
    duration_s REAL                   -- the clip's length, read from its file header at registration
);
CREATE TABLE IF NOT EXISTS ratings (
    rating_id INTEGER PRIMARY KEY AUTOINCREMENT,
    clip_id TEXT NOT NULL REFERENCES clips(clip_id),
    annotator TEXT NOT NULL,
    label INTEGER NOT NULL CHECK (label IN (1, 0, -2)),
    created_at TEXT NOT NULL,
    seconds REAL,                     -- from the clip's lease (shown) to this rating; NULL when it was not leased
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


class NotLeasedError(AnnotationError):
    """The clip was never handed to this annotator, so their rating of it is refused."""


class ClipCompleteError(AnnotationError):
    """The clip already has all the ratings it asked for; this one was not stored."""


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


# Bidirectional overrides and isolates can make one name display as another; other format
# characters (the zero-width joiners of Persian or Hindi names, emoji sequences) are part of names.
_BIDI_CONTROLS = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _clean_annotator(annotator: Any) -> str:
    name = " ".join(str(annotator or "").split())
    if not name:
        raise AnnotationError("annotator name is empty: enter a name before rating")
    if len(name) > 100:
        raise AnnotationError(f"annotator name is longer than 100 characters: {name[:20]!r}...")
    for char in name:
        if unicodedata.category(char) in ("Cc", "Cs", "Co", "Cn") or char in _BIDI_CONTROLS:
            raise AnnotationError(f"annotator name {name!r} holds the control character U+{ord(char):04X}; use letters, digits and spaces")
    return name


def add_missing_columns(conn: sqlite3.Connection, added: dict[str, dict[str, str]]) -> None:
    """Bring a store made by an older version up to date: `{table: {column: type}}` added where missing."""
    for table, columns in added.items():
        have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        for column, kind in columns.items():
            if column not in have:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")


def _duration(path: Path) -> float | None:
    """A clip's length from its file header (None when it cannot be read: the app reports that)."""
    import soundfile  # lazy: keeps `--help` fast (the CLI imports this module)

    try:
        info = soundfile.info(str(path))
        return float(info.frames) / float(info.samplerate)
    except Exception:  # missing or corrupt: the clip is marked unplayable when it is served
        return None


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
            add_missing_columns(conn, _ADDED_COLUMNS)
        except sqlite3.DatabaseError as exc:
            raise AnnotationError(f"{self.path}: not a usable annotation store ({exc})") from exc
        conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

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
        from ..generations import GenerationError, read_generations  # lazy: keeps `--help` fast (the CLI imports this module)

        generations_dir = Path(generations_dir)
        try:
            generated = read_generations(generations_dir)
        except GenerationError as exc:
            raise AnnotationError(str(exc)) from None
        rows = [
            (
                str(row["clip_id"]),
                str(row["file_name"]),
                str(row["caption"]),
                str(row["task"]),
                json.dumps(list(row["labels"]), ensure_ascii=False),
                int(row["caption_id"]),
                int(row["clip_index"]),
                _duration(generations_dir / str(row["file_name"])),
            )
            for row in generated
        ]
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(
                """INSERT INTO clips(clip_id, file_name, caption, task, labels, caption_id, clip_index, duration_s, error)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL)
                   ON CONFLICT(clip_id) DO UPDATE SET file_name=excluded.file_name, caption=excluded.caption,
                       task=excluded.task, labels=excluded.labels, caption_id=excluded.caption_id,
                       clip_index=excluded.clip_index, duration_s=excluded.duration_s, error=NULL""",
                rows,
            )
            conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('generations_dir', ?)", (str(generations_dir.resolve()),))
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

    def add_rating(self, clip_id: str, annotator: str, label: int, ratings_per_clip: int | None = None, leased_only: bool = False) -> int:
        """Store one rating and return its id once it is committed to disk.

        `label`: 1 aligned, 0 not aligned, -2 skip. Raises DuplicateRatingError if this annotator
        already rated the clip, UnknownClipError for an unregistered clip, and, with
        `ratings_per_clip`, ClipCompleteError when the clip already has that many ratings (a lease
        that ran out while its holder listened: the clip went to someone else in the meantime).
        With `leased_only` (the apps), a rating is stored only for a clip handed to this annotator
        (`next_clip_for`; an expired lease still counts), so nobody rates a clip they were not shown.
        The time from the lease to the rating is stored as `seconds`.
        """
        annotator = _clean_annotator(annotator)
        if isinstance(label, bool) or label not in LABELS:
            raise AnnotationError(f"rating label must be 1 (aligned), 0 (not aligned) or -2 (skip), got {label!r}")
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")  # the count and the insert are one step for every process
        try:
            lease = conn.execute("SELECT leased_at FROM leases WHERE clip_id = ? AND annotator = ?", (str(clip_id), annotator)).fetchone()
            if leased_only and lease is None:
                raise NotLeasedError(f"clip {clip_id!r} was not handed to {annotator!r}; only clips shown to you can be rated")
            if ratings_per_clip is not None and label != SKIP:
                done = conn.execute("SELECT COUNT(*) FROM ratings WHERE clip_id = ? AND label IN (0, 1)", (str(clip_id),)).fetchone()[0]
                if done >= ratings_per_clip:
                    raise ClipCompleteError(f"clip {clip_id!r} already has its {ratings_per_clip} rating(s); {annotator!r}'s was not needed")
            cursor = conn.execute(
                "INSERT INTO ratings(clip_id, annotator, label, created_at, seconds) VALUES (?, ?, ?, ?, ?)",
                (str(clip_id), annotator, int(label), _now(), None if lease is None else max(0.0, time.time() - float(lease["leased_at"]))),
            )
            conn.execute("DELETE FROM leases WHERE clip_id = ? AND annotator = ?", (str(clip_id), annotator))
            conn.execute("COMMIT")
        except BaseException as exc:
            conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.IntegrityError):
                if "UNIQUE" in str(exc):
                    raise DuplicateRatingError(f"{annotator!r} has already rated clip {clip_id!r}") from None
                if "FOREIGN KEY" in str(exc):
                    raise UnknownClipError(f"{self.path}: no clip with id {clip_id!r}") from None
            raise
        return int(cursor.lastrowid)

    def next_clip_for(self, annotator: str, ratings_per_clip: int = 1, lease: bool = True) -> dict[str, Any] | None:
        """The next clip this annotator should rate, or None when there is nothing for them now.

        Candidates: playable clips this annotator has neither rated nor skipped whose ratings plus
        the live leases other annotators hold stay below `ratings_per_clip` (skips do not count), so
        a clip is never handed to more people than it needs. Fair order: the clip this annotator
        already holds first, then clips with the fewest ratings (every clip gets a first rating
        before any gets a second), then by caption and clip index, so a person hears a caption's
        clips one after another. Choosing the clip and leasing it (`lease_seconds`) are one
        transaction: two processes asking at once get different clips. None while clips remain but
        others hold them: ask again later (`progress` tells whether the campaign is complete).
        """
        annotator = _clean_annotator(annotator)
        if ratings_per_clip < 1:
            raise AnnotationError(f"ratings_per_clip must be >= 1, got {ratings_per_clip}")
        now = time.time()
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute(
                """
                SELECT * FROM (
                    SELECT c.*,
                           (SELECT COUNT(*) FROM ratings r WHERE r.clip_id = c.clip_id AND r.label IN (0, 1)) AS n_ratings,
                           (SELECT COUNT(*) FROM leases l WHERE l.clip_id = c.clip_id AND l.annotator != :who
                                AND l.leased_at > :fresh) AS n_leases,
                           (SELECT COUNT(*) FROM leases l WHERE l.clip_id = c.clip_id AND l.annotator = :who
                                AND l.leased_at > :fresh) AS mine
                    FROM clips c
                    WHERE c.error IS NULL
                      AND NOT EXISTS (SELECT 1 FROM ratings r WHERE r.clip_id = c.clip_id AND r.annotator = :who)
                ) WHERE n_ratings + n_leases < :n
                ORDER BY mine DESC, n_ratings + n_leases ASC, n_ratings DESC, caption_id, clip_index, clip_id
                LIMIT 1
                """,
                {"who": annotator, "n": int(ratings_per_clip), "fresh": now - self.lease_seconds},
            ).fetchone()
            if row is not None and lease:
                conn.execute("INSERT OR REPLACE INTO leases(clip_id, annotator, leased_at) VALUES (?, ?, ?)", (row["clip_id"], annotator, now))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        if row is None:
            return None
        clip = self._clip_dict(row)
        for key in ("n_leases", "mine"):
            clip.pop(key, None)
        return clip

    def progress(self, annotator: str, ratings_per_clip: int = 1) -> dict[str, int | str]:
        """Counts for one annotator and the campaign: rated, skipped, left for them, clips complete."""
        annotator = _clean_annotator(annotator)
        conn = self._conn()
        mine = Counter({r["label"]: r["n"] for r in conn.execute("SELECT label, COUNT(*) AS n FROM ratings WHERE annotator = ? GROUP BY label", (annotator,))})
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
        """Every rating as a dict, oldest first: rating_id, clip_id, annotator, label, created_at,
        seconds (from being shown the clip to answering; None when it was not leased) and `fast`:
        True for an aligned / not-aligned answer given before the clip could have been heard to its
        end (seconds < the clip's duration)."""
        query = """SELECT r.rating_id, r.clip_id, r.annotator, r.label, r.created_at, r.seconds,
                          (r.label IN (0, 1) AND r.seconds IS NOT NULL AND c.duration_s IS NOT NULL AND r.seconds < c.duration_s) AS fast
                   FROM ratings r JOIN clips c ON c.clip_id = r.clip_id"""
        if not include_skips:
            query += " WHERE r.label IN (0, 1)"
        return [{**dict(r), "fast": bool(r["fast"])} for r in self._conn().execute(query + " ORDER BY r.rating_id")]
