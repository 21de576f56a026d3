"""Text-to-audio models the trainer aligns, behind `TextToAudioBackend` (`base.py`).

    backend = load_backend("declare-lab/tango-full-ft-audiocaps", export="RUN/aligned")

`load_backend` reads a model folder or Hub id and picks its adapter from what the folder holds: a
diffusers pipeline folder by the pipeline class its `model_index.json` names (`BACKENDS`), a folder
of this project's first layout (`baton_model.json`), or TANGO's original checkpoint layout
(`main_config.json`, converted on the fly by `tango_original.py`). A new model is one adapter file
and one line in `BACKENDS` (docs/backends.md).
"""

from __future__ import annotations

import importlib
import json
import os

from ..hub import resolve_folder
from .base import EXPORT_FILE, TextConditioning, TextToAudioBackend

# What a Hub snapshot of a model folder needs (weights, configs, tokenizer files, component code).
_MODEL_FILES = ["*.json", "*.safetensors", "*.bin", "*.model", "*.txt", "*.py", "*/*"]
# diffusers pipeline class (model_index.json's _class_name) -> "module:adapter class"
BACKENDS = {
    "TangoPipeline": "baton_trainer.backends.tango:TangoModel",
    "AudioLDM2Pipeline": "baton_trainer.backends.audioldm2:AudioLDM2Model",
    "StableAudioPipeline": "baton_trainer.backends.stable_audio:StableAudioModel",
    "StableAudio3Pipeline": "baton_trainer.backends.stable_audio_3:StableAudio3Model",
    "LongCatAudioDiTPipeline": "baton_trainer.backends.longcat_audio_dit:LongCatAudioDiTModel",
    "AceStepPipeline": "baton_trainer.backends.ace_step:AceStepModel",
}


def backend_class(pipeline_class: str) -> type:
    """The adapter for a diffusers pipeline class name."""

    if pipeline_class not in BACKENDS:
        raise ValueError(f"no backend for diffusers pipeline {pipeline_class!r} (known: {', '.join(BACKENDS)})")
    module_name, class_name = BACKENDS[pipeline_class].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def load_backend(
    name_or_path: str | os.PathLike,
    export: str | os.PathLike | None = None,
    device=None,
    torch_dtype=None,
    revision: str | None = None,
) -> TextToAudioBackend:
    """The model at `name_or_path` (a folder or Hub id, either TANGO layout), on `device` in
    `torch_dtype`, with a trained export (a folder or Hub id) applied when given."""
    # lazy, as the adapters in BACKENDS: a config check imports this package (through the
    # objectives and backends.base), and diffusers and transformers load with the model
    from .tango import LEGACY_MODEL_FILE, TangoModel
    from .tango_original import MAIN_CONFIG, is_original_tango_folder, load_original_tango

    folder = resolve_folder(name_or_path, "model", revision, allow_patterns=_MODEL_FILES)
    if (folder / "model_index.json").is_file():
        try:
            named = json.loads((folder / "model_index.json").read_text(encoding="utf-8")).get("_class_name")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
            raise ValueError(f"{folder / 'model_index.json'}: not a diffusers pipeline index ({exc})") from None
        model = backend_class(named[1] if isinstance(named, list) else str(named)).from_pretrained(folder)
    elif (folder / LEGACY_MODEL_FILE).is_file():
        model = TangoModel.from_pretrained(folder)
    elif is_original_tango_folder(folder):
        model = load_original_tango(folder)
    else:
        raise FileNotFoundError(
            f"{folder}: neither a diffusers pipeline folder (model_index.json), a baton-trainer model ({LEGACY_MODEL_FILE}), "
            f"nor an original TANGO checkpoint ({MAIN_CONFIG})"
        )
    model.name_or_path = str(name_or_path)
    return model.prepare(export, device, torch_dtype)


__all__ = ["BACKENDS", "EXPORT_FILE", "TextConditioning", "TextToAudioBackend", "backend_class", "load_backend"]
