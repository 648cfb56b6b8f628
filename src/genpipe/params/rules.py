"""Rules of params.yaml that span keys, checked once the schema has passed; each broken one
is a ParamsError of one line."""

from __future__ import annotations

import re
from pathlib import Path

from genpipe.errors import ParamsError
from genpipe.params.messages import show
from genpipe.params.schema import DataParams, Params


def check_rules(params: Params) -> None:
    """Rules that depend on more than one key."""
    _check_models(params.models)
    data = params.data
    if data.source == "folder" and not data.path:
        raise ParamsError(
            "data.path: expected a directory of images when data.source is 'folder'; "
            f"got {show(data.path)}"
        )
    if data.local:
        _check_local(data)
    for name, digest in data.sha256.items():
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ParamsError(
                f"data.sha256.{name}: expected 64 lowercase hex digits; got {digest!r}"
            )
    for i, url in enumerate(data.mirrors or []):
        if not re.match(r"https?://", url):
            raise ParamsError(f"data.mirrors[{i}]: expected an http(s):// URL; got {url!r}")
    if params.train.compile and params.train.nproc_per_node > 1:
        raise ParamsError(COMPILE_DDP.format(where="with train.nproc_per_node above 1"))
    train, group = params.train, params.gan.minibatch_std
    per_process = train.batch_size // train.nproc_per_node  # not a whole number: refused at launch
    if group == 1 or (group and per_process % group):
        raise ParamsError(minibatch_group_error(group, per_process))


def _check_models(models: list[str]) -> None:
    """At least one model, each once: dvc.yaml makes a stage of each entry."""
    if not models:
        raise ParamsError("models: expected one or more of gan, autoencoder; got []")
    twice = sorted({name for name in models if models.count(name) > 1})
    if twice:
        raise ParamsError(f"models: expected each model once; got {', '.join(twice)} "
                          f"more than once ({models})")  # fmt: skip


def minibatch_group_error(group: int, per_process: int) -> str:
    """gan.minibatch_std's groups split each process's batch evenly, as one process would."""
    return (f"gan.minibatch_std: expected 0 (off) or a group size of at least 2 that divides "
            f"each process's batch of {per_process}; got {group}")  # fmt: skip


# torch.compile of the DDP step: on the CPU torch's compiled DDP crashed (free(): invalid
# pointer, torch 2.13, gloo), and its backward kept a BatchNorm running mean that the step
# then updates in place. Refused, not left to fail mid-run
COMPILE_DDP = (
    "train.compile: expected false {where} (torch.compile of the DDP step is not supported); "
    "got true"
)


def _check_local(data: DataParams) -> None:
    """data.local reads an official source's files from the directory data.path."""
    if data.source in ("digits", "folder"):
        raise ParamsError(
            "data.local: expected false for source "
            f"{data.source!r} (only mnist, fashion-mnist and cifar10 have official files "
            "to read from data.path); got true"
        )
    expected = f"a directory holding {data.source}'s official files when data.local is true"
    if not data.path:
        raise ParamsError(f"data.path: expected {expected}; got {show(data.path)}")
    path = Path(data.path)
    if not path.is_dir():
        found = "a file" if path.exists() else "nothing"
        raise ParamsError(f"data.path: expected {expected}; found {found} at {path}")


