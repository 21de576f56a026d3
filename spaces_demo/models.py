"""Which models the BATON Space shows, and loading them: the baseline, the aligned export and the
reward model, from settings (a Space's Variables or the command line) or, by default, the toy
world's (a local `runs/toy` run first, else the exports shipped in the package).
The page itself is `spaces_demo/app.py`."""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import reward_hub
from baton_trainer.backends import EXPORT_FILE, TextToAudioBackend, load_backend
from baton_trainer.hub import resolve_folder
from baton_trainer.runtime import pick_device
from baton_trainer.toyworld.models import PRETRAINED_DIR, TOY_TANGO_PATH

NONE_VALUES = {"none", "off", ""}
REPO_ROOT = Path(__file__).resolve().parents[1]


class SpaceError(ValueError):
    """A model or setting the Space cannot use; the message names it."""


@dataclass
class SpaceConfig:
    base_model: str | None = field(
        default=None,
        metadata={
            "help": "baseline model: a folder or Hub id of any model the trainer aligns (TANGO, AudioLDM 2), or an original TANGO checkpoint (env BATON_BASE_MODEL; default: the aligned export's base, else the toy TANGO)"
        },
    )
    aligned_export: str | None = field(
        default=None,
        metadata={
            "help": "trainer export (LoRA adapter or UNet) folder or Hub id (env BATON_ALIGNED_EXPORT; default: runs/toy/aligned or a shipped toy export; 'none': baseline only)"
        },
    )
    reward_model: str | None = field(
        default=None, metadata={"help": "reward model folder or Hub id (env BATON_REWARD_MODEL; default: the toy run's or a shipped one; 'none': no scores)"}
    )
    output_dir: str | None = field(
        default=None,
        metadata={
            "help": "folder in which the Space makes its own baton-space-clips/ for the clips it writes, the only folder it serves and prunes (env BATON_OUTPUT_DIR)"
        },
    )
    device: str | None = field(default=None, metadata={"help": "torch device (env BATON_DEVICE; default cuda when available, else cpu)"})
    default_steps: int | None = field(
        default=None, metadata={"help": "sampling steps the page starts with (env BATON_DEFAULT_STEPS; default 25 for the toy model, else 50)"}
    )
    host: str | None = field(default=None, metadata={"help": "address to listen on (default: Gradio's, 0.0.0.0 on Spaces)"})
    port: int | None = field(default=None, metadata={"help": "port (default: Gradio's, 7860)"})
    share: bool = field(default=False, metadata={"help": "open a public gradio.live link"})

    @classmethod
    def from_env(cls, **overrides: Any) -> "SpaceConfig":
        """Environment variables first, then non-None `overrides` (CLI arguments) on top."""
        env = {
            "base_model": os.environ.get("BATON_BASE_MODEL"),
            "aligned_export": os.environ.get("BATON_ALIGNED_EXPORT"),
            "reward_model": os.environ.get("BATON_REWARD_MODEL"),
            "output_dir": os.environ.get("BATON_OUTPUT_DIR"),
            "device": os.environ.get("BATON_DEVICE"),
            "default_steps": os.environ.get("BATON_DEFAULT_STEPS"),
        }
        values = {k: v for k, v in env.items() if v is not None}
        values.update({k: v for k, v in overrides.items() if v is not None})
        for key in ("port", "default_steps"):
            if values.get(key) is not None:
                try:
                    values[key] = int(values[key])
                except ValueError:
                    raise SpaceError(f"setting '{key}' must be a whole number, got {values[key]!r}") from None
        return cls(**values)


def _toy_pretrained() -> Path:
    return PRETRAINED_DIR


def _toy_run_dirs() -> list[Path]:
    """`runs/toy` of the default run, relative to the working directory or this checkout."""
    seen: list[Path] = []
    for root in (Path.cwd(), REPO_ROOT):
        run = (root / "runs" / "toy").resolve()
        if run not in seen:
            seen.append(run)
    return seen


def _is_export(folder: Path) -> bool:
    return (folder / EXPORT_FILE).is_file()


def _is_reward_model(folder: Path) -> bool:
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type") == "baton_reward"
    except (OSError, json.JSONDecodeError):
        return False


def _shipped(predicate) -> list[Path]:
    folder = _toy_pretrained()
    return sorted(p for p in folder.iterdir() if p.is_dir() and predicate(p)) if folder.is_dir() else []


def default_aligned_exports() -> list[Path]:
    """Candidate aligned exports, best first: the local toy run's, then any shipped in the package."""
    return [run / "aligned" for run in _toy_run_dirs() if _is_export(run / "aligned")] + _shipped(_is_export)


