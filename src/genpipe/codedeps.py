"""Which genpipe source files a module imports, transitively: the code a DVC stage depends
on. The dvc.yaml test checks every stage's deps against it, and a checkpoint's code
fingerprint is computed from it, so neither is a list kept by hand."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent  # src/genpipe
PACKAGE = PACKAGE_DIR.name


def module_file(module: str) -> Path | None:
    """src/genpipe/a/b.py or src/genpipe/a/b/__init__.py for 'genpipe.a.b'; None if neither."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imported(path: Path) -> set[str]:
    """The genpipe modules `path` imports anywhere (top level or inside functions), with
    the packages above each (importing genpipe.a.b runs genpipe/__init__ and genpipe/a/__init__)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            # `from genpipe.x import y`: y may be a module of its own
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    found = set()
    for name in names:
        parts = name.split(".")
        found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return {name for name in found if module_file(name) is not None}


def source_files(entry: Path | str) -> list[Path]:
    """Every genpipe file that `entry` (a script's path, or a dotted module name) imports,
    directly or through others, sorted; a module's own file is included."""
    first = module_file(entry) if isinstance(entry, str) else Path(entry)
    if first is None:
        raise ValueError(f"{entry}: expected a genpipe module or a script path")
    seen = {first.resolve()}
    todo = [first]
    while todo:
        for name in _imported(todo.pop()):
            path = module_file(name)
            if path is not None and path.resolve() not in seen:
                seen.add(path.resolve())
                todo.append(path)
    return sorted(seen)
