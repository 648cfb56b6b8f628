"""YAML as DVC reads and writes it (YAML 1.2, ruamel.yaml): params.yaml, dvc.yaml and
dvc.lock. One library: `1e-4` is a number and `yes` a string here, as in DVC."""

from __future__ import annotations

import io
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

__all__ = ["YAMLError", "dump", "load"]


def load(text: str) -> Any:
    """The document in `text`, as plain dicts, lists and scalars; a key given twice raises
    ruamel's DuplicateKeyError (a YAMLError)."""
    return YAML(typ="safe", pure=True).load(text)


def dump(data: Any) -> str:
    """`data` as block-style YAML, keys in their given order."""
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    yaml.representer.sort_base_mapping_type_on_output = False  # type: ignore[attr-defined]
    out = io.StringIO()
    yaml.dump(data, out)
    return out.getvalue()
