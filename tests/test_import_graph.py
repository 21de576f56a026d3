"""The package's import graph has no circle, read from the source with `ast` (nothing is imported).

Nodes are the modules under baton_trainer/, reward_hub/ and spaces_demo/ (`pkg/__init__.py` is the
node `pkg`). Every import statement counts, wherever it is: at module level, inside a function,
under `if TYPE_CHECKING:` or in a `try:` block, since a circle through a deferred import is still a
circle (it only fails later, or only on some paths). Relative imports are resolved;
`from X import Y` is an edge to X.Y when Y is a submodule, otherwise to X (the names come from X's
`__init__.py`), so a package's re-export `from .x import y` in `pkg/__init__.py` is the edge
pkg -> pkg.x.

Importing `a.b.c` also runs `a/__init__.py` and `a/b/__init__.py`. The test adds edges to those
parent packages only when they are not packages the importing module itself sits in: Python has
already started a module's own parent packages before the module's first line runs, so
`a.b.c` importing `a.b.d` never runs `a/b/__init__.py` afresh, and an edge a.b.c -> a.b would
report a false circle for every package whose `__init__.py` re-exports its submodules. A parent
package outside the importer's own packages, though, is run by that import, and its `__init__.py`
can lead back to the importer: that is a real circle, so those edges are kept. A module is never
taken to import its parent package merely by being inside it; importing names from its own
package (`from . import name` where name is no submodule) is an edge to that package's
`__init__.py` as for any other.
"""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("baton_trainer", "reward_hub", "spaces_demo")


def module_files(root: Path = ROOT, packages=PACKAGES) -> dict[str, Path]:
    """Dotted module name -> source file, for every .py file under the packages."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _resolve_relative(module: str, is_package: bool, level: int, name: str | None) -> str:
    package = module if is_package else module.rpartition(".")[0]
    for _ in range(level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{name}" if name else package


def _known(name: str, modules) -> str | None:
    """`name`, or its longest prefix that is a module here; None for other packages."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _inside(module: str, package: str) -> bool:
    """Whether `package` is `module` itself or one of the packages `module` sits in."""
    return module == package or module.startswith(package + ".")


def _runs(importer: str, target: str, modules) -> list[str]:
    """`target` and the parent packages that importing it runs, less the importer's own."""
    parts = target.split(".")
    parents = [".".join(parts[:end]) for end in range(1, len(parts))]
    return [target] + [parent for parent in parents if parent in modules and not _inside(importer, parent)]


def import_graph(root: Path = ROOT, packages=PACKAGES) -> dict[str, dict[str, int]]:
    """Module -> {imported module: line of the first import statement that imports it}."""
    modules = module_files(root, packages)
    graph: dict[str, dict[str, int]] = {}
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        edges: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                for alias in node.names:
                    known = _known(alias.name, modules)
                    if known:
                        targets += _runs(module, known, modules)
            elif isinstance(node, ast.ImportFrom):
                base = _resolve_relative(module, is_package, node.level, node.module) if node.level else node.module
                known = _known(base, modules)
                if known is None:
                    continue
                if known != base:  # `from a.b.gone import x`: only a.b is ours
                    targets += _runs(module, known, modules)
                    continue
                # `from a.b import c` runs a.b (and a) first, unless the importer sits in them
                targets += [name for name in _runs(module, base, modules) if not _inside(module, name)]
                for alias in node.names:
                    submodule = f"{base}.{alias.name}"
                    if submodule in modules:
                        targets += _runs(module, submodule, modules)
                    else:  # a name defined in (or re-exported by) base's __init__.py: an edge even to an own package
                        targets.append(base)
            for target in targets:
                if target != module:
                    edges.setdefault(target, node.lineno)
        graph[module] = edges
    return graph


