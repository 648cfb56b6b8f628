"""What a sweep leaves on the submitting machine, in sweeps/<id>/ (which the nodes share,
as they share Slurm's logs): sweep.json (the commit, the points, the submissions), the batch
script, logs/, and points/<i>.json, each task's own state as it goes (running, done,
failed), written atomically. Nothing here is a DVC output: the results are the experiments,
the DVC remote and the MLflow runs."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from genpipe.errors import exception_text
from genpipe.fileio import atomic_path
from genpipe.sweep.grid import Point, SweepError

SWEEPS_DIR = Path("sweeps")
PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"


@dataclass
class Sweep:
    id: str
    engine: str  # local | slurm
    commit: str
    points: list[Point]
    workspace: str  # the submitting checkout (absolute)
    git_url: str = ""  # what the tasks clone (slurm)
    git_remote: str = "origin"
    tracking_uri: str = ""  # without credentials: what the status names
    scratch: str | None = None
    checkpoints: str | None = None
    python_bin: str = ""  # the environment's bin/: genpipe, dvc and the stages' python
    jobs: list[str] = field(default_factory=list)  # Slurm job ids, one a submission

    @property
    def dir(self) -> Path:
        return Path(self.workspace) / SWEEPS_DIR / self.id

    def experiment(self, index: int) -> str:
        """The DVC experiment of point `index`: its name in `dvc exp show` and on the git
        remote (refs/exps/.../<name>), and in its MLflow runs' names."""
        return f"{self.id}-{index}"

    @property
    def branch(self) -> str:
        """$GENPIPE_BRANCH of every task: register takes its versions as candidates of this
        branch (candidate-sweep-<id>), never champion or challenger."""
        return f"sweep-{self.id}"

    def checkpoint_dir(self, index: int) -> Path:
        base = Path(self.checkpoints) / self.id if self.checkpoints else self.dir / "checkpoints"
        return base / str(index)

    def save(self) -> None:
        record = {**asdict(self), "points": [list(point) for point in self.points]}
        try:
            for folder in (self.dir, self.dir / "points", self.dir / "logs"):
                folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SweepError(f"{self.dir}: expected a folder the sweep can write its records "
                             f"to; found {exception_text(exc)}") from None  # fmt: skip
        write_json(self.dir / "sweep.json", record)


def load(path: Path) -> Sweep:
    """The sweep in `path` (its directory), or sweeps/<path> when `path` is an id."""
    where = path if (path / "sweep.json").exists() else SWEEPS_DIR / path
    try:
        data = json.loads((where / "sweep.json").read_text(encoding="utf-8"))
        sweep = Sweep(**data)
        _check_types(sweep)
        sweep.points = [tuple(point) for point in sweep.points]
        return sweep
    except FileNotFoundError:
        raise SweepError(f"sweep {path}: expected {where / 'sweep.json'}; found no such file "
                         "(`ls sweeps/` lists the sweeps submitted from here)") from None
    except (ValueError, TypeError, KeyError) as exc:
        raise SweepError(f"{where / 'sweep.json'}: expected the record genpipe sweep wrote; "
                         f"found {type(exc).__name__}: {exc}") from None  # fmt: skip
    except OSError as exc:
        raise SweepError(f"{where / 'sweep.json'}: expected a record this user can read; "
                         f"found {exception_text(exc)}") from None  # fmt: skip


def _check_types(sweep: Sweep) -> None:
    """A hand-edited record fails here, naming the field, not later as a traceback."""
    texts = ("id", "engine", "commit", "workspace", "git_url", "git_remote", "tracking_uri",
             "python_bin")  # fmt: skip
    for name in texts:
        if not isinstance(getattr(sweep, name), str):
            raise TypeError(f"{name} is {getattr(sweep, name)!r}, not a string")
    for name in ("scratch", "checkpoints"):
        if getattr(sweep, name) is not None and not isinstance(getattr(sweep, name), str):
            raise TypeError(f"{name} is {getattr(sweep, name)!r}, not a string or null")
    if not isinstance(sweep.jobs, list) or not all(isinstance(j, str) for j in sweep.jobs):
        raise TypeError(f"jobs is {sweep.jobs!r}, not a list of job ids")
    if not isinstance(sweep.points, list) or not all(
        isinstance(p, list) and all(isinstance(o, str) for o in p) for p in sweep.points
    ):
        raise TypeError("points is not a list of lists of key=value strings")


def write_json(path: Path, data: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


@dataclass
class PointState:
    """A task's own record of its point: what it did, with the facts a person looks for."""

    state: str = PENDING
    job: str | None = None  # Slurm's <array job>_<index>
    host: str | None = None
    log: str | None = None
    error: str | None = None  # its own last error line
    runs: dict[str, str] = field(default_factory=dict)  # model -> MLflow run id
    weights: dict[str, str] = field(default_factory=dict)  # model -> md5 of its weights (dvc.lock)
    seconds: dict[str, float] = field(default_factory=dict)  # clone, pull, run, push
    skipped: bool = False  # its experiment was on the remote already
    updated: float = 0.0


def point_path(sweep: Sweep, index: int) -> Path:
    return sweep.dir / "points" / f"{index}.json"


def read_point(sweep: Sweep, index: int) -> PointState:
    try:
        data = json.loads(point_path(sweep, index).read_text(encoding="utf-8"))
        state = PointState(**data)
        for name in ("runs", "weights", "seconds"):
            if not isinstance(getattr(state, name), dict):
                raise TypeError(f"{name} is not a map")
        return state
    except FileNotFoundError:
        return PointState()
    except (ValueError, TypeError, OSError) as exc:
        return PointState(FAILED, error=f"{point_path(sweep, index)}: unreadable ({exc})")


def write_point(sweep: Sweep, index: int, state: PointState) -> None:
    state.updated = round(time.time(), 3)
    try:
        write_json(point_path(sweep, index), asdict(state))
    except OSError as exc:  # a full disk is DiskFullError, the stage's own line
        raise SweepError(f"{point_path(sweep, index)}: expected to write the point's state; "
                         f"found {exception_text(exc)}") from None  # fmt: skip
