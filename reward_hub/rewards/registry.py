"""Rewards by name: `build_reward("clap")` or `build_reward({"name": "clap", "model": "..."})`.

Config files name rewards with their options; the registry turns a spec into a `Reward`. The
trainer registers its own rewards (event detector, toy oracle) with `register_reward`, so this
package never needs to import it.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from .base import Reward

REWARDS: dict[str, Callable[..., Reward]] = {}


def register_reward(name: str, factory: Callable[..., Reward]) -> None:
    """Make `factory(**options) -> Reward` buildable as `name` (re-registering replaces it)."""
    if not isinstance(name, str) or not name or "#" in name:
        raise ValueError(f"register_reward: name must be a non-empty string without '#', got {name!r}")
    if not callable(factory):
        raise ValueError(f"register_reward: factory for {name!r} is not callable")
    REWARDS[name] = factory


def parse_spec(spec: str | dict) -> tuple[str, dict[str, Any]]:
    """(name, options) from "name" or {"name": ..., **options}; "weight" belongs to the list."""
    if isinstance(spec, str):
        return spec, {}
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise ValueError(f"a reward spec is a name or a mapping with a 'name' key, got {spec!r}")
    options = {k: v for k, v in spec.items() if k not in ("name", "weight")}
    return spec["name"], options


def _parameters(factory: Callable) -> list[str]:
    try:
        return [p.name for p in inspect.signature(factory).parameters.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    except (TypeError, ValueError):
        return []


def _takes_any_keyword(factory: Callable) -> bool:
    try:
        return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(factory).parameters.values())
    except (TypeError, ValueError):
        return True  # no signature to read: let the factory itself complain


def _accepts(factory: Callable, keyword: str) -> bool:
    return keyword in _parameters(factory) or _takes_any_keyword(factory)


def _unknown_options(factory: Callable, options: dict) -> list[str]:
    if _takes_any_keyword(factory):
        return []
    return sorted(set(options) - set(_parameters(factory)))


def build_reward(spec: str | dict, device=None) -> Reward:
    """The reward `spec` names, its options passed to its factory; `device` goes to factories
    that take one (a remote reward has none)."""
    name, options = parse_spec(spec)
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; known rewards: {', '.join(sorted(REWARDS))}")
    factory = REWARDS[name]
    if device is not None and "device" not in options and _accepts(factory, "device"):
        options["device"] = device
    unknown = _unknown_options(factory, options)
    if unknown:
        raise ValueError(f"reward {name!r}: unknown option(s) {', '.join(unknown)}; it takes: {', '.join(_parameters(factory)) or 'none'}")
    reward = factory(**options)
    if not isinstance(reward, Reward):
        raise ValueError(f"reward {name!r}: factory returned {type(reward).__name__}, not a Reward")
    return reward
