"""Network weights on disk: tensors only (safetensors), written atomically, read back with
one-line errors that name the file and the stage that writes it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from genpipe.errors import GenpipeError
from genpipe.fileio import atomic_path, umask_mode
from genpipe.params.configs import check_config
from genpipe.params.schema import Section
from genpipe.runtime import unwrap


class WeightsError(GenpipeError):
    """A weights file that is missing, unreadable or of another network."""


def save_weights(module: nn.Module, path: Path) -> None:
    """Tensors only (safetensors), contiguous on the CPU; written atomically."""
    state = {k: v.detach().cpu().contiguous() for k, v in unwrap(module).state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))
        umask_mode(tmp)  # safetensors writes a file of its own, private


def load_weights(module: nn.Module, path: Path, stage: str) -> nn.Module:
    """`module` with the weights of `path`, which `stage` wrote (for the error message)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(
            f"{path}: expected the {stage} stage's weights; found no such file "
            f"(run `dvc repro {stage}`)"
        )
    try:
        state = load_file(path)
    except (SafetensorError, OSError) as exc:
        raise WeightsError(
            f"{path}: expected safetensors weights written by the {stage} stage; could not "
            f"read them ({exc}) (run `dvc repro --force {stage}`)"
        ) from None
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        found = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
        raise WeightsError(
            f"{path}: expected weights of the network its config.json describes; found "
            f"others ({found[:200]}) (run `dvc repro --force {stage}`)"
        ) from None
    return module


def read_config(path: Path, stage: str, key: str) -> dict[str, Any]:
    """A weights directory's config.json: a JSON object holding `key`."""
    try:
        config = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise WeightsError(
            f"{path}: expected the {stage} stage's network config; found no such file "
            f"(run `dvc repro {stage}`)"
        ) from None
    except (ValueError, OSError) as exc:
        raise WeightsError(
            f"{path}: expected the {stage} stage's network config as JSON; found "
            f"{type(exc).__name__} (run `dvc repro --force {stage}`)"
        ) from None
    if not isinstance(config, dict) or not isinstance(config.get(key), dict):
        raise WeightsError(
            f"{path}: expected a JSON object with '{key}'; found another "
            f"(run `dvc repro --force {stage}`)"
        )
    return config


def build_network(
    cls: type[nn.Module], kwargs: dict[str, Any], path: Path, stage: str,
    schema: type[Section], key: str,
) -> nn.Module:  # fmt: skip
    """cls(**kwargs) from the entry `key` of a config.json at `path`, held first to
    `schema` (params/configs.py: the params' bounds); a config that does not fit is one
    line."""
    try:
        return cls(**check_config(schema, kwargs, key))
    except (TypeError, ValueError) as exc:
        raise WeightsError(
            f"{path}: expected a config that builds a {cls.__name__}; {exc} "
            f"(run `dvc repro --force {stage}`)"
        ) from None
