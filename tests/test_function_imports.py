"""Every import inside a function says why it is not at the top of its module (read with `ast` and
`tokenize`; nothing is imported).

Imports belong at module level. One inside a function stays only for a reason: it keeps
`python -m baton_trainer --help` fast (the CLI imports every stage module, and what they import at
module level), it keeps an optional dependency optional, or it keeps a module light for the users
that do not need a heavy library (matplotlib, which also picks a backend; `datasets` for the
modules a config check imports; ...). The reason is written down, in one of three ways:

- a comment on the import's own line(s): `import gradio as gr  # lazy: only serving the test needs gradio`;
- a comment line directly above it, which covers the imports that follow it (blank lines between
  them allowed, any other line ends the group):

      # lazy: Stable Audio 3 is in recent diffusers only
      from diffusers import StableAudio3Pipeline

      from ..backends.stable_audio_3 import StableAudio3Model

- the module is one of `LAZY_FOR_HELP` (the stage modules), whose docstring says once that its
  function-level imports keep `--help` fast.

Files shipped as remote code inside model folders (`REMOTE_CODE`, and everything under
baton_trainer/toyworld/pretrained/) are left out: they are copied byte for byte and must stand
alone.
"""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("baton_trainer", "reward_hub", "spaces_demo")
REMOTE_CODE = {
    "baton_trainer/backends/pipeline_tango.py",
    "baton_trainer/backends/griffin_lim_vocoder.py",
    "reward_hub/modeling_baton_reward.py",
    "reward_hub/pipeline_baton_reward.py",
}
REMOTE_CODE_PREFIXES = ("reward_hub/configuration_", "baton_trainer/toyworld/pretrained/")
LAZY_FOR_HELP = "baton_trainer/stages/*.py"  # the modules `__main__` imports to list the stages


def checked_files(root: Path = ROOT) -> list[Path]:
    files = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            name = path.relative_to(root).as_posix()
            if name not in REMOTE_CODE and not name.startswith(REMOTE_CODE_PREFIXES):
                files.append(path)
    return files


def function_imports(tree: ast.AST) -> list[ast.stmt]:
    """Import statements anywhere inside a function (methods and nested functions included)."""
    found = []

    def walk(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if in_function and isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append(child)
            walk(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    walk(tree, False)
    return found


def imports_without_reason(source: str) -> list[int]:
    """Lines of the function-level imports in `source` with no comment on them or above their group."""
    tree = ast.parse(source)
    lines = source.splitlines()
    commented = {token.start[0] for token in tokenize.generate_tokens(io.StringIO(source).readline) if token.type == tokenize.COMMENT}
    import_lines = {line for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom)) for line in range(node.lineno, node.end_lineno + 1)}
    missing = []
    for node in function_imports(tree):
        if commented & set(range(node.lineno, node.end_lineno + 1)):
            continue
        above = node.lineno - 1  # walk up over the group: other imports and blank lines
        while above >= 1 and (above in import_lines or not lines[above - 1].strip()):
            above -= 1
        if above >= 1 and lines[above - 1].lstrip().startswith("#"):
            continue
        missing.append(node.lineno)
    return missing


def test_every_function_level_import_has_a_reason():
    lazy_for_help = set(ROOT.glob(LAZY_FOR_HELP))
    offending = []
    for path in checked_files():
        source = path.read_text(encoding="utf-8")
        if path in lazy_for_help:
            continue  # the docstring gives the reason once (checked below)
        offending += [f"{path.relative_to(ROOT)}:{line}" for line in imports_without_reason(source)]
    assert not offending, "function-level imports without a reason (see this test's docstring):\n" + "\n".join(offending)


def test_the_lazy_for_help_modules_say_so():
    modules = sorted(ROOT.glob(LAZY_FOR_HELP))
    assert len(modules) > 10, "no stage modules found"
    silent = []
    for path in modules:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if function_imports(tree) and "--help" not in (ast.get_docstring(tree) or ""):
            silent.append(str(path.relative_to(ROOT)))
    assert not silent, "stage modules with function-level imports whose docstring does not say they keep `--help` fast:\n" + "\n".join(silent)


def test_the_check_can_fail():
    source = """
import os


def covered():
    import json  # lazy: a reason on the line

    # lazy: a reason for the group
    import numpy

    from . import sibling
    return json, numpy, sibling


def bare():
    x = 1
    import re

    return re, x


def string_is_no_comment():
    import sys; s = "# not a comment"
    return sys, s


class Model:
    def method(self):
        def inner():
            from collections import (
                Counter,  # a comment inside the statement counts
            )
            return Counter
        import math
        return inner, math
"""
    lines = source.splitlines()
    bare = [lines.index(text) + 1 for text in ("    import re", '    import sys; s = "# not a comment"', "        import math")]
    assert imports_without_reason(source) == bare
