"""The `annotate` stage: a Gradio app where people rate generated clips against their captions.

    python -m baton_trainer annotate --run_dir RUN --ratings_per_clip 3 [--users_file users.txt]

It serves RUN/generations/ (registered into RUN/annotations.sqlite on start): each person enters a
name (or logs in, with a users file), hears a clip, sees its caption and spectrogram, and answers
Aligned / Not aligned / Skip (keys a / n / s). Every answer is committed to the store before the
next clip shows, each clip goes to `ratings_per_clip` different people, and nobody gets a clip
twice. Only files inside the generations folder are served. A clip whose audio is missing or
unreadable is reported, marked unplayable in the store, and skipped.

Event handlers carry `api_name`s (`/start`, `/aligned`, `/not_aligned`, `/skip`), so the app can
be driven with `gradio_client` as well as in a browser.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# gradio at module level: it resolves the handlers' `gr.Request` annotation (a string here, under
# `from __future__ import annotations`) through this module's globals to inject the login.
import gradio as gr
import numpy as np

from .annotation import ALIGNED, NOT_ALIGNED, SKIP, AnnotationError, AnnotationStore, DuplicateRatingError
from .audio import AudioError, load_audio

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


@dataclass
class AnnotateConfig:
    run_dir: str = field(default="run", metadata={"help": "run folder: serves RUN/generations/, stores ratings in RUN/annotations.sqlite"})
    generations_dir: str | None = field(default=None, metadata={"help": "folder with metadata.jsonl and the clips; default RUN/generations"})
    store: str | None = field(default=None, metadata={"help": "annotation store; default RUN/annotations.sqlite"})
    ratings_per_clip: int = field(
        default=3, metadata={"help": "how many different people rate each clip (3 gives a majority without ties; 1 rates the most clips, as the paper)"}
    )
    users_file: str | None = field(
        default=None, metadata={"help": "optional login list, one 'name:password' per line; the login name becomes the annotator name"}
    )
    server_name: str = field(default="127.0.0.1", metadata={"help": "address to listen on (0.0.0.0 for a shared machine)"})
    server_port: int | None = field(default=None, metadata={"help": "port; default: Gradio's (7860 or the next free one)"})
    share: bool = field(default=False, metadata={"help": "open a public gradio.live link"})
    lease_seconds: float = field(default=600.0, metadata={"help": "a shown clip is reserved for its annotator this long, so people rating at once hear different clips"})
    spectrogram: bool = field(default=True, metadata={"help": "draw each clip's spectrogram"})

    def __post_init__(self) -> None:
        if self.ratings_per_clip < 1:
            raise AnnotationError(f"config key 'ratings_per_clip' must be >= 1, got {self.ratings_per_clip}")

    @property
    def generations_path(self) -> Path:
        return Path(self.generations_dir) if self.generations_dir else Path(self.run_dir) / "generations"

    @property
    def store_path(self) -> Path:
        return Path(self.store) if self.store else Path(self.run_dir) / "annotations.sqlite"


def read_users_file(path: str | Path) -> list[tuple[str, str]]:
    """Logins for Gradio auth: one `name:password` per line, `#` comments and blank lines ignored."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"users file not found: {path}")
    users = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, password = line.partition(":")
        if not sep or not name.strip() or not password:
            raise AnnotationError(f"{path}: line {number} must be 'name:password'")
        users.append((name.strip(), password))
    if not users:
        raise AnnotationError(f"{path}: no 'name:password' lines")
    return users


