"""The `users` stage: add a login, with a bcrypt-hashed password, to a users file.

    python -m baton_trainer users --users_file users.txt --add alice

Asks for the password twice (or reads one line from standard input when it is not a terminal, for
scripts), and writes `alice:$2b$...` to the file, replacing an earlier line for that name; the
file is written atomically and readable by its owner only. `annotate` and `listen` take the file
with `--users_file`. The checks are `baton_trainer.annotation.logins`.

Imports inside the functions keep `python -m baton_trainer --help` fast: the CLI imports every
stage module at start.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class UsersConfig:
    users_file: str = field(default="users.txt", metadata={"help": "the users file to write (created if missing)"})
    add: str = field(default="", metadata={"help": "the login name to add or replace"})


def add_login(config: UsersConfig) -> None:
    import getpass
    import sys

    from ..annotation.logins import add_user
    from ..annotation.store import AnnotationError

    if not config.add:
        raise AnnotationError("name the login to add: --add NAME")
    if sys.stdin.isatty():
        password = getpass.getpass(f"password for {config.add}: ")
        if getpass.getpass("again: ") != password:
            raise AnnotationError("the two passwords differ; nothing written")
    else:
        password = sys.stdin.readline().rstrip("\n")
    add_user(config.users_file, config.add, password)
    print(f"{config.users_file}: login {config.add!r} written (bcrypt hash; file readable by its owner only)")
