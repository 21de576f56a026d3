"""The rating app (Gradio) that the `annotate` stage serves: people rate generated clips against
their captions (`baton_trainer.stages.annotate` launches it).

It serves RUN/generations/ (registered into RUN/annotations.sqlite on start): each person enters a
name (or logs in, with a users file), hears a clip, sees its caption and spectrogram, and answers
Aligned / Not aligned / Skip (keys a / n / s). Every answer is committed to the store before the
next clip shows, each clip goes to `ratings_per_clip` different people, and nobody gets a clip
twice. A rating is stored only for a clip the server handed to that person, with the time it took
(`AnnotationStore.add_rating(leased_only=True)`). Clips are read from inside the generations folder
and handed to the browser as copies named by their content (`ServedFiles`): no file of the server
is served. A clip whose audio is missing or unreadable is reported, marked unplayable in the store,
and skipped. Every message to a client is one line without a server path (`one_line_errors`).

Event handlers carry `api_name`s (`/start`, `/aligned`, `/not_aligned`, `/skip`), so the app can
be driven with `gradio_client` as well as in a browser.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# gradio at module level: it resolves the handlers' `gr.Request` annotation (a string here, under
# `from __future__ import annotations`) through this module's globals to inject the login.
import gradio as gr
import numpy as np

from ..audio import AudioError, load_audio
from ..serving import OneLineErrorBlocks, ServedFiles, client_message, one_line_errors
from ..spectrogram import spectrogram_image
from .store import ALIGNED, NOT_ALIGNED, SKIP, AnnotationError, AnnotationStore, ClipCompleteError, DuplicateRatingError

KEYBOARD_JS = """
() => {
  const keys = {a: "baton-aligned", n: "baton-not-aligned", s: "baton-skip"};
  document.addEventListener("keydown", (event) => {
    const target = event.target;
    const typing = target && (target.tagName === "INPUT" || target.tagName === "TEXTAREA" || target.isContentEditable);
    if (typing || event.ctrlKey || event.metaKey || event.altKey) return;
    const id = keys[event.key.toLowerCase()];
    if (!id) return;
    const root = document.getElementById(id);
    const button = root && (root.tagName === "BUTTON" ? root : root.querySelector("button"));
    if (button) { event.preventDefault(); button.click(); }
  });
}
"""


class ClipServer:
    """The app's logic, apart from Gradio: hands out clips, checks paths and audio, stores ratings."""

    def __init__(self, generations: str | Path, store: AnnotationStore, ratings_per_clip: int):
        self.store = store
        self.ratings_per_clip = ratings_per_clip
        self.root = Path(generations).resolve()

    def clip_path(self, clip: dict[str, Any]) -> Path:
        """The clip's file, refused if it resolves outside the generations folder."""
        path = (self.root / clip["file_name"]).resolve()
        if not path.is_relative_to(self.root):
            raise AudioError(f"clip {clip['clip_id']}: {clip['file_name']!r} resolves outside {self.root}; not served")
        return path

    def next_playable(self, annotator: str) -> tuple[dict[str, Any] | None, np.ndarray | None, int, list[str]]:
        """The next clip for `annotator` whose audio loads; broken clips are marked and reported."""
        problems: list[str] = []
        while True:
            clip = self.store.next_clip_for(annotator, self.ratings_per_clip)
            if clip is None:
                return None, None, 0, problems
            try:
                path = self.clip_path(clip)
                wav, sr = load_audio(path, what=f"clip {clip['clip_id']} ({clip['file_name']})")
            except AudioError as exc:
                self.store.mark_clip_error(clip["clip_id"], str(exc))
                problems.append(f"Clip {clip['clip_id']} could not be played: {client_message(exc)}. Moved on to the next clip.")
                continue
            return clip, wav, sr, problems

    def progress_text(self, annotator: str) -> str:
        p = self.store.progress(annotator, self.ratings_per_clip)
        return (
            f"**{p['annotator']}**: rated {p['rated']} ({p['aligned']} aligned, {p['not_aligned']} not aligned), "
            f"skipped {p['skipped']}; {p['remaining']} clips left for you. "
            f"Campaign: {p['clips_complete']}/{p['total_clips']} clips have {p['ratings_per_clip']} rating(s)"
            + (f", {p['unplayable_clips']} unplayable." if p["unplayable_clips"] else ".")
        )


def rater_name(name: Any, request: Any, logins: bool) -> str:
    """Who is answering: the login name with logins (whatever the client sends as `name`), else
    the typed name."""
    if logins:
        return str(getattr(request, "username", None) or "") if request is not None else ""
    return " ".join(str(name or "").split()) if isinstance(name, (str, int, float)) else ""


