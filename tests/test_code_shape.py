"""Functions short enough to read in one screen: none in src/genpipe or pipeline/ is over
MAX_LINES lines, its docstring not counted and each multi-line literal list, tuple, dict or
set (a declarative table: GX expectations, stage lists) counted as one line."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOTS = ("src/genpipe", "pipeline")
MAX_LINES = 60
LITERALS = (ast.List, ast.Tuple, ast.Dict, ast.Set)


def code_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from the `def` (decorators not counted) to the last, less the docstring's and
    all but one of each multi-line literal's."""
    lines = set(range(node.lineno, node.end_lineno + 1))
    if ast.get_docstring(node) is not None:
        docstring = node.body[0]
        lines -= set(range(docstring.lineno, docstring.end_lineno + 1))
    for child in ast.walk(node):
        if isinstance(child, LITERALS) and child.end_lineno > child.lineno:
            lines -= set(range(child.lineno + 1, child.end_lineno + 1))
    return len(lines)


def long_functions() -> list[tuple[str, int]]:
    """(path:line name, length) of every function over MAX_LINES, methods included."""
    found = []
    for root in ROOTS:
        for path in sorted((REPO / root).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    lines = code_lines(node)
                    if lines > MAX_LINES:
                        where = f"{path.relative_to(REPO)}:{node.lineno} {node.name}"
                        found.append((where, lines))
    return found


def test_no_function_is_over_sixty_lines():
    offenders = long_functions()
    report = "\n".join(f"  {where}: {lines} lines" for where, lines in offenders)
    print(report)
    assert not offenders, (
        f"functions over {MAX_LINES} lines (docstrings and tables not counted):\n{report}"
    )


def test_the_measure_counts_code_not_docstrings_or_tables():
    source = 'def f():\n    """One\n    two."""\n    x = 1\n    return x\n'
    (node,) = ast.parse(source).body
    assert code_lines(node) == 3  # def, x = 1, return
    table = "def rows():\n    y = 2\n    return [\n" + "        y,\n" * 80 + "    ]\n"
    assert code_lines(ast.parse(table).body[0]) == 3  # def, y = 2, return [
