"""The house's rules, as checks that run: no module in src/genpipe over MAX_MODULE_LINES
lines, no import cycle among its modules, and imports that only point down the layers
below. (A function's size and complexity are ruff's rules, in pyproject.toml.)"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "src" / "genpipe"
MAX_MODULE_LINES = 450

# genpipe's parts (a top-level module or package), lowest first: a part imports only from
# its own layer or the layers below it, so data flows downward. A new part takes its place
# here, or this test names it.
LAYERS = [
    {"errors", "paths", "yamlio", "dvclock", "fileio", "images", "schedule", "resolution",
     "progress", "runtime", "stage", "codedeps"},
    {"params"},
    {"data", "weights", "distributed", "checkpoint"},
    {"metrics", "validation"},
    {"reference", "models", "tracking"},
    {"training", "gan", "autoencoder"},
    {"registry", "serving"},
    {"ci", "recipes", "sweep", "serve", "cli"},
]  # fmt: skip


def modules() -> dict[str, Path]:
    """'genpipe.registry.gate' -> its file, for every module (a package: its __init__)."""
    found = {}
    for path in sorted(SOURCE.rglob("*.py")):
        parts = ("genpipe", *path.relative_to(SOURCE).with_suffix("").parts)
        found[".".join(parts).removesuffix(".__init__")] = path
    return found


MODULES = modules()


def imports(path: Path) -> set[str]:
    """The genpipe modules `path` imports, at its top or inside a function (not those under
    `if TYPE_CHECKING:`, which never run)."""
    tree = ast.parse(path.read_text())
    checked = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
               and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}  # fmt: skip
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in checked:
            continue
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in names if name in MODULES and name != "genpipe"}


GRAPH = {name: imports(path) - {name} for name, path in MODULES.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def part(module: str) -> str:
    """genpipe.registry.gate -> registry."""
    return module.split(".")[1]


def test_no_module_is_over_the_limit():
    long = {name: n for name, path in MODULES.items()
            if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES}  # fmt: skip
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_the_imports_form_no_cycle():
    assert cycles(GRAPH) == []


def test_imports_point_down_the_layers():
    layer = {name: i for i, names in enumerate(LAYERS) for name in names}
    unplaced = sorted({part(m) for m in MODULES if m != "genpipe"} - set(layer))
    assert not unplaced, f"parts in no layer of LAYERS: {unplaced}"
    upward = [f"{m} imports {d}" for m, deps in GRAPH.items() if m != "genpipe"
              for d in sorted(deps) if layer[part(d)] > layer[part(m)]]  # fmt: skip
    assert not upward, "imports that point up the layers:\n" + "\n".join(upward)


@pytest.mark.parametrize(
    ("graph", "expected"),
    [({"a": {"b"}, "b": {"c"}, "c": set()}, []),
     ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
     ({"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c"}}, [["a", "b"], ["c", "d"]])],
)  # fmt: skip
def test_the_cycle_finder_finds_cycles(graph, expected):
    assert sorted(cycles(graph)) == expected


def test_the_import_reader_sees_imports_in_functions_and_skips_type_checking(tmp_path):
    source = tmp_path / "m.py"
    source.write_text(
        "from typing import TYPE_CHECKING\nfrom genpipe import paths\n"
        "if TYPE_CHECKING:\n    from genpipe.registry import gate\n"
        "def f():\n    import genpipe.errors\n    from genpipe.tracking.store import x\n"
    )
    assert imports(source) == {"genpipe.paths", "genpipe.errors", "genpipe.tracking.store"}
