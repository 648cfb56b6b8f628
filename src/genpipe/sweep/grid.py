"""A sweep's points: `-S key=a,b -S other=range(0,3)` expanded as `dvc exp run -S` expands
it (DVC's own Hydra sweeper: every combination, in DVC's order), each point checked as
`genpipe params` checks params.yaml before anything is submitted."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

from genpipe.errors import GenpipeError, ParamsError

PARAMS_FILE = "params.yaml"

Point = tuple[str, ...]  # "key=value" overrides, as `dvc exp run -S` takes them


class SweepError(GenpipeError):
    """A sweep that cannot be submitted, or a task that cannot run."""


def expand(overrides: list[str]) -> list[Point]:
    """The grid of every combination of the overrides' values: ["a=1,2", "b=3"] ->
    [("a=1", "b=3"), ("a=2", "b=3")]. Only params.yaml's keys: a sweep changes params."""
    if not overrides:
        raise SweepError("genpipe sweep: expected at least one -S key=value[,value...]; "
                         "found none")  # fmt: skip
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import get_hydra_sweeps

    for override in overrides:
        if "=" not in override:
            raise SweepError(f"-S {override}: expected key=value[,value...]; found no '='")
    by_file = to_path_overrides(overrides)
    others = sorted(set(by_file) - {PARAMS_FILE})
    if others:
        raise SweepError(f"-S {others[0]}:...: expected keys of {PARAMS_FILE}; found another "
                         "file (a sweep changes params.yaml only)")  # fmt: skip
    try:
        sweeps = get_hydra_sweeps(by_file)
    except Exception as exc:  # Hydra's grammar: OverrideParseException and its kin
        found = " ".join(str(exc).split())
        raise SweepError(f"-S {' -S '.join(overrides)}: expected DVC's -S syntax "
                         f"(key=a,b or key=range(0,3)); {found}") from None
    return [tuple(sweep.get(PARAMS_FILE, [])) for sweep in sweeps]


def check(params_file: Path, points: list[Point]) -> None:
    """Each point's params.yaml passes `genpipe params`, or one line naming the point and
    its error: nothing is submitted with a point that would fail its params stage."""
    from dvc.utils.hydra import apply_overrides

    from genpipe.params.load import load_checked_params

    with tempfile.TemporaryDirectory(prefix="genpipe-sweep-") as tmp:
        for index, point in enumerate(points):
            trial = Path(tmp) / PARAMS_FILE
            shutil.copyfile(params_file, trial)
            try:
                apply_overrides(str(trial), list(point))
                load_checked_params(trial)
            except ParamsError as exc:
                raise SweepError(f"sweep point {index} ({describe(point)}): {exc}") from None
            except Exception as exc:  # a key params.yaml lacks, a list where a map is
                # Hydra's first line, without its advice to add the key
                cause = str(exc.__cause__ or exc).strip().splitlines()[0]
                raise SweepError(f"sweep point {index} ({describe(point)}): expected keys "
                                 f"params.yaml has; {cause}") from None  # fmt: skip


def describe(point: Point) -> str:
    return ", ".join(point)


def sweep_id(commit: str, engine: str, points: list[Point]) -> str:
    """The sweep's name: the same commit, engine and grid give the same id, so submitting
    them again is a resubmission (only the points without a finished experiment run)."""
    key = json.dumps({"commit": commit, "engine": engine, "points": points}, sort_keys=True)
    return "sw" + hashlib.sha256(key.encode()).hexdigest()[:8]
