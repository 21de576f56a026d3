"""What the three web apps (rating, listening test, Space) share to stay safe on a network:
one-line client messages without server paths, a Blocks whose errors are never empty, files handed
to the browser without serving any file of the server, and the paths Gradio must never serve.
The threat model is docs/security.md."""

from __future__ import annotations

import atexit
import functools
import hashlib
import io
import logging
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import gradio as gr
import numpy as np
import soundfile
from PIL import Image

from .atomic import atomic_write_bytes

# An absolute path in a message: the server's folders are nobody else's business.
ABSOLUTE_PATH = re.compile(r"(?<![\w.~/])(?:/[^\s'\"/:,;)\]]+)+/?")


def client_message(text: Any) -> str:
    """What may go to a client of an error: its first non-empty line, absolute paths replaced,
    at most 300 characters."""
    line = next((ln.strip() for ln in str(text).splitlines() if ln.strip()), "")
    return ABSOLUTE_PATH.sub("<path>", line)[:300]


logger = logging.getLogger(__name__)


def one_line_errors(handler: Callable[..., tuple], reply: Callable[[str], tuple], refused: type[Exception], failure: str) -> Callable[..., tuple]:
    """`handler` as a Gradio event whose every answer is one line for the client: a `refused`
    input answers `reply(client_message(exc))`; anything else is logged here (with its traceback)
    and answers `reply(failure)`.

    Its `request` parameter, if any, gets the class `gr.Request` as annotation: Gradio passes the
    login to the parameter so annotated, and resolves a string annotation (`from __future__ import
    annotations`) in the handler's module, where gradio may be imported lazily, not at the top."""
    if "request" in handler.__annotations__:
        handler.__annotations__["request"] = gr.Request

    @functools.wraps(handler)
    def run(*args: Any, **kwargs: Any) -> tuple:
        try:
            return handler(*args, **kwargs)
        except refused as exc:
            return reply(client_message(exc))
        except Exception:
            logger.exception("%s: unexpected error", handler.__qualname__)
            return reply(failure)

    return run


class OneLineErrorBlocks(gr.Blocks):
    """gr.Blocks whose events never answer a client with Gradio's empty error (`{"error": null}`,
    what Gradio sends for any exception but gr.Error unless `show_error`): an exception Gradio
    itself raises on a malformed request (too few inputs, a value a component cannot take)
    reaches the client as one line without server paths; the server log keeps the traceback."""

    async def process_api(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            return await super().process_api(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as exc:
            message = client_message(str(exc)) or type(exc).__name__
            raise gr.Error(f"The request could not be processed: {message}", title="Bad request") from exc


class ServedFiles:
    """What an app hands to the browser, as files of its own in a temporary folder it owns, named
    by their content (so they say nothing of a clip's origin) and written atomically.

    Why not return arrays to Gradio: Gradio 6 writes an array into its cache under a name made
    from its content and rewrites that file on every return, so two people sent the same clip at
    once could download it half-written. Files are copied into the cache under a temporary name
    and renamed, and a copy that exists is reused."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="baton-served-"))
        atexit.register(shutil.rmtree, self.folder, True)

    def _file(self, data: bytes, suffix: str) -> str:
        path = self.folder / f"{hashlib.sha256(data).hexdigest()[:32]}{suffix}"
        if not path.is_file():
            atomic_write_bytes(path, data)
        return str(path)

    def audio(self, wav: np.ndarray, sr: int) -> str:
        """16-bit PCM WAV (float audio is clipped to [-1, 1]; int16 audio is kept as it is)."""
        if wav.dtype != np.int16:
            wav = np.round(np.clip(wav, -1.0, 1.0) * 32767).astype(np.int16)
        buffer = io.BytesIO()
        soundfile.write(buffer, wav, int(sr), format="WAV", subtype="PCM_16")
        return self._file(buffer.getvalue(), ".wav")

    def image(self, pixels: np.ndarray) -> str:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        return self._file(buffer.getvalue(), ".png")


# The apps take no uploads; Gradio's upload route stays open, so anything beyond this is refused.
MAX_UPLOAD = "4kb"


def private_paths(store, users_file, *more) -> list[str]:
    """What Gradio must never serve, whatever folder layout the operator chose: the store with its
    -wal and -shm files, the users file, and the given files (defence in depth: the apps serve no
    server file anyway)."""
    store = Path(store).resolve()
    paths = [store, store.with_name(store.name + "-wal"), store.with_name(store.name + "-shm"), *(Path(p).resolve() for p in more)]
    if users_file:
        paths.append(Path(users_file).resolve())
    return [str(p) for p in paths]


def warn_if_open(server_name: str, share: bool, users_file: str | None) -> None:
    """Say so when an app without logins is reachable beyond this machine: anyone with the address
    can then answer under any name."""
    if users_file is None and (share or server_name not in ("127.0.0.1", "localhost", "::1")):
        warnings.warn(
            f"serving on {'a public gradio.live link' if share else server_name} without --users_file: anyone who reaches it can "
            "answer under any name (see docs/security.md)",
            stacklevel=2,
        )


__all__ = ["ABSOLUTE_PATH", "MAX_UPLOAD", "OneLineErrorBlocks", "ServedFiles", "client_message", "one_line_errors", "private_paths", "warn_if_open"]
