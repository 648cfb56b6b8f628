"""The one-line params errors: the key path, what is allowed and what was found, from
pydantic's first error ("data.image_size: expected one of 8, 16, 28, 32 or 64; got 30")."""

from __future__ import annotations

import difflib
import re
from typing import Any

from pydantic import BaseModel, ValidationError

from genpipe.params.schema import Params


def describe(exc: ValidationError) -> str:
    """One line for the first error: key path, what is allowed, what was found."""
    errors = exc.errors()
    err = errors[0]
    loc = [part for part in err["loc"] if not isinstance(part, str) or part != "__root__"]
    key = _key_path(loc)
    found = err.get("input")
    kind = err["type"]
    if kind == "extra_forbidden":
        parent = _model_at(loc[:-1])
        allowed = sorted(_field_names(parent)) if parent else []
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"; did you mean '{_key_path([*loc[:-1], close[0]])}'?" if close else ""
        line = f"{key}: unknown key (allowed: {', '.join(allowed)}){hint}"
    elif kind == "literal_error":
        choices = err["ctx"]["expected"]
        close = difflib.get_close_matches(str(found), [c.strip("'") for c in _choices(err)], n=1)
        if close and close[0] != str(found):
            hint = f"; did you mean '{close[0]}'?"
        else:
            hint = f" ({kind_of(found)})" if close else ""
        line = f"{key}: expected one of {choices}; got {show(found)}{hint}"
    elif kind == "missing":
        line = f"{key}: required key is missing"
    elif kind == "model_type":
        line = f"{key}: expected a mapping of keys; got {kind_of(found)}"
    else:
        # pydantic says "Input should be greater than 0": reword as "expected ..."
        expected = re.sub(r"^Input should (be )?", "", err["msg"])
        expected = re.sub(r"^(greater|less) ", r"a value \1 ", expected)
        line = f"{key}: expected {expected}; got {show(found)}"
        if kind.endswith("_type"):
            line += f" ({kind_of(found)})"
    if len(errors) > 1:
        line += f" (and {len(errors) - 1} more)"
    return line


def _choices(err: dict[str, Any]) -> list[str]:
    return [c.strip() for c in re.split(r",| or ", err["ctx"]["expected"]) if c.strip()]


def _key_path(loc: list[Any]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _field_names(model: type[BaseModel]) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items()]


def _model_at(loc: list[Any]) -> type[BaseModel] | None:
    """The section model that sits at a key path, for listing its allowed keys."""
    model: type[BaseModel] = Params
    for part in loc:
        fields = {info.alias or name: info for name, info in model.model_fields.items()}
        info = fields.get(part)
        annotation = info.annotation if info else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def show(value: Any) -> str:
    """A value as it would be written in YAML."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value)


def kind_of(value: Any) -> str:
    return "null" if value is None else type(value).__name__
