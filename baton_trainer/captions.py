"""Captions from label groups: the templates, the label vocabulary, an optional rewriter, and the
captions.jsonl format (the `prompts` stage writes it, `baton_trainer.stages.prompts`).

BATON's captions come from label groups: 2 sound-event labels for the integrity task ("are both
events there?") and 3 for the temporal task ("do they come in this order?"), joined into one
sentence. The paper had GPT-4 write the sentences; here a template engine does it, offline and
reproducibly, with the conjunctions seen in the released captions. An optional rewriter (any
transformers text-generation model) can paraphrase the template sentence; a rewrite that drops a
label, or breaks the order of a temporal caption, is thrown away and the template kept.

Each line of RUN/captions.jsonl is
`{"caption_id": int, "caption": str, "task": "integrity"|"temporal", "labels": [...], "split": "train"|"heldout"}`
with `labels` in their intended order (the order the caption states for temporal captions).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .textfiles import TextFileError, numbered_lines, read_jsonl

DEFAULT_LABELS_FILE = Path(__file__).parent / "assets" / "audiocaps_labels.txt"
TASK_LABEL_COUNTS = {"integrity": 2, "temporal": 3}

# Templates with {0}, {1}, {2} standing for the labels in their intended order. Every template puts
# the labels into the text in that order, so "labels appear in order" holds for every caption.
# Integrity: conjunctions that say "both happen" without fixing an order.
INTEGRITY_CONJUNCTIONS: tuple[str, ...] = (
    "{0} and {1}",
    "{0} with {1}",
    "{0} while {1}",
    "{0} as {1}",
    "{0} with {1} in the background",
    "{0} and {1} in the background",
    "{0} accompanied by {1}",
    "{0} amid {1}",
    "{0} alongside {1}",
    "{0} during {1}",
    "{0} together with {1}",
)
# Temporal: conjunctions that fix the order of the three events.
TEMPORAL_CONJUNCTIONS: tuple[str, ...] = (
    "{0}, followed by {1}, followed by {2}",
    "{0}, then {1}, then {2}",
    "{0}, and then {1}, and then {2}",
    "{0} followed by {1}, and then {2}",
    "{0}, then {1}, followed by {2}",
    "{0} before {1}, then {2}",
    "{0} before {1} and then {2}",
    "at first {0}, then {1}, and finally {2}",
    "first {0}, then {1}, then {2}",
    "{0} first, then {1}, followed by {2}",
    "{0}, after that {1}, and then {2}",
    "{0}, followed by {1}, and finally {2}",
)
CONJUNCTIONS = {"integrity": INTEGRITY_CONJUNCTIONS, "temporal": TEMPORAL_CONJUNCTIONS}


class CaptionError(ValueError):
    """A label, label file or caption setting that cannot be used; the message names it."""


# ----------------------------------------------------------------------------------------------
# One caption


def _check_labels(labels: Sequence[str], task: str, where: str = "labels") -> list[str]:
    if task not in TASK_LABEL_COUNTS:
        raise CaptionError(f"task must be one of {list(TASK_LABEL_COUNTS)}, got {task!r}")
    labels = list(labels)
    want = TASK_LABEL_COUNTS[task]
    if len(labels) != want:
        raise CaptionError(f"{where}: the {task} task takes {want} labels, got {len(labels)}: {labels!r}")
    for i, label in enumerate(labels):
        if not isinstance(label, str) or not label.strip():
            raise CaptionError(f"{where}: label {i} is empty ({label!r}); every label needs text")
    cleaned = [" ".join(label.split()) for label in labels]
    if len({label.casefold() for label in cleaned}) != len(cleaned):
        raise CaptionError(f"{where}: a label group needs distinct labels, got {cleaned!r}")
    return cleaned


def _template_for(conjunction: str, task: str) -> str:
    """A full template as is, or a bare conjunction ("with", "followed by") joining each pair."""
    if "{0}" in conjunction:
        template = conjunction
    else:
        word = conjunction.strip()
        if not word:
            raise CaptionError("conjunction is empty")
        joiner = f" {word} " if task == "integrity" else f", {word} "
        template = joiner.join(f"{{{i}}}" for i in range(TASK_LABEL_COUNTS[task]))
    for i in range(TASK_LABEL_COUNTS[task]):
        if f"{{{i}}}" not in template:
            raise CaptionError(f"conjunction template {conjunction!r} lacks the slot {{{i}}} for the {task} task")
    return template


def _sentence_case(text: str) -> str:
    return text[:1].upper() + text[1:] if text else text


def make_caption(labels: Sequence[str], task: str, rng_or_conjunction: Any = None) -> str:
    """Join a label group into one caption.

    `task` is "integrity" (2 labels, order-free conjunction) or "temporal" (3 labels, a conjunction
    that fixes their order). The third argument picks the conjunction: a `random.Random`, a numpy
    `Generator` or an int seed draws one from `CONJUNCTIONS[task]`; a string is used as the
    conjunction, either a template with `{0}`, `{1}` (and `{2}`) or a bare word such as "with" or
    "followed by" that joins consecutive labels; None takes the first (plain "and" / "followed by").

    Labels are inserted as given (Unicode welcome), so each appears verbatim in the caption, in the
    order given; only the caption's first letter is upper-cased.

        >>> make_caption(["dog barking", "rain falling"], "integrity", "with")
        'Dog barking with rain falling'
    """
    labels = _check_labels(labels, task)
    choices = CONJUNCTIONS[task]
    if rng_or_conjunction is None:
        conjunction = choices[0]
    elif isinstance(rng_or_conjunction, str):
        conjunction = rng_or_conjunction
    elif isinstance(rng_or_conjunction, random.Random):
        conjunction = rng_or_conjunction.choice(choices)
    elif isinstance(rng_or_conjunction, np.random.Generator):
        conjunction = choices[int(rng_or_conjunction.integers(len(choices)))]
    elif isinstance(rng_or_conjunction, (int, np.integer)) and not isinstance(rng_or_conjunction, bool):
        conjunction = random.Random(int(rng_or_conjunction)).choice(choices)
    else:
        raise CaptionError(
            f"rng_or_conjunction must be a random.Random, numpy Generator, int seed or conjunction string, got {type(rng_or_conjunction).__name__}"
        )
    return _sentence_case(_template_for(conjunction, task).format(*labels))


def caption_keeps_labels(caption: str, labels: Sequence[str], ordered: bool) -> bool:
    """True when every label occurs in the caption (case-insensitively), and in order if `ordered`."""
    text = caption.casefold()
    position = 0
    for label in labels:
        found = text.find(label.casefold(), position if ordered else 0)
        if found < 0:
            return False
        if ordered:
            position = found + len(label)
    return True


# ----------------------------------------------------------------------------------------------
# Label vocabulary


def load_labels(path: str | Path | None = None) -> list[str]:
    """Read a label vocabulary: one label per line, `#` starts a comment, blank lines ignored.

    Without a path, the shipped top-200 AudioCaps/AudioSet sound-event list. Duplicate labels
    (case-insensitive) are kept once, in first-seen order.
    """
    path = Path(path) if path is not None else DEFAULT_LABELS_FILE
    if not path.is_file():
        raise CaptionError(f"labels file not found: {path}")
    labels: list[str] = []
    seen: set[str] = set()
    for number, line in numbered_lines(path, "labels file"):
        label = " ".join(line.split("#", 1)[0].split())
        if not label:
            continue
        if "{" in label or "}" in label:
            raise CaptionError(f"{path}: line {number}: label {label!r} may not contain braces")
        if label.casefold() not in seen:
            seen.add(label.casefold())
            labels.append(label)
    if len(labels) < 3:
        raise CaptionError(f"{path}: needs at least 3 distinct labels (found {len(labels)})")
    return labels


# ----------------------------------------------------------------------------------------------
# Optional rewriter


class CaptionRewriter:
    """Paraphrase template captions with a transformers text-generation model.

    A rewrite is kept only if it still names every label (in order, for temporal captions);
    otherwise the template caption is kept. Generation is greedy, so reruns give the same text.
    """

    PROMPT = "Rewrite the sound description as one short, natural sentence. Keep every sound name word for word{order}.\nDescription: {caption}\nSentence:"

    def __init__(self, model: str, device: str | None = None, max_new_tokens: int = 40):
        from transformers import pipeline  # lazy: keeps `--help` fast (the CLI imports this module)

        self.generator = pipeline("text-generation", model=model, device=device)
        self.max_new_tokens = max_new_tokens

    def __call__(self, caption: str, labels: Sequence[str], task: str) -> str:
        order = " and in the same order" if task == "temporal" else ""
        prompt = self.PROMPT.format(caption=caption, order=order)
        out = self.generator(prompt, max_new_tokens=self.max_new_tokens, do_sample=False, return_full_text=False)[0]["generated_text"]
        rewritten = " ".join(out.strip().splitlines()[0].split()) if out.strip() else ""
        rewritten = rewritten.strip(" \"'")
        if not rewritten or not caption_keeps_labels(rewritten, labels, ordered=task == "temporal"):
            return caption
        return _sentence_case(rewritten)


# ----------------------------------------------------------------------------------------------
# The stage


def _group_key(labels: Sequence[str], task: str) -> tuple:
    folded = [label.casefold() for label in labels]
    # Integrity groups are order-free: {a, b} and {b, a} are the same group.
    return (task, tuple(sorted(folded)) if task == "integrity" else tuple(folded))


def _max_groups(num_labels: int, task: str) -> int:
    if task == "integrity":
        return num_labels * (num_labels - 1) // 2
    return num_labels * (num_labels - 1) * (num_labels - 2)


def generate_captions(
    labels: Sequence[str],
    num_integrity: int,
    num_temporal: int,
    seed: int = 0,
    heldout_fraction: float = 0.0,
    rewriter: Any = None,
) -> list[dict[str, Any]]:
    """Draw distinct label groups and caption them; the rows of captions.jsonl, ids from 0.

    No label group repeats within a task (an integrity group in either order counts once), and no
    caption text repeats. The same arguments always give the same rows.
    """
    labels = list(labels)
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    seen_groups: set[tuple] = set()
    seen_text: set[str] = set()
    for task, count in (("integrity", num_integrity), ("temporal", num_temporal)):
        k = TASK_LABEL_COUNTS[task]
        if count > _max_groups(len(labels), task):
            raise CaptionError(
                f"{count} {task} captions asked for, but {len(labels)} labels give only {_max_groups(len(labels), task)} distinct {k}-label groups"
            )
        made, attempts = 0, 0
        task_rows: list[dict[str, Any]] = []
        while made < count:
            attempts += 1
            if attempts > 50 * count + 1000:
                raise CaptionError(f"could not draw {count} distinct {task} captions from {len(labels)} labels")
            group = rng.sample(labels, k)
            key = _group_key(group, task)
            if key in seen_groups:
                continue
            caption = make_caption(group, task, rng)
            if rewriter is not None:
                caption = rewriter(caption, group, task)
            if caption.casefold() in seen_text:
                continue
            seen_groups.add(key)
            seen_text.add(caption.casefold())
            task_rows.append({"caption": caption, "task": task, "labels": list(group), "split": "train"})
            made += 1
        # Held-out captions per task, so both tasks are evaluated.
        n_heldout = int(round(heldout_fraction * len(task_rows)))
        for index in rng.sample(range(len(task_rows)), n_heldout):
            task_rows[index]["split"] = "heldout"
        rows.extend(task_rows)
    return [{"caption_id": i, **row} for i, row in enumerate(rows)]


def read_captions(path: str | Path) -> list[dict[str, Any]]:
    """Read captions.jsonl, checking each row; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise CaptionError(f"captions file not found: {path}")
    rows = []
    try:
        numbered = read_jsonl(path, "captions file")
    except TextFileError as exc:
        raise CaptionError(str(exc)) from None
    for number, row in numbered:
        for key in ("caption_id", "caption", "task", "labels", "split"):
            if key not in row:
                raise CaptionError(f"{path}: line {number} lacks the key '{key}'")
        if not isinstance(row["caption"], str) or not row["caption"].strip():
            raise CaptionError(f"{path}: line {number}: 'caption' must be non-empty text, got {row['caption']!r}")
        if not isinstance(row["labels"], list):
            raise CaptionError(f"{path}: line {number}: 'labels' must be a list, got {row['labels']!r}")
        if row["labels"]:  # captions from elsewhere (the AudioCaps test lists) have no labels
            _check_labels(row["labels"], row["task"], where=f"{path}: line {number}")
        if row["split"] not in ("train", "heldout"):
            raise CaptionError(f"{path}: line {number}: split must be 'train' or 'heldout', got {row['split']!r}")
        if not isinstance(row.get("lyrics", ""), str):  # optional: for a model conditioned on lyrics (ACE-Step)
            raise CaptionError(f"{path}: line {number}: 'lyrics' must be text, got {row['lyrics']!r}")
        rows.append(row)
    return rows


__all__ = [
    "CONJUNCTIONS",
    "INTEGRITY_CONJUNCTIONS",
    "TEMPORAL_CONJUNCTIONS",
    "CaptionError",
    "CaptionRewriter",
    "caption_keeps_labels",
    "generate_captions",
    "load_labels",
    "make_caption",
    "read_captions",
]