def spectrogram_image(wav: np.ndarray, sample_rate: int, title: str = "") -> np.ndarray:
    """A log-magnitude spectrogram drawn with matplotlib, as an RGB uint8 array."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # Figure + Agg canvas, not pyplot: pyplot's global state is not safe in Gradio's worker threads.
    figure = Figure(figsize=(8, 2.6), dpi=80)
    canvas = FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    nfft = 512 if len(wav) >= 512 else max(16, 1 << (len(wav).bit_length() - 1))
    with np.errstate(divide="ignore"):  # silent stretches give log10(0); they draw as the floor colour
        axes.specgram(wav, NFFT=nfft, Fs=sample_rate, noverlap=nfft // 2, cmap="magma", scale="dB")
    axes.set_xlabel("time (s)")
    axes.set_ylabel("Hz")
    if title:
        axes.set_title(title, fontsize=9)
    figure.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


class ClipServer:
    """The app's logic, apart from Gradio: hands out clips, checks paths and audio, stores ratings."""

    def __init__(self, config: AnnotateConfig, store: AnnotationStore):
        self.config = config
        self.store = store
        self.root = config.generations_path.resolve()

    def clip_path(self, clip: dict[str, Any]) -> Path:
        """The clip's file, refused if it resolves outside the generations folder."""
        path = (self.root / clip["file_name"]).resolve()
        if not path.is_relative_to(self.root):
            raise AudioError(f"clip {clip['clip_id']}: {clip['file_name']!r} resolves outside {self.root}; not served")
        return path

    def next_playable(self, annotator: str) -> tuple[dict[str, Any] | None, Path | None, np.ndarray | None, int, list[str]]:
        """The next clip for `annotator` whose audio loads; broken clips are marked and reported."""
        problems: list[str] = []
        while True:
            clip = self.store.next_clip_for(annotator, self.config.ratings_per_clip)
            if clip is None:
                return None, None, None, 0, problems
            try:
                path = self.clip_path(clip)
                wav, sr = load_audio(path, what=f"clip {clip['clip_id']} ({clip['file_name']})")
            except AudioError as exc:
                self.store.mark_clip_error(clip["clip_id"], str(exc))
                problems.append(f"Clip {clip['clip_id']} could not be played: {exc}. Moved on to the next clip.")
                continue
            return clip, path, wav, sr, problems

    def progress_text(self, annotator: str) -> str:
        p = self.store.progress(annotator, self.config.ratings_per_clip)
        return (
            f"**{p['annotator']}**: rated {p['rated']} ({p['aligned']} aligned, {p['not_aligned']} not aligned), "
            f"skipped {p['skipped']}; {p['remaining']} clips left for you. "
            f"Campaign: {p['clips_complete']}/{p['total_clips']} clips have {p['ratings_per_clip']} rating(s)"
            + (f", {p['unplayable_clips']} unplayable." if p["unplayable_clips"] else ".")
        )


def _annotator_name(name: str | None, request: Any, logins: bool) -> str:
    if logins:
        username = getattr(request, "username", None) if request is not None else None
        if username:
            return username
    return " ".join(str(name or "").split())


