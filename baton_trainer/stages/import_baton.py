"""The `import-baton` stage: the BATON paper's released ratings -> a preference dataset.

    python -m baton_trainer import-baton 2label_HA.json 3label_HA.json 2label_RA.json --audio_root WAVS --out DIR

Human ratings (`*_HA`) become rows with feedback and reward 0/1 (source "human"), the reward-model
files (`*_RA`, an `SED` score) rows with feedback -1 and reward = SED (source "reward_model");
AudioCaps caption lists become a (caption, audio) pretraining dataset. What could not be imported
(missing audio, duplicates, folder/dataset disagreements) is counted in DIR_import_report.json.

Imports inside the functions keep `python -m baton_trainer --help` fast: the CLI imports every
stage module at start.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal


@dataclass
class ImportBatonConfig:
    files: list[str] = field(default_factory=list, metadata={"positional": True, "help": "release JSON files"})
    audio_root: str | None = field(default=None, metadata={"help": "folder searched (recursively) for the wav files by name"})
    out: str = field(default="baton_release_dataset", metadata={"help": "output folder (datasets save_to_disk)"})
    missing_audio: Literal["drop", "keep", "error"] = field(
        default="drop", metadata={"help": "rows whose wav is not found: drop them (reported), keep them without audio, or stop"}
    )


def import_baton_release(config: ImportBatonConfig) -> Path:
    """Release JSON files -> a preference dataset (or a pretrain dataset for AudioCaps lists)."""
    from ..atomic import atomic_write_json
    from ..data import PREFERENCE_FEATURES, PRETRAIN_FEATURES, PreferenceDataError, build_dataset, save_dataset_atomic, validate_preference_dataset
    from ..release import read_release

    if not config.files:
        raise PreferenceDataError("import-baton needs at least one release JSON file")
    audio_index: dict[str, Path] = {}
    if config.audio_root:
        root = Path(config.audio_root)
        if not root.is_dir():
            raise PreferenceDataError(f"--audio_root {root} is not a folder")
        audio_index = {p.name: p for p in root.rglob("*.wav")}
    out = Path(config.out)
    preference, pretrain, report = read_release(config.files, audio_index, config.missing_audio)
    if not preference["caption"] and not pretrain["caption"]:
        missing = sum(counts["missing_audio"] for counts in report["files"].values())
        raise PreferenceDataError(
            f"no row could be imported from {len(config.files)} file(s): {missing} rows' audio was not found under "
            f"--audio_root {config.audio_root} (give the folder that holds the wav files, or --missing_audio keep); {out} is left as it was"
        )
    written = []
    if any(preference["caption"]) or not any(pretrain["caption"]):
        ds = build_dataset(preference, PREFERENCE_FEATURES)
        if config.missing_audio != "keep":
            validate_preference_dataset(ds, name=str(out))
        save_dataset_atomic(ds, out)
        written.append(str(out))
    if pretrain["caption"]:
        pretrain_out = out if not preference["caption"] else out.with_name(out.name + "_pretrain")
        save_dataset_atomic(build_dataset(pretrain, PRETRAIN_FEATURES), pretrain_out)
        written.append(str(pretrain_out))
    report["written"] = written
    atomic_write_json(out.parent / f"{out.name}_import_report.json", report)
    for name, counts in report["files"].items():
        print(
            f"{name}: {counts['imported']}/{counts['rows']} rows imported, {counts['missing_audio']} audio files not found, "
            f"{counts['duplicates']} already imported from an earlier file"
        )
    if report["inconsistencies"]:
        print(f"{len(report['inconsistencies'])} rows whose folder disagrees with their dataset field (see the import report)")
    return out