def strongly_connected_components(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's algorithm, iteratively; components with a circle only (size > 1 or a self-loop)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1 or node in graph[node]:
                        components.append(sorted(component))
    return components


def shortest_cycle_through(graph, node: str, within: set[str]) -> list[str]:
    """The shortest chain node -> ... -> node inside one component (breadth first)."""
    previous: dict[str, str | None] = {node: None}
    queue = deque([node])
    while queue:
        current = queue.popleft()
        for child in sorted(graph[current]):
            if child == node:
                chain: list[str] = []
                step: str | None = current
                while step is not None:
                    chain.append(step)
                    step = previous[step]
                return chain[::-1] + [node]
            if child in within and child not in previous:
                previous[child] = current
                queue.append(child)
    return []


def cycles(graph) -> list[list[str]]:
    """One shortest circle through each module that lies on one, without rotations of the same."""
    found, seen = [], set()
    for component in strongly_connected_components(graph):
        members = set(component)
        for node in component:
            chain = shortest_cycle_through(graph, node, members)
            key = frozenset(zip(chain, chain[1:]))
            if chain and key not in seen:
                seen.add(key)
                found.append(chain)
    return found


def describe(graph, chain: list[str], root: Path = ROOT, packages=PACKAGES) -> str:
    """A circle as one module a line, each with the import that leads on to the next."""
    modules = module_files(root, packages)
    steps = [chain[0]]
    for source, target in zip(chain, chain[1:]):
        steps.append(f"  -> {target}    ({modules[source].relative_to(root)}:{graph[source][target]})")
    return "\n".join(steps)


def test_the_import_graph_has_no_circle():
    graph = import_graph()
    assert len(graph["baton_trainer.__main__"]) > 10, "the graph reads nothing"  # the CLI imports every stage
    found = cycles(graph)
    assert not found, f"{len(found)} import circle(s):\n\n" + "\n\n".join(describe(graph, chain) for chain in found)


def test_reward_hub_imports_nothing_from_baton_trainer():
    # reward_hub is what a Hub user installs on its own: any import statement anywhere counts.
    offending = []
    for path in sorted((ROOT / "reward_hub").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offending += [f"{path.relative_to(ROOT)}:{node.lineno} {name}" for name in names if name.split(".")[0] == "baton_trainer"]
    assert not offending, "reward_hub imports baton_trainer:\n" + "\n".join(offending)


FAKE_PACKAGES = {
    "pkg/__init__.py": "from .a import thing\nfrom .e import w\n",
    "pkg/a.py": "def thing():\n    from .b import other  # deferred, still a circle\n    return other\n",
    "pkg/b.py": "from pkg import a\nother = a\n",
    "pkg/sub/__init__.py": "from .inner import x\n",
    "pkg/sub/inner.py": "from pkg.sub.leaf import y\nx = y\n",  # pkg.sub is its own package: no edge
    "pkg/sub/leaf.py": "y = 1\n",
    "pkg/e.py": "from other.mod import v\nw = v\n",  # runs other/__init__.py too
    "other/__init__.py": "from .mod import v\nfrom .user import x\n",
    "other/mod.py": "v = 1\n",
    "other/user.py": "from pkg.sub import x\n",  # runs pkg/__init__.py too
}


def test_the_check_finds_circles(tmp_path):
    """The test can fail: a made-up pair of packages with a circle through a function-level import
    and one through the `__init__.py` of another package, and none through a module's own."""
    for name, text in FAKE_PACKAGES.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = import_graph(tmp_path, ("pkg", "other"))
    assert graph["pkg"] == {"pkg.a": 1, "pkg.e": 2}
    assert graph["pkg.b"] == {"pkg.a": 1}
    assert graph["pkg.sub.inner"] == {"pkg.sub.leaf": 1}
    assert graph["pkg.e"] == {"other": 1, "other.mod": 1}
    assert graph["other.user"] == {"pkg.sub": 1, "pkg": 1}
    found = cycles(graph)
    assert ["pkg.a", "pkg.b", "pkg.a"] in found
    assert ["other", "other.user", "pkg", "pkg.e", "other"] in found
    assert not any({"pkg.sub", "pkg.sub.inner", "pkg.sub.leaf"} & set(chain) for chain in found), found
    text = describe(graph, ["pkg.a", "pkg.b", "pkg.a"], tmp_path, ("pkg", "other"))
    assert text == "pkg.a\n  -> pkg.b    (pkg/a.py:2)\n  -> pkg.a    (pkg/b.py:1)"