def build_annotation_app(config: AnnotateConfig, store: AnnotationStore | None = None) -> gr.Blocks:
    """The annotation app over an existing store (registers the generations folder's clips)."""
    if store is None:
        store = AnnotationStore(config.store_path, lease_seconds=config.lease_seconds)
    store.register_clips(config.generations_path)
    server = ClipServer(config, store)
    logins = config.users_file is not None

    def show_next(annotator: str, notes: list[str]) -> tuple:
        clip, path, wav, sr, problems = server.next_playable(annotator)
        status = "\n\n".join(notes + problems)
        if clip is None:
            done = "No clips left for you: thank you!"
            return "", f"### {done}", None, None, server.progress_text(annotator), (status + "\n\n" + done).strip()
        image = spectrogram_image(wav, sr) if config.spectrogram else None
        caption = f"### {clip['caption']}\n\n*{clip['task']} task; clip {clip['clip_id']}*"
        return clip["clip_id"], caption, str(path), image, server.progress_text(annotator), status

    def blank(message: str) -> tuple:
        return "", "", None, None, "", message

    def start(name: str, request: gr.Request = None) -> tuple:
        annotator = _annotator_name(name, request, logins)
        if not annotator:
            return blank("Enter your name, then press Start.")
        try:
            return show_next(annotator, [])
        except AnnotationError as exc:
            return blank(str(exc))

    def make_rater(label: int):
        def rate(name: str, clip_id: str, request: gr.Request = None) -> tuple:
            annotator = _annotator_name(name, request, logins)
            if not annotator:
                return blank("Enter your name, then press Start.")
            notes = []
            if clip_id:
                try:
                    server.store.add_rating(clip_id, annotator, label)
                except DuplicateRatingError:
                    notes.append(f"You had already rated clip {clip_id}; the first answer is kept.")
                except AnnotationError as exc:
                    return blank(str(exc))
            try:
                return show_next(annotator, notes)
            except AnnotationError as exc:
                return blank(str(exc))

        return rate

    with gr.Blocks(title="BATON: rate generated audio") as app:
        gr.Markdown(
            "## Does the clip match its caption?\n"
            "Listen to the whole clip. **Aligned** if every sound the caption names is there (in the stated "
            "order, when it states one); **Not aligned** otherwise; **Skip** if you cannot tell. "
            "Keys: **a** aligned, **n** not aligned, **s** skip."
        )
        with gr.Row():
            annotator_box = gr.Textbox(
                label="Your name", placeholder="e.g. alice", scale=3, interactive=not logins, elem_id="baton-annotator",
                info="logged in" if logins else "ratings are stored under this name",
            )
            start_button = gr.Button("Start", variant="primary", scale=1, elem_id="baton-start")
        clip_box = gr.Textbox(label="Clip", interactive=False, elem_id="baton-clip-id")
        caption_md = gr.Markdown(elem_id="baton-caption")
        audio_player = gr.Audio(label="Clip", type="filepath", interactive=False, autoplay=True, elem_id="baton-audio")
        spectrogram = gr.Image(label="Spectrogram", type="numpy", interactive=False, elem_id="baton-spectrogram")
        with gr.Row():
            aligned_button = gr.Button("Aligned (a)", variant="primary", elem_id="baton-aligned")
            not_aligned_button = gr.Button("Not aligned (n)", variant="stop", elem_id="baton-not-aligned")
            skip_button = gr.Button("Skip (s)", elem_id="baton-skip")
        progress_md = gr.Markdown(elem_id="baton-progress")
        status_md = gr.Markdown(elem_id="baton-status")

        outputs = [clip_box, caption_md, audio_player, spectrogram, progress_md, status_md]
        start_button.click(start, [annotator_box], outputs, api_name="start")
        annotator_box.submit(start, [annotator_box], outputs, api_name=False)
        # One rating at a time per browser tab: a double click cannot rate the next clip unseen.
        for button, label, name in (
            (aligned_button, ALIGNED, "aligned"),
            (not_aligned_button, NOT_ALIGNED, "not_aligned"),
            (skip_button, SKIP, "skip"),
        ):
            button.click(make_rater(label), [annotator_box, clip_box], outputs, api_name=name, concurrency_limit=None, trigger_mode="once")
        if logins:
            app.load(lambda request=None: getattr(request, "username", "") or "", None, [annotator_box], api_name=False)
    app.annotation_store = store  # so callers (tests, annotate) can close it
    return app


def annotate(config: AnnotateConfig, prevent_thread_lock: bool = False) -> gr.Blocks:
    """Run the `annotate` stage: register the clips, launch the app, and serve until stopped.

    Only the generations folder is served (`allowed_paths`); with `prevent_thread_lock` the call
    returns the running app (for tests and notebooks; call `.close()` to stop it).
    """
    generations = config.generations_path
    if not (generations / "metadata.jsonl").is_file():
        raise AnnotationError(f"{generations / 'metadata.jsonl'}: not found (run the generate stage first)")
    app = build_annotation_app(config)
    auth = read_users_file(config.users_file) if config.users_file else None
    progress = app.annotation_store.progress("-", config.ratings_per_clip)
    print(
        f"annotating {progress['total_clips']} clips from {generations} ({config.ratings_per_clip} rating(s) per clip, "
        f"{progress['clips_complete']} complete); ratings go to {config.store_path}"
    )
    app.queue(default_concurrency_limit=8)
    app.launch(
        server_name=config.server_name,
        server_port=config.server_port,
        share=config.share,
        auth=auth,
        auth_message="Log in with the name and password you were given." if auth else None,
        allowed_paths=[str(generations.resolve())],
        prevent_thread_lock=prevent_thread_lock,
        js=KEYBOARD_JS,
        footer_links=["api"],
    )
    return app


__all__ = ["AnnotateConfig", "ClipServer", "annotate", "build_annotation_app", "read_users_file", "spectrogram_image"]
