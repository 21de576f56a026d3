"""How numbers are printed in logs, cards and reports: one formatter, so a missing or undefined
value reads the same everywhere."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def format_number(value: Any, digits: int | None = 3) -> str:
    """`value` with `digits` decimals if it is a float, as is if it is another number or text, and
    "n/a" for None or NaN. `digits=None` writes a float as short as it reads (2, 2.5, 2147483647)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        if digits is None:
            return str(int(value)) if value.is_integer() else f"{value:g}"
        return f"{value:.{digits}f}"
    return str(value)


def display_path(name_or_path: Any) -> str:
    """A model or file name for reports and public pages: a Hub id or relative path as given, an
    absolute path by its last two parts, so no absolute path of the machine that ran it is printed."""
    if name_or_path is None:
        return "none"
    text = str(name_or_path)
    path = Path(text)
    return "/".join(path.parts[-2:]) if path.is_absolute() else text
