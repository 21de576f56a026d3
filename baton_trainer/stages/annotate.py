"""The `annotate` stage: a Gradio app where people rate generated clips -> RUN/annotations.sqlite.

    python -m baton_trainer annotate --run_dir RUN --ratings_per_clip 3 [--users_file users.txt]

Each person enters a name (or logs in, with a users file), hears a clip, sees its caption and
spectrogram, and answers Aligned / Not aligned / Skip (keys a / n / s). Every answer is committed
to the store before the next clip shows; each clip goes to `ratings_per_clip` different people.
The app is `baton_trainer.annotation.app`, the store `baton_trainer.annotation.store`.

Imports inside the functions keep `python -m baton_trainer --help` fast: the CLI imports every
stage module at start.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..annotation.store import AnnotationError, AnnotationStore
from ..layout import RunLayout


@dataclass
class AnnotateConfig:
    run_dir: str = field(default="run", metadata={"help": "run folder: serves RUN/generations/, stores ratings in RUN/annotations.sqlite"})
    generations_dir: str | None = field(default=None, metadata={"help": "folder with metadata.jsonl and the clips; default RUN/generations"})
    store: str | None = field(default=None, metadata={"help": "annotation store; default RUN/annotations.sqlite"})
    ratings_per_clip: int = field(
        default=3, metadata={"help": "how many different people rate each clip (3 gives a majority without ties; 1 rates the most clips, as the paper)"}
    )
    users_file: str | None = field(
        default=None,
        metadata={"help": "login list, one 'name:HASH' per line (write it with `python -m baton_trainer users`); the login name is the annotator"},
    )
    server_name: str = field(default="127.0.0.1", metadata={"help": "address to listen on (0.0.0.0 for a shared machine)"})
    server_port: int | None = field(default=None, metadata={"help": "port; default: Gradio's (7860 or the next free one)"})
    share: bool = field(default=False, metadata={"help": "open a public gradio.live link"})
    lease_seconds: float = field(
        default=600.0, metadata={"help": "a shown clip is reserved for its annotator this long, so people rating at once hear different clips"}
    )
    spectrogram: bool = field(default=True, metadata={"help": "draw each clip's spectrogram"})

    def __post_init__(self) -> None:
        if self.ratings_per_clip < 1:
            raise AnnotationError(f"config key 'ratings_per_clip' must be >= 1, got {self.ratings_per_clip}")

    def layout(self) -> RunLayout:
        return RunLayout.of(self.run_dir, generations=self.generations_dir, annotations=self.store)


def annotate(config: AnnotateConfig, prevent_thread_lock: bool = False):
    """Register the clips, launch the app, and serve until stopped.

    No file of the server is served (clips go to the browser as content-named copies; the store,
    its WAL, the users file and metadata.jsonl are blocked as well); uploads are refused beyond a few
    kilobytes (the app takes none); failed logins are throttled. With `prevent_thread_lock` the call
    returns the running app (for tests and notebooks; call `.close()` to stop it).
    """
    from ..annotation.app import KEYBOARD_JS, build_annotation_app
    from ..annotation.logins import login_launch_kwargs, read_users_file
    from ..generations import METADATA
    from ..serving import MAX_UPLOAD, private_paths, warn_if_open

    layout = config.layout()
    generations = layout.generations
    if not (generations / METADATA).is_file():
        raise AnnotationError(f"{generations / METADATA}: not found (run the generate stage first)")
    users = read_users_file(config.users_file) if config.users_file else None  # refused before anything starts
    store = AnnotationStore(layout.annotations, lease_seconds=config.lease_seconds)
    app = build_annotation_app(generations, store, config.ratings_per_clip, logins=users is not None, spectrogram=config.spectrogram)
    progress = app.annotation_store.progress("-", config.ratings_per_clip)
    print(
        f"annotating {progress['total_clips']} clips from {generations} ({config.ratings_per_clip} rating(s) per clip, "
        f"{progress['clips_complete']} complete); ratings go to {layout.annotations}"
    )
    warn_if_open(config.server_name, config.share, config.users_file)
    app.queue(default_concurrency_limit=8)
    app.launch(
        server_name=config.server_name,
        server_port=config.server_port,
        share=config.share,
        blocked_paths=private_paths(layout.annotations, config.users_file, generations / METADATA),
        max_file_size=MAX_UPLOAD,
        prevent_thread_lock=prevent_thread_lock,
        js=KEYBOARD_JS,
        footer_links=["api"],
        **login_launch_kwargs(users, "Log in with the name and password you were given."),
    )
    return app
