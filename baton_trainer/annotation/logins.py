"""Logins for the rating and listening apps: the users file, password checks, and a throttle on
failed logins.

    users = read_users_file("users.txt")                  # {name: bcrypt hash or password}
    app.launch(**login_launch_kwargs(users, "Log in ..."))   # auth + the throttle

The users file holds one `name:secret` per line (`#` comments and blank lines ignored). A secret is
a bcrypt hash (`$2b$...`, written by `python -m baton_trainer users --users_file F --add NAME`), an
argon2 hash (`$argon2id$...`, checked when `argon2-cffi` is installed) or, discouraged, a plain
password (a warning says so). The file is refused at start-up when a name appears twice or is a
name the rating store would refuse, and a warning is printed when others can read it.

Failed logins are throttled per name and per client address (Gradio's login route has no limit),
by an ASGI middleware around Gradio's `/login`: after `max_failures` failures within `window_s`,
that name or client gets HTTP 429 "too many attempts" until the window has passed.
"""

from __future__ import annotations

import hmac
import json
import os
import stat
import threading
import time
import warnings
from collections import defaultdict, deque
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs

import bcrypt
from starlette.middleware import Middleware

from ..atomic import atomic_write_text
from ..textfiles import numbered_lines
from .store import AnnotationError, _clean_annotator

BCRYPT_PREFIXES = ("$2a$", "$2b$", "$2y$")
ARGON2_PREFIX = "$argon2"


def _is_hash(secret: str) -> bool:
    return secret.startswith(BCRYPT_PREFIXES) or secret.startswith(ARGON2_PREFIX)


def read_users_file(path: str | Path) -> dict[str, str]:
    """`{name: secret}` from a users file; refuses duplicates and names the store would refuse."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"users file not found: {path}")
    if os.name == "posix" and path.stat().st_mode & (stat.S_IRGRP | stat.S_IROTH):
        warnings.warn(f"{path} can be read by other users of this machine: chmod 600 {path}", stacklevel=2)
    users: dict[str, str] = {}
    for number, line in numbered_lines(path, "users file"):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, secret = line.partition(":")
        name = name.strip()
        if not sep or not name or not secret:
            raise AnnotationError(f"{path}: line {number} must be 'name:password' or 'name:HASH'")
        try:
            clean = _clean_annotator(name)
        except AnnotationError as exc:
            raise AnnotationError(f"{path}: line {number}: {exc}") from None
        if clean != name:
            raise AnnotationError(f"{path}: line {number}: name {name!r} would be stored as {clean!r}; write it that way")
        if name in users:
            raise AnnotationError(f"{path}: line {number}: name {name!r} appears twice; each person needs one line")
        if secret.startswith(ARGON2_PREFIX):
            _argon2()  # fails now, naming the package, rather than at the first login
        users[name] = secret
    if not users:
        raise AnnotationError(f"{path}: no 'name:password' lines")
    plain = [name for name, secret in users.items() if not _is_hash(secret)]
    if plain:
        warnings.warn(
            f"{path}: {len(plain)} plain-text password(s) (e.g. {plain[0]!r}); store hashes instead: "
            f"python -m baton_trainer users --users_file {path} --add NAME",
            stacklevel=2,
        )
    return users


def _argon2():
    try:
        from argon2 import PasswordHasher  # optional: argon2-cffi, only for users files holding argon2 hashes
    except ImportError:
        raise AnnotationError("the users file holds argon2 hashes: pip install argon2-cffi (or use bcrypt hashes)") from None
    return PasswordHasher()


def check_password(secret: str, password: str) -> bool:
    """Whether `password` matches `secret` (a bcrypt or argon2 hash, or a plain password)."""
    if secret.startswith(BCRYPT_PREFIXES):
        try:
            return bcrypt.checkpw(password.encode("utf-8"), secret.encode("ascii"))
        except ValueError:  # a malformed hash or a password over bcrypt's 72 bytes
            return False
    if secret.startswith(ARGON2_PREFIX):
        try:
            return bool(_argon2().verify(secret, password))
        except Exception:  # argon2's VerifyMismatchError, InvalidHashError
            return False
    return hmac.compare_digest(secret.encode("utf-8"), password.encode("utf-8"))


def hash_password(password: str, rounds: int = 12) -> str:
    """A bcrypt hash for the users file."""
    if not password:
        raise AnnotationError("empty password")
    if len(password.encode("utf-8")) > 72:
        raise AnnotationError("bcrypt uses at most 72 bytes of a password: choose a shorter one")
    return bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt(rounds=rounds)).decode("ascii")


def authenticator(users: dict[str, str]) -> Callable[[str, str], bool]:
    """Gradio's `auth` callable over a users dict."""

    def auth(username: str, password: str) -> bool:
        secret = users.get(str(username))
        return secret is not None and check_password(secret, str(password))

    return auth


