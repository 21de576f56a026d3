"""The `convert-tango` stage: TANGO's original checkpoint -> a baton-trainer model folder.

    python -m baton_trainer convert-tango declare-lab/tango-full-ft-audiocaps models/tango-full-ft

The original layout (`main_config.json`, `pytorch_model_*.bin` pickles read with
`weights_only=True`) is mapped onto diffusers' and transformers' classes
(`baton_trainer.backends.tango_original`) and saved in safetensors, atomically.

Imports inside the functions keep `python -m baton_trainer --help` fast: the CLI imports every
stage module at start.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ConvertTangoConfig:
    src: str = field(
        default="", metadata={"positional": True, "help": "original TANGO checkpoint: a folder or Hub id (e.g. declare-lab/tango-full-ft-audiocaps)"}
    )
    dst: str = field(
        default="", metadata={"positional": True, "help": "output folder (diffusers-style, safetensors), loadable with TangoModel.from_pretrained"}
    )
    text_encoder: str | None = field(default=None, metadata={"help": "T5 folder or Hub id for config and tokenizer; default: main_config's text_encoder_name"})
    revision: str | None = field(default=None, metadata={"help": "Hub revision of src"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing dst"})


def convert_tango(config: ConvertTangoConfig) -> Path:
    """Original TANGO checkpoint -> a diffusers-style folder (`TangoModel.save_pretrained`)."""
    from ..atomic import atomic_folder, atomic_write_json
    from ..backends.tango_original import MAIN_CONFIG, TangoCheckpointError, is_original_tango_folder, load_original_tango
    from ..hub import resolve_folder

    if not config.src or not config.dst:
        raise TangoCheckpointError("convert-tango needs SRC and DST (python -m baton_trainer convert-tango SRC DST)")
    src = resolve_folder(config.src, "TANGO checkpoint", config.revision)
    if not is_original_tango_folder(src):
        raise TangoCheckpointError(f"{src}: not an original TANGO checkpoint ({MAIN_CONFIG} missing)")
    dst = Path(config.dst)
    if dst.exists() and any(dst.iterdir()) and not config.overwrite:
        raise TangoCheckpointError(f"{dst}: exists and is not empty; set overwrite=true to replace it")
    model = load_original_tango(src, text_encoder=config.text_encoder)
    model.name_or_path = config.src
    with atomic_folder(dst) as tmp:
        model.save_pretrained(tmp)
        atomic_write_json(tmp / "conversion.json", {"source": config.src, "revision": config.revision, "text_encoder": config.text_encoder})
    print(f"converted {config.src} -> {dst}")
    return dst
