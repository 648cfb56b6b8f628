"""Which genpipe source files a module imports, transitively: the code a DVC stage depends
on. The dvc.yaml test checks every stage's deps against it, and a checkpoint's code
fingerprint is computed from it, so neither is a list kept by hand.

Two kinds of code are loaded by name, which no import statement shows, and are added here:
the modules of a model's package that the table of models (genpipe.models) imports, for
the stage's model; and serving.py, which the registry logs as the served model's code."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent  # src/genpipe
PACKAGE = PACKAGE_DIR.name
MODELS_TABLE = PACKAGE_DIR / "models.py"
# module file in the closure -> modules it loads by name
LOADED_BY_NAME = {PACKAGE_DIR / "registry" / "versions.py": ("genpipe.serving",)}


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


def provided() -> list[str]:
    """The modules each model's package provides to the table of models: the keys of
    genpipe.models.PROVIDES, read from its source (not imported: this module is part of a
    train stage's code, and the table's imports are not)."""
    for node in ast.parse(MODELS_TABLE.read_text()).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "PROVIDES" for t in node.targets
        ):
            return list(ast.literal_eval(node.value))
    raise ValueError(f"{MODELS_TABLE}: expected a PROVIDES table; found none")


def source_files(entry: Path | str, model: str | None = None) -> list[Path]:
    """Every genpipe file that `entry` (a script's path, or a dotted module name) imports,
    directly or through others, sorted; a module's own file is included. With `model` (a
    stage's item), what the closure loads by name: the model's modules where it reads the
    table of models; and serving.py where it logs the served model."""
    first = module_file(entry) if isinstance(entry, str) else Path(entry)
    if first is None:
        raise ValueError(f"{entry}: expected a genpipe module or a script path")
    seen: set[Path] = set()
    todo = [first]
    while todo:
        path = todo.pop()
        if path.resolve() in seen:
            continue
        seen.add(path.resolve())
        names = set(_imported(path)) | set(LOADED_BY_NAME.get(path.resolve(), ()))
        if model is not None and path.resolve() == MODELS_TABLE:
            names |= {f"{PACKAGE}.{model}.{kind}" for kind in provided()}
        todo += [found for name in names if (found := module_file(name)) is not None]
    return sorted(seen)