class LoginThrottle:
    """ASGI middleware: at most `max_failures` failed logins per name and per client address in
    `window_s` seconds; beyond, HTTP 429 without checking the password.

    Written here because Gradio's `/login` route has no limit and no hook that sees the client."""

    def __init__(self, app: Any, max_failures: int = 5, window_s: float = 60.0):
        self.app = app
        self.max_failures = int(max_failures)
        self.window_s = float(window_s)
        self.failures: dict[str, deque[float]] = defaultdict(deque)
        self.lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self.failures[key]
        while times and times[0] <= now - self.window_s:
            times.popleft()
        return times

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"].rstrip("/").rsplit("/", 1)[-1] != "login":
            await self.app(scope, receive, send)
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > 64 * 1024:  # a login form is tiny
                await self._reply(send, 413, "login form too large")
                return
        name = (parse_qs(body.decode("utf-8", "replace")).get("username") or [""])[0].strip()
        client = (scope.get("client") or ("?", 0))[0]
        keys = [f"name:{name}", f"client:{client}"]
        now = time.monotonic()
        with self.lock:
            waits = [times[0] + self.window_s - now for key in keys if len(times := self._recent(key, now)) >= self.max_failures]
        if waits:
            await self._reply(send, 429, f"too many attempts: wait {max(1, round(max(waits)))} s and try again")
            return
        status = {}

        async def replay() -> dict:
            return {"type": "http.request", "body": body, "more_body": False}

        async def watch(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        await self.app(scope, replay, watch)
        if status.get("code", 200) >= 400:
            with self.lock:
                for key in keys:
                    self._recent(key, now).append(now)

    @staticmethod
    async def _reply(send: Callable, code: int, detail: str) -> None:
        body = json.dumps({"detail": detail}).encode()
        await send({"type": "http.response.start", "status": code, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})


def login_launch_kwargs(users: dict[str, str] | None, message: str) -> dict[str, Any]:
    """`Blocks.launch` keyword arguments for logins from `users` (none when `users` is None)."""
    if not users:
        return {}
    return {"auth": authenticator(users), "auth_message": message, "app_kwargs": {"middleware": [Middleware(LoginThrottle)]}}


def add_user(users_file: str | Path, name: str, password: str, rounds: int = 12) -> None:
    """Add `name` (or replace its line) with a bcrypt hash of `password`; the file is written
    atomically, readable by its owner only."""
    path = Path(users_file)
    clean = _clean_annotator(name)
    if clean != name or ":" in name:
        raise AnnotationError(f"name {name!r}: use letters, digits and single spaces, without ':'")
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    kept = [line for line in lines if line.partition(":")[0].strip() != name]
    kept.append(f"{name}:{hash_password(password, rounds)}")
    atomic_write_text(path, "\n".join(kept) + "\n")
    os.chmod(path, 0o600)


__all__ = ["LoginThrottle", "add_user", "authenticator", "check_password", "hash_password", "login_launch_kwargs", "read_users_file"]
