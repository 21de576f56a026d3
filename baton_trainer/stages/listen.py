"""The `listen` stage: a blinded listening test over the evaluate stage's clips, and its export.

    python -m baton_trainer listen --run_dir RUN --mode ab --models base,aligned --users_file users.txt  # serve the test
    python -m baton_trainer listen --run_dir RUN --mode ab --models base,aligned --export   # the numbers

Modes: `mos_q` (quality, 1-5), `mos_f` (faithfulness to the caption, 1-5), `ab` (which of two
models' clips of the same caption and seed matches it better). Answers go into the run's
annotation store (RUN/annotations.sqlite); the export writes RUN/eval/listening/, merges MOS and
win rates into RUN/eval/metrics.json (and so into the aligned model's card) and saves the trials
and answers as a dataset folder. The app and the statistics are `baton_trainer.annotation.listening`.

Imports inside the functions keep `python -m baton_trainer --help` fast: the CLI imports every
stage module at start.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..layout import RunLayout


@dataclass
class ListenConfig:
    run_dir: str = field(default="run", metadata={"help": "run folder: serves RUN/eval/clips/, stores answers in RUN/annotations.sqlite"})
    mode: Literal["mos_q", "mos_f", "ab"] = field(default="ab", metadata={"help": "mos_q (quality), mos_f (faithfulness) or ab (preference)"})
    models: str = field(default="base,aligned", metadata={"help": "comma list of models in RUN/eval/clips/ (exactly two for ab)"})
    max_trials: int | None = field(default=None, metadata={"help": "at most this many test trials (a seeded sample of the clips)"})
    seed: int = field(default=0, metadata={"help": "draws the A/B sides, the sample and the attention checks"})
    export: bool = field(default=False, metadata={"help": "write the results instead of serving the test"})
    server_name: str = field(default="127.0.0.1", metadata={"help": "address to listen on (0.0.0.0 for a shared machine)"})
    server_port: int | None = None
    users_file: str | None = field(
        default=None, metadata={"help": "login list, one 'name:HASH' per line (`python -m baton_trainer users`); the login name is the rater"}
    )
    share: bool = field(default=False, metadata={"help": "open a public gradio.live link (use a users file then)"})

    def layout(self) -> RunLayout:
        return RunLayout.of(self.run_dir)


def listen(config: ListenConfig, prevent_thread_lock: bool = False):
    from ..annotation.listening import ListeningStore, build_campaign, build_listening_app, export_results
    from ..annotation.logins import login_launch_kwargs, read_users_file

    layout = config.layout()
    users = read_users_file(config.users_file) if config.users_file and not config.export else None
    store = ListeningStore(layout.annotations)
    campaign = build_campaign(
        store, layout.eval, config.mode, [m.strip() for m in config.models.split(",") if m.strip()], seed=config.seed, max_trials=config.max_trials
    )
    if config.export:
        path = export_results(store, campaign, layout.eval)
        print(path.with_suffix(".md").read_text(encoding="utf-8"))
        return path
    from ..serving import MAX_UPLOAD, private_paths, warn_if_open  # gradio: only serving needs it

    app = build_listening_app(store, campaign, layout.eval, logins=users is not None)
    print(f"listening test {campaign}: {len(store.trials(campaign))} trials; answers go to {layout.annotations}")
    warn_if_open(config.server_name, config.share, config.users_file)
    app.queue(default_concurrency_limit=8)
    app.launch(
        server_name=config.server_name,
        server_port=config.server_port,
        share=config.share,
        blocked_paths=private_paths(layout.annotations, config.users_file),
        max_file_size=MAX_UPLOAD,
        prevent_thread_lock=prevent_thread_lock,
        **login_launch_kwargs(users, "Log in with the name and password you were given."),
    )
    return app
