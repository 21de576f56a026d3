"""Typed stage configs: a dataclass per stage, filled from a YAML file plus command-line overrides.

Each stage module defines its own `...Config` dataclass beside the function that runs it (as TRL
keeps a Config beside each Trainer). This module only turns YAML and `--key value` pairs into
such a dataclass, checking names and types so that a typo is a one-line error, not a silent default.

    cfg = parse_config(FinetuneConfig, ["--config", "my.yaml", "--learning_rate", "2e-5"])

Nested dataclasses take dotted keys (`--reward.epochs 5`); a field whose metadata has
`positional=True` takes the bare arguments (`import-baton A.json B.json --out DIR`). A class's
`RENAMED_KEYS` ({old: new}) keeps renamed keys working, with a deprecation warning.

Written here rather than taken from argparse, HfArgumentParser or OmegaConf: none of them reads a
YAML file, dotted overrides and positional arguments into nested dataclasses with one error that
names the key, in a few hundred lines and no extra dependency.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
import warnings
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from .textfiles import read_text

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value, key or file that cannot be used; the message names it."""


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert `value` (from YAML or a CLI string) to the annotated type `tp`, or raise ConfigError."""
    tp, optional = _strip_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null", "")):
        if optional:
            return None
        raise ConfigError(f"config key '{key}' must not be empty (expected {getattr(tp, '__name__', tp)})")
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping of {tp.__name__} fields")
        return build_config(tp, value, prefix=f"{key}.")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"config key '{key}' must be one of {list(choices)}, got {value!r}")
        return value
    if origin in (list, tuple):
        (item_tp, *_) = get_args(tp) or (Any,)
        if isinstance(value, str):
            text = value.strip()
            value = yaml.safe_load(text) if text.startswith("[") else [v for v in text.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        items = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config key '{key}' must be an integer, got {value!r}") from None
        if not as_float.is_integer():
            raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
        return int(as_float)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config key '{key}' must be a number, got {value!r}") from None
        if not math.isfinite(number):  # a NaN guidance scale once wrote clips of constant full scale
            raise ConfigError(f"config key '{key}' must be a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"config key '{key}' must be a string, got {value!r}")
        return str(value)
    if tp is Path:
        return Path(str(value))
    return value


def build_config(cls: type[T], values: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass `cls` from a (nested) mapping, refusing unknown keys by name."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    values = _renamed(cls, values, prefix)
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown config key '{prefix}{unknown[0]}' for {cls.__name__} (known: {', '.join(sorted(names))})")
    switches = {f.name for f in dataclasses.fields(cls) if f.metadata.get("none_turns_off")}
    kwargs = {
        # For these keys 'none' is a value (turn the source off), not an empty setting that falls back to the default.
        name: "none" if name in switches and isinstance(value, str) and value.strip().lower() == "none" else _coerce(value, hints[name], prefix + name)
        for name, value in values.items()
    }
    try:
        config = cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{cls.__name__}: {exc}") from None
    return config


def _renamed(cls: type, values: dict[str, Any], prefix: str) -> dict[str, Any]:
    """`values` with the keys a config class renamed (its `RENAMED_KEYS`, old -> new) under their
    new names, each with a deprecation warning; old and new given together is an error."""
    renamed = getattr(cls, "RENAMED_KEYS", {})
    if not renamed or not set(values) & set(renamed):
        return values
    values = dict(values)
    for old, new in renamed.items():
        if old in values:
            if new in values:
                raise ConfigError(f"config keys '{prefix}{old}' and '{prefix}{new}' are the same setting: give only '{prefix}{new}'")
            warnings.warn(
                f"config key '{prefix}{old}' is deprecated: use '{prefix}{new}' (the old name works until the next release)", FutureWarning, stacklevel=3
            )
            values[new] = values.pop(old)
    return values


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"config key '{dotted}': '{part}' is not a section")
    last = parts[-1]
    if isinstance(node.get(last), dict) and isinstance(value, str) and value.lstrip().startswith("{"):
        # `--evaluate '{"sampler": "unipc"}'` over a file's evaluate section changes the keys it
        # names, as `--evaluate.sampler unipc` does; replacing the section would silently drop the
        # file's other keys (its clips_per_caption, steps, ...).
        try:
            mapping = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"config key '{dotted}': {value!r} is not a valid mapping ({exc})".splitlines()[0]) from None
        if isinstance(mapping, dict):
            for key, item in mapping.items():
                _set_dotted(node[last], str(key), item)
            return
    node[last] = value


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(read_text(path, "config file")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    return data


def parse_config(cls: type[T], argv: list[str], default_file: str | os.PathLike | None = None) -> T:
    """Parse `[--config FILE] [--key value | --key=value | --flag] [positional ...]` into `cls`."""
    values: dict[str, Any] = {}
    overrides: list[tuple[str, Any]] = []
    positional: list[str] = []
    config_file = default_file
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--"):
            key, eq, value = arg[2:].partition("=")
            key = key.replace("-", "_") if key.replace("-", "_") in fields else key
            if not eq:
                top = key.split(".")[0]
                is_flag = top in fields and "." not in key and _strip_optional(hints[top])[0] is bool
                next_is_value = i + 1 < len(argv) and not argv[i + 1].startswith("--")
                if is_flag and not (next_is_value and argv[i + 1].lower() in ("true", "false", "1", "0", "yes", "no")):
                    value = "true"
                elif not next_is_value:
                    raise ConfigError(f"option '--{key}' needs a value")
                else:
                    i += 1
                    value = argv[i]
            if key == "config":
                config_file = value
            else:
                overrides.append((key, value))
        else:
            positional.append(arg)
        i += 1
    if config_file is not None:
        values = load_yaml(config_file)
    for key, value in overrides:
        _set_dotted(values, key, value)
    if positional:
        pos_fields = [f for f in dataclasses.fields(cls) if f.metadata.get("positional")]
        if not pos_fields:
            raise ConfigError(f"unexpected argument '{positional[0]}' (options start with --)")
        field = pos_fields[0]
        tp, _ = _strip_optional(hints[field.name])
        if get_origin(tp) in (list, tuple):
            values[field.name] = positional
        else:
            if len(positional) > len(pos_fields):
                raise ConfigError(f"unexpected argument '{positional[len(pos_fields)]}'")
            for f, v in zip(pos_fields, positional):
                values[f.name] = v
    return build_config(cls, values)


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config (paths as strings), for run folders and model cards."""

    def convert(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: convert(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [convert(v) for v in value]
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        if isinstance(value, Path):
            return str(value)
        return value

    return convert(config)


def config_help(cls: type) -> str:
    """One line per field: name, type, default, and the field's `help` metadata."""
    hints = typing.get_type_hints(cls)
    lines = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = "(required)"
        if dataclasses.is_dataclass(default):
            default = f"<{type(default).__name__}: use --{f.name}.KEY>"
        tp = getattr(hints[f.name], "__name__", str(hints[f.name]).replace("typing.", ""))
        tag = " (positional)" if f.metadata.get("positional") else ""
        text = f.metadata.get("help", "")
        lines.append(f"  --{f.name}{tag}  [{tp}] default={json.dumps(default, default=str)}  {text}".rstrip())
    return "\n".join(lines)
