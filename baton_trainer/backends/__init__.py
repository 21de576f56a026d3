"""Text-to-audio models the trainer aligns, behind `TextToAudioBackend` (`base.py`).

    backend = load_backend("declare-lab/tango-full-ft-audiocaps", export="RUN/aligned")

`load_backend` reads a model folder or Hub id and picks its loader from what the folder holds:
a baton-trainer TANGO folder (`baton_model.json`, `tango.py`) or TANGO's original checkpoint
layout (`main_config.json`, `tango_original.py`, converted on the fly).
"""

from __future__ import annotations

import os

from .base import EXPORT_FILE, TextConditioning, TextToAudioBackend

# What a Hub snapshot of either TANGO layout needs (weights, configs, tokenizer files).
_MODEL_FILES = ["*.json", "*.safetensors", "*.bin", "*.model", "*.txt", "*/*"]


def load_backend(
    name_or_path: str | os.PathLike,
    export: str | os.PathLike | None = None,
    device=None,
    torch_dtype=None,
    revision: str | None = None,
) -> TextToAudioBackend:
    """The model at `name_or_path` (a folder or Hub id, either TANGO layout), on `device` in
    `torch_dtype`, with a trained export (a folder or Hub id) applied when given."""
    from ..hub import resolve_folder
    from .tango import MODEL_FILE, TangoModel
    from .tango_original import MAIN_CONFIG, is_original_tango_folder, load_original_tango

    folder = resolve_folder(name_or_path, "model", revision, allow_patterns=_MODEL_FILES)
    if (folder / MODEL_FILE).is_file():
        model = TangoModel.from_pretrained(folder)
    elif is_original_tango_folder(folder):
        model = load_original_tango(folder)
    else:
        raise FileNotFoundError(
            f"{folder}: neither a baton-trainer model ({MODEL_FILE}) nor an original TANGO checkpoint ({MAIN_CONFIG})"
        )
    model.name_or_path = str(name_or_path)
    return model.prepare(export, device, torch_dtype)


__all__ = ["EXPORT_FILE", "TextConditioning", "TextToAudioBackend", "load_backend"]