def build_annotation_app(generations: str | Path, store: AnnotationStore, ratings_per_clip: int, logins: bool = False, spectrogram: bool = True) -> gr.Blocks:
    """The annotation app over `store`, with the generations folder's clips registered into it.
    `logins`: people log in (the login name is the annotator); `spectrogram`: draw each clip's."""
    store.register_clips(Path(generations))
    server = ClipServer(generations, store, ratings_per_clip)
    served = ServedFiles()

    def show_next(annotator: str, notes: list[str]) -> tuple:
        clip, wav, sr, problems = server.next_playable(annotator)
        status = "\n\n".join(notes + problems)
        if clip is None:
            if server.store.progress(annotator, ratings_per_clip)["remaining"]:
                done = "Every clip left is being rated by someone else right now: press Start again in a minute."
            else:
                done = "No clips left for you: thank you!"
            return "", f"### {done}", None, None, server.progress_text(annotator), (status + "\n\n" + done).strip()
        image = served.image(spectrogram_image(wav, sr)) if spectrogram else None
        caption = f"### {clip['caption']}\n\n*{clip['task']} task; clip {clip['clip_id']}*"
        return clip["clip_id"], caption, served.audio(wav, sr), image, server.progress_text(annotator), status

    def blank(message: str) -> tuple:
        return "", "", None, None, "", message

    def guarded(handler):
        failure = "Something went wrong on the server; your earlier ratings are saved. Press Start to go on."
        return one_line_errors(handler, blank, AnnotationError, failure)

    def start(name: str, request: gr.Request = None) -> tuple:
        annotator = rater_name(name, request, logins)
        if not annotator:
            return blank("Log in, then press Start." if logins else "Enter your name, then press Start.")
        return show_next(annotator, [])

    def make_rater(label: int):
        def rate(name: str, clip_id: str, request: gr.Request = None) -> tuple:
            annotator = rater_name(name, request, logins)
            if not annotator:
                return blank("Log in, then press Start." if logins else "Enter your name, then press Start.")
            notes = []
            clip_id = str(clip_id) if isinstance(clip_id, (str, int)) else ""
            if clip_id:
                try:
                    server.store.add_rating(clip_id, annotator, label, ratings_per_clip=ratings_per_clip, leased_only=True)
                except DuplicateRatingError:
                    notes.append(f"You had already rated clip {clip_id}; the first answer is kept.")
                except ClipCompleteError:
                    notes.append(f"Clip {clip_id} got its last rating from someone else while you listened; here is another one.")
            return show_next(annotator, notes)

        return rate

    with OneLineErrorBlocks(title="BATON: rate generated audio") as app:
        gr.Markdown(
            "## Does the clip match its caption?\n"
            "Listen to the whole clip. **Aligned** if every sound the caption names is there (in the stated "
            "order, when it states one); **Not aligned** otherwise; **Skip** if you cannot tell. "
            "Keys: **a** aligned, **n** not aligned, **s** skip."
        )
        with gr.Row():
            annotator_box = gr.Textbox(
                label="Your name",
                placeholder="e.g. alice",
                scale=3,
                interactive=not logins,
                elem_id="baton-annotator",
                info="logged in" if logins else "ratings are stored under this name",
            )
            start_button = gr.Button("Start", variant="primary", scale=1, elem_id="baton-start")
        clip_box = gr.Textbox(label="Clip", interactive=False, elem_id="baton-clip-id")
        caption_md = gr.Markdown(elem_id="baton-caption")
        audio_player = gr.Audio(label="Clip", type="filepath", interactive=False, autoplay=True, elem_id="baton-audio")
        spectrogram_box = gr.Image(label="Spectrogram", type="filepath", interactive=False, elem_id="baton-spectrogram")
        with gr.Row():
            aligned_button = gr.Button("Aligned (a)", variant="primary", elem_id="baton-aligned")
            not_aligned_button = gr.Button("Not aligned (n)", variant="stop", elem_id="baton-not-aligned")
            skip_button = gr.Button("Skip (s)", elem_id="baton-skip")
        progress_md = gr.Markdown(elem_id="baton-progress")
        status_md = gr.Markdown(elem_id="baton-status")

        outputs = [clip_box, caption_md, audio_player, spectrogram_box, progress_md, status_md]
        start_button.click(guarded(start), [annotator_box], outputs, api_name="start")
        annotator_box.submit(guarded(start), [annotator_box], outputs, api_name=False)
        # One rating at a time per browser tab: a double click cannot rate the next clip unseen.
        for button, label, name in (
            (aligned_button, ALIGNED, "aligned"),
            (not_aligned_button, NOT_ALIGNED, "not_aligned"),
            (skip_button, SKIP, "skip"),
        ):
            button.click(guarded(make_rater(label)), [annotator_box, clip_box], outputs, api_name=name, concurrency_limit=None, trigger_mode="once")
        if logins:
            app.load(lambda request=None: getattr(request, "username", "") or "", None, [annotator_box], api_name=False)
    app.annotation_store = store  # so callers (tests, annotate) can close it
    return app


__all__ = ["KEYBOARD_JS", "ClipServer", "build_annotation_app", "rater_name"]