def default_reward_models() -> list[Path]:
    return [run / "reward_model" for run in _toy_run_dirs() if _is_reward_model(run / "reward_model")] + _shipped(_is_reward_model)


def export_base(export: Path) -> str | None:
    """The base model an export was trained from, as recorded by `save_trained`; a relative path
    that names a folder beside the export (the shipped toy export's "../toy_tango") is resolved."""
    try:
        base = json.loads((export / EXPORT_FILE).read_text(encoding="utf-8")).get("base")
    except (OSError, json.JSONDecodeError):
        return None
    if base and not Path(base).is_absolute() and (export / base).is_dir():
        return str((export / base).resolve())
    return base


def _same_model(a: str | None, b: str | None) -> bool:
    if not a or not b:
        return False
    pa, pb = Path(a), Path(b)
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return a.rstrip("/") == b.rstrip("/")


def _local_folder(name_or_repo: str, what: str) -> Path:
    try:
        return resolve_folder(name_or_repo, what)
    except FileNotFoundError as exc:
        raise SpaceError(str(exc)) from None


@dataclass
class ResolvedModels:
    """Which model, export and reward model the Space uses, and why (notes shown on the page)."""

    base_model: str
    aligned_export: str | None
    reward_model: str | None
    notes: list[str] = field(default_factory=list)


def resolve_models(config: SpaceConfig) -> ResolvedModels:
    """Fill in the defaults: an aligned export is only taken by default if it was trained from the
    base model in use (a toy adapter does not fit a real TANGO UNet)."""
    notes: list[str] = []
    base = config.base_model
    aligned = config.aligned_export
    if aligned is not None and aligned.strip().lower() in NONE_VALUES:
        aligned = None
        notes.append("No aligned model (turned off): only the baseline is shown.")
    elif aligned is None:
        for candidate in default_aligned_exports():
            recorded = export_base(candidate)
            if base is None or _same_model(recorded, base):
                aligned = str(candidate)
                base = base or recorded
                break
        if aligned is None:
            notes.append(
                "No aligned model found (set BATON_ALIGNED_EXPORT, or run `python -m baton_trainer` to train the toy world's): only the baseline is shown."
            )
    elif base is None:
        base = export_base(_local_folder(aligned, "aligned export"))
    if base is None:
        base = str(TOY_TANGO_PATH)

    reward = config.reward_model
    if reward is not None and reward.strip().lower() in NONE_VALUES:
        reward = None
        notes.append("No reward model (turned off): clips are not scored.")
    elif reward is None:
        found = default_reward_models()
        reward = str(found[0]) if found else None
        if reward is None:
            notes.append("No reward model found (set BATON_REWARD_MODEL): clips are not scored.")
    return ResolvedModels(base, aligned, reward, notes)


def load_aligned(base: TextToAudioBackend, export: str | Path) -> TextToAudioBackend:
    """The base model with a trainer export applied, sharing the base's VAE, text encoder and
    vocoder (the export changes the UNet only), so the Space holds one copy of the frozen parts."""
    folder = _local_folder(str(export), "aligned export")
    if not _is_export(folder):
        raise SpaceError(f"aligned export '{export}': no {EXPORT_FILE} (expected a folder written by the finetune stage)")
    mode = json.loads((folder / EXPORT_FILE).read_text(encoding="utf-8")).get("mode")
    # A second pipeline over the same components (diffusers' from_pipe); the adapter is injected
    # into the UNet in place, so under LoRA the aligned model gets its own copy of the UNet.
    aligned = base.with_denoiser(copy.deepcopy(base.denoiser) if mode == "lora" else base.denoiser)
    try:
        aligned.load_trained(folder)
    except (OSError, ValueError, RuntimeError) as exc:  # e.g. an export trained from another base model
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SpaceError(f"aligned export '{export}' does not load onto base '{base.name_or_path}': {message}") from None
    aligned.name_or_path = str(export)
    return aligned.eval()


def load_models(config: SpaceConfig) -> tuple[TextToAudioBackend, TextToAudioBackend | None, Any, list[str]]:
    """(baseline, aligned or None, reward model or None, notes) for `config`."""
    resolved = resolve_models(config)
    device = pick_device(config.device)
    try:
        base = load_backend(resolved.base_model, device=device)
    except (OSError, ValueError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SpaceError(f"base model '{resolved.base_model}': {message} (set BATON_BASE_MODEL or --base_model)") from None
    aligned = load_aligned(base, resolved.aligned_export) if resolved.aligned_export else None
    reward = None
    if resolved.reward_model:
        try:
            reward = reward_hub.load(resolved.reward_model, device=device)
        except (OSError, ValueError) as exc:
            raise SpaceError(f"reward model '{resolved.reward_model}': {exc}".splitlines()[0]) from None
    return base, aligned, reward, resolved.notes
