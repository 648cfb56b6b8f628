"""Reading params.yaml: the file checks (none, a directory, not UTF-8, not YAML, a key
twice, empty), YAML 1.2 as DVC reads it, then the schema and the rules that span keys."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from genpipe import paths, yamlio
from genpipe.errors import ParamsError
from genpipe.params.messages import describe, kind_of
from genpipe.params.rules import check_rules
from genpipe.params.schema import Params


def load_params(path: Path | str = paths.PARAMS) -> Params:
    """Read and check params.yaml; raise ParamsError with one line on any mistake."""
    path = Path(path)
    return parse_params(_read_yaml(path), source=str(path))


def load_checked_params(path: Path | str = paths.PARAMS) -> Params:
    """params.yaml checked against the schema, and against what dvc.yaml needs of it before
    any stage runs: DVC interpolates `data.path` into fetch's deps while it reads dvc.yaml,
    and a null there stops it with only "unexpected error" (the params stage never runs)."""
    path = Path(path)
    raw = _read_yaml(path)
    params = parse_params(raw, source=str(path))
    data = raw.get("data") or {}
    if "path" in data and data["path"] is None:  # written as null (a missing key: DVC says so)
        raise ParamsError(
            "data.path: expected a path for DVC to track as fetch's dependency (dvc.yaml "
            "interpolates it; keep examples/images when the source reads no folder); got null"
        )
    return params


def _read_yaml(path: Path) -> Any:
    """The file's YAML as DVC reads it: a mapping of sections, or one line saying what the
    file is instead (none, a directory, not UTF-8 text, not YAML, empty)."""
    from ruamel.yaml.constructor import DuplicateKeyError

    expected = f"{path}: expected a params file, a YAML mapping of sections (seed, data, ...)"
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ParamsError(f"{expected}; found none") from None
    except IsADirectoryError:
        raise ParamsError(f"{expected}; found a directory") from None
    except UnicodeDecodeError as exc:
        raise ParamsError(f"{expected}; found bytes that are not UTF-8 text (at byte "
                          f"{exc.start})") from None  # fmt: skip
    except OSError as exc:
        raise ParamsError(f"{expected}; could not read it ({exc.strerror or exc})") from None
    try:
        raw = yamlio.load(text)
    except DuplicateKeyError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ParamsError(f"{path}: expected each key once; found a duplicate key{where}: "
                          f"{_duplicate(exc)}") from None  # fmt: skip
    except yamlio.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ParamsError(f"{path}: expected valid YAML; found a syntax error{where}") from None
    if raw is None:  # dvc.yaml interpolates ${models} and ${data.path}: DVC needs them
        raise ParamsError(f"{expected}; found an empty file (or comments only)")
    return raw


def _duplicate(exc: Exception) -> str:
    """The duplicated key's name, from ruamel's message: 'found duplicate key "seed" ...'."""
    found = re.search(r'duplicate key "([^"]*)"', str(exc))
    return repr(found[1]) if found else "(unnamed)"


def parse_params(raw: Any, source: str = "params") -> Params:
    """Check a params mapping against the schema (and the rules that span keys)."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of sections; got {kind_of(raw)}")
    try:
        params = Params.model_validate(raw)
    except ValidationError as exc:
        raise ParamsError(describe(exc)) from None
    check_rules(params)
    return params

