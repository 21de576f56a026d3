"""The `export` stage: the ratings in RUN/annotations.sqlite -> RUN/feedback/ (a preference dataset).

    python -m baton_trainer export --run_dir RUN [--ties drop] [--min_ratings 1]

One row per clip with at least `min_ratings` non-skip ratings; its feedback and reward are the
majority label (`ties` decides a split vote); skips never reach training data, nor (unless
`keep_fast`) ratings given in the app faster than the clip plays: they are counted per annotator. Rater agreement
(Fleiss' and Cohen's kappa) goes to RUN/feedback_agreement.json.

Imports inside the functions keep `python -m baton_trainer --help` fast: the CLI imports every
stage module at start.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..annotation.agreement import agreement_statistics, majority_vote
from ..annotation.store import ALIGNED, NOT_ALIGNED, AnnotationError, AnnotationStore
from ..generations import METADATA, read_generations
from ..layout import RunLayout


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
    keep_fast: bool = field(
        default=False, metadata={"help": "keep ratings given before the clip could have been heard to its end (left out by default, and counted)"}
    )

    def __post_init__(self) -> None:
        if self.min_ratings < 1:
            raise AnnotationError(f"config key 'min_ratings' must be >= 1, got {self.min_ratings}")


def export_feedback(config: ExportConfig) -> Path:
    """Majority-voted human ratings -> RUN/feedback/ (a saved Dataset).

    One row per clip with at least `min_ratings` non-skip ratings (skips never reach training
    data); feedback and reward are the majority label; annotator lists the raters, comma-separated.
    Agreement statistics go to RUN/feedback_agreement.json and are printed.
    """

    from ..atomic import atomic_write_json
    from ..audio import AudioError, load_audio
    from ..data import PREFERENCE_FEATURES, build_preference_dataset, save_dataset_atomic, validate_preference_dataset
    from ..formatting import format_number

    layout = RunLayout.of(config.run_dir, annotations=config.store, feedback=config.out)
    store_path, out = layout.annotations, layout.feedback
    if not store_path.is_file():
        raise AnnotationError(f"{store_path}: annotation store not found (run the annotate stage first)")
    store = AnnotationStore(store_path)
    try:
        # The clips' folder: as given, else where the store registered them, else RUN/generations.
        registered = store.get_meta("generations_dir")
        generations_dir = Path(config.generations_dir or registered or layout.generations)
        if config.generations_dir is None and not generations_dir.is_dir():
            generations_dir = layout.generations
        clips = {c["clip_id"]: c for c in store.clips()}
        ratings = store.ratings()
    finally:
        store.close()
    # Lyrics are not in the store: they are read from the clips' metadata, where it has them.
    metadata = generations_dir / METADATA
    lyrics_of = {r["clip_id"]: r.get("lyrics", "") for r in read_generations(generations_dir)} if metadata.is_file() else {}
    fast = Counter(r["annotator"] for r in ratings if r["fast"])
    if not config.keep_fast:
        ratings = [r for r in ratings if not r["fast"]]

    by_clip: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in ratings:
        by_clip[r["clip_id"]].append(r)
    columns: dict[str, list[Any]] = {name: [] for name in PREFERENCE_FEATURES}
    lyrics: list[str] = []
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
            raise AnnotationError(f"clip {clip_id}: rated audio file {path} not found; {out} is left as it was")
        data = path.read_bytes()
        try:
            load_audio(data, what=f"clip {clip_id} ({path})")
        except AudioError as exc:
            raise AnnotationError(f"{exc}; a rated clip must play, so {out} is left as it was (fix or regenerate the clip)") from None
        columns["caption"].append(clip["caption"])
        columns["audio"].append({"bytes": data, "path": clip["file_name"]})
        columns["feedback"].append(feedback)
        columns["reward"].append(float(feedback))
        columns["source"].append("human")
        columns["task"].append(clip["task"])
        columns["labels"].append(clip["labels"])
        columns["caption_id"].append(clip["caption_id"])
        columns["clip_index"].append(clip["clip_index"])
        columns["annotator"].append(",".join(sorted(r["annotator"] for r in votes)))
        lyrics.append(lyrics_of.get(clip_id, ""))
    if not columns["caption"]:
        skips = sum(r["label"] not in (ALIGNED, NOT_ALIGNED) for r in ratings)
        raise AnnotationError(
            f"{store_path}: no clip has a rating to export ({len(ratings)} ratings, {skips} of them skips; {dropped_ties} ties dropped, "
            f"{too_few} clips below min_ratings); {out} is left as it was"
        )
    dataset = build_preference_dataset(columns, lyrics)  # builds audio without torchcodec
    validate_preference_dataset(dataset, name=str(out))
    save_dataset_atomic(dataset, out)

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
            "fast_ratings": sum(fast.values()),
            "fast_ratings_by_annotator": dict(fast),
            "fast_ratings_kept": config.keep_fast,
        }
    )
    report = layout.feedback_agreement
    atomic_write_json(report, stats)

    print(
        f"exported {len(dataset)} rated clips to {out} ({stats['exported_positive']} aligned, "
        f"{stats['exported_negative']} not aligned; {ties} ties, {dropped_ties} dropped; {stats['skips']} skips left out)"
    )
    if fast:
        verb = "kept" if config.keep_fast else "left out (keep them with --keep_fast)"
        print(f"{sum(fast.values())} rating(s) given faster than the clip plays, {verb}: " + ", ".join(f"{a} {n}" for a, n in fast.most_common()))
    print(
        f"agreement: Fleiss' kappa {format_number(stats['fleiss_kappa'])} over {stats['clips_with_2plus_ratings']} clips "
        f"with >= 2 ratings; {len(stats['annotators'])} annotators"
    )
    for pair in stats["cohen_kappa_pairs"]:
        a, b = pair["annotators"]
        print(f"  Cohen's kappa {a} / {b}: {format_number(pair['cohen_kappa'])} over {pair['clips']} shared clips")
    print(f"statistics saved to {report}")
    return out
