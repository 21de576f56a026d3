"""Reading weight files that other projects publish (PANNs, VGGish, TANGO's `.bin` files) and
loading them into our modules strictly: pickles load with `torch.load(weights_only=True)` only,
safetensors with safetensors, and every problem is one line naming the file and the key."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

import numpy as np
import torch
from safetensors.torch import load_file


class WeightFileError(ValueError):
    """A checkpoint file that does not hold the expected weights; the message names the file and key."""


T = TypeVar("T")


def load_pretrained(load: Callable[[str], T], folder: str | os.PathLike, what: str) -> T:
    """`load(folder)` (a `from_pretrained`), with a missing or malformed folder turned into one line
    naming it instead of the library's traceback (a SafetensorError, a JSONDecodeError, ...)."""
    try:
        return load(str(folder))
    except Exception as exc:  # whatever the library raises for a bad file: name the folder and the reason
        reason = (str(exc).splitlines() or [""])[0]
        raise WeightFileError(f"{folder}: cannot be loaded as {what} ({type(exc).__name__}: {reason})") from None


def _resolve_global(name: str) -> Any:
    module_name, _, attribute = name.rpartition(".")
    return getattr(importlib.import_module(module_name), attribute)


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # UnpicklingError for globals outside the weights-only allowlist
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception:
            unsafe = []
        # Training checkpoints sometimes carry NumPy arrays beside the weights (PANNs saved its
        # sampler state): those NumPy reconstructors, and nothing else, are allowed on a second try.
        if not unsafe or not all(name.startswith("numpy.") for name in unsafe):
            raise
        # dtype objects pickle through their numpy.dtypes.*DType classes, which the scan does not list.
        dtype_classes = [getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith("DType")]
        with torch.serialization.safe_globals([_resolve_global(name) for name in unsafe] + dtype_classes):
            return torch.load(path, map_location="cpu", weights_only=True)


def load_state_dict_file(path: str | os.PathLike, what: str = "model", error: type[ValueError] = WeightFileError) -> dict[str, torch.Tensor]:
    """The tensors of a `.safetensors`, `.pt`, `.pth` or `.bin` file. Checkpoints that wrap the
    weights as `{"model": ...}` (PANNs training checkpoints) or `{"state_dict": ...}` are unwrapped."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: not found (the {what} weights)")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = _torch_load(path)
    except Exception as exc:  # refused pickles, truncated or foreign files
        reason = (str(exc).splitlines() or [""])[0]
        raise error(f"{path}: cannot be read as {what} weights ({type(exc).__name__}: {reason})") from None
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise error(f"{path}: expected a state dict of {what} tensors")
    return state


def first_keys(keys: Iterable[str], n: int = 5) -> str:
    """The first `n` keys in sorted order, and how many more there are."""
    keys = sorted(keys)
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_state_strict(
    module: torch.nn.Module,
    state: dict[str, torch.Tensor],
    what: str,
    optional: Iterable[str] = (),
    assign: bool = False,
    error: type[ValueError] = WeightFileError,
) -> None:
    """`load_state_dict` that names the first missing, unexpected or mis-shaped keys in one line.

    `optional` keys may be absent (tied weights); `assign=True` replaces meta-device parameters."""
    optional = set(optional)
    expected = module.state_dict()
    missing = [k for k in expected if k not in state and k not in optional]
    unexpected = [k for k in state if k not in expected]
    parts = ([f"missing keys: {first_keys(missing)}"] if missing else []) + ([f"unexpected keys: {first_keys(unexpected)}"] if unexpected else [])
    if parts:
        raise error(f"{what}: {'; '.join(parts)}")
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise error(f"{what}: key {key} has shape {tuple(value.shape)}, the model expects {tuple(expected[key].shape)} (config mismatch?)")
    module.load_state_dict(state, strict=False, assign=assign)
