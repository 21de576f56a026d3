"""How numbers are printed in logs, cards and reports: one formatter, so a missing or undefined
value reads the same everywhere."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def format_number(value: Any, digits: int = 3) -> str:
    """`value` with `digits` decimals if it is a float, as is if it is another number or text, and
    "n/a" for None or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
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
