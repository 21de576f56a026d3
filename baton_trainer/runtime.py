"""What a process runs on: the torch device it picks and the library versions every run folder
records (TANGO users lost results to version skew: PITFALLS.md)."""

from __future__ import annotations

import importlib.metadata
import platform

VERSIONED_PACKAGES = ("baton-trainer", "torch", "diffusers", "transformers", "accelerate", "peft", "datasets", "numpy")


def pick_device(name: str | None = None):
    """`name` as a torch device, or CUDA when available, else the CPU."""
    import torch

    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def library_versions() -> dict[str, str]:
    """Python's and each library's version ("not installed" for one that is missing)."""
    versions = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def torch_dtype(name: str):
    """The torch dtype of a config's "fp32" | "bf16" | "fp16"."""
    import torch

    if name not in TORCH_DTYPES:
        raise ValueError(f"unknown dtype {name!r} (expected one of {', '.join(TORCH_DTYPES)})")
    return getattr(torch, TORCH_DTYPES[name])
