"""`genpipe sweep` without a cluster: the grid as DVC expands it, each point checked before
anything is submitted, the batch script, what is refused before a submission, the status a
person reads, and waiting on Slurm. tests/test_sweep_slurm.py runs sweeps on a real one."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from genpipe.errors import GenpipeError, ParamsError
from genpipe.params.load import parse_params
from genpipe.params.schema import Params
from genpipe.sweep import local, slurm, task
from genpipe.sweep import submit as submitting
from genpipe.sweep.grid import SweepError, check, expand, sweep_id
from genpipe.sweep.record import (
    DONE,
    FAILED,
    PENDING,
    RUNNING,
    PointState,
    Sweep,
    load,
    write_point,
)

REPO = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def test_the_grid_is_every_combination_in_dvcs_order():
    points = expand(["gan.lr_g=1e-4,2e-4", "train.seed=range(0,3)"])
    assert points == [
        ("gan.lr_g=0.0001", "train.seed=0"), ("gan.lr_g=0.0001", "train.seed=1"),
        ("gan.lr_g=0.0001", "train.seed=2"), ("gan.lr_g=0.0002", "train.seed=0"),
        ("gan.lr_g=0.0002", "train.seed=1"), ("gan.lr_g=0.0002", "train.seed=2"),
    ]  # fmt: skip
    assert expand(["models=[gan]"]) == [("models=[gan]",)]


@pytest.mark.parametrize(("overrides", "expected"), [
    ([], "expected at least one -S key=value"),
    (["gan.lr_g"], "-S gan.lr_g: expected key=value[,value...]; found no '='"),
    (["other.yaml:x=1,2"], "-S other.yaml:...: expected keys of params.yaml"),
    (["gan.lr_g=range(0"], "expected DVC's -S syntax"),
])  # fmt: skip
def test_a_grid_it_cannot_read_is_one_line(overrides, expected):
    with pytest.raises(SweepError, match=None) as caught:
        expand(overrides)
    assert expected in str(caught.value) and "\n" not in str(caught.value)


def test_each_point_passes_genpipe_params_before_anything_is_submitted(tmp_path):
    params = tmp_path / "params.yaml"
    shutil.copyfile(REPO / "params.yaml", params)
    check(params, expand(["gan.lr_g=0.0001,0.0002", "train.seed=0,1"]))  # all well
    with pytest.raises(SweepError) as caught:
        check(params, expand(["train.seed=0", "gan.lr_g=0.0001,-1"]))
    message = str(caught.value)
    assert message.startswith("sweep point 1 (train.seed=0, gan.lr_g=-1): gan.lr_g: ")
    assert "greater than 0" in message
    with pytest.raises(SweepError, match=r"^sweep point 0 \(gan.lr_gg=1\): expected keys "
                       r"params.yaml has; Could not override 'gan.lr_gg'.$"):  # fmt: skip
        check(params, expand(["gan.lr_gg=1"]))  # a typo'd key
    with pytest.raises(SweepError, match=r"^sweep point 0 \(\+gan.lr_gg=1\): gan.lr_gg: "):
        check(params, expand(["+gan.lr_gg=1"]))  # added: refused as the params stage would
    assert params.read_bytes() == (REPO / "params.yaml").read_bytes()  # checked on a copy


def test_the_same_commit_engine_and_grid_are_the_same_sweep():
    points = expand(["gan.lr_g=1e-4,2e-4"])
    ident = sweep_id(COMMIT, "slurm", points)
    assert ident == sweep_id(COMMIT, "slurm", expand(["gan.lr_g=1e-4,2e-4"]))
    assert len({ident, sweep_id(COMMIT, "local", points), sweep_id("f" * 40, "slurm", points),
                sweep_id(COMMIT, "slurm", points[:1])}) == 4  # fmt: skip


def make_sweep(tmp_path: Path, points=(("gan.lr_g=0.0001",), ("gan.lr_g=0.0002",)), **kw) -> Sweep:
    sweep = Sweep("swabcdef12", kw.pop("engine", "slurm"), COMMIT, list(points),
                  workspace=str(tmp_path), python_bin="/opt/venv/bin", **kw)  # fmt: skip
    sweep.save()
    return sweep


def resources(**changes) -> slurm.Resources:
    values = dict(partition=None, time="04:00:00", cpus_per_task=2, mem="8G", gres=None,
                  account=None, max_parallel=None)  # fmt: skip
    return slurm.Resources(**{**values, **changes})


def test_the_batch_script_asks_for_what_params_and_flags_say(tmp_path):
    sweep = make_sweep(tmp_path, points=[("a=1",), ("a=2",), ("a=3",)])
    params = Params().sweep.model_copy(update={"partition": "gpu", "gres": "gpu:1"})
    asked = submitting.resources(params, {"mem": "16G", "max_parallel": 2, "time": None})
    text = slurm.script(sweep, asked)
    lines = text.splitlines()
    for line in ("#SBATCH --array=0-2%2", "#SBATCH --partition=gpu", "#SBATCH --gres=gpu:1",
                 "#SBATCH --mem=16G", "#SBATCH --time=04:00:00", "#SBATCH --cpus-per-task=2",
                 f"#SBATCH --output={sweep.dir}/logs/%a-%A.out"):  # fmt: skip
        assert line in lines, text
    assert not any(line.startswith("#SBATCH --account") for line in lines)
    assert lines[-1] == (f"exec /opt/venv/bin/genpipe sweep task {sweep.dir} "
                         '"$SLURM_ARRAY_TASK_ID"')  # fmt: skip
    # the script is bash that parses, with nothing after the exec
    path = slurm.write_script(sweep, asked)
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    assert slurm.script(sweep, resources()).count("%") == 2  # the log's %a and %A: no cap


@pytest.mark.parametrize(("key", "value"), [
    ("time", "4 hours"), ("mem", "8GB; rm -rf ~"), ("partition", "gpu\n#SBATCH --x"),
    ("gres", "gpu:1 --wrap=x"), ("cpus_per_task", 0), ("max_parallel", 0),
])  # fmt: skip
def test_a_sweep_setting_slurm_would_misread_is_refused(key, value):
    raw = Params().model_dump(by_alias=True)
    raw["sweep"][key] = value
    with pytest.raises(ParamsError, match=rf"^sweep\.{key}: "):
        parse_params(raw)


@pytest.fixture
def repo(tmp_path, monkeypatch) -> Path:
    """A git checkout of params.yaml, committed, as the working directory."""
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@e"}  # fmt: skip
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    work = tmp_path / "work"
    work.mkdir()
    shutil.copyfile(REPO / "params.yaml", work / "params.yaml")
    for args in (["init", "-q", "-b", "main"], ["add", "params.yaml"], ["commit", "-qm", "p"]):
        subprocess.run(["git", *args], cwd=work, check=True)
    monkeypatch.chdir(work)
    return work


def request(*overrides: str, engine: str = "slurm") -> submitting.Request:
    return submitting.Request(list(overrides or ["gan.lr_g=0.0001,0.0002"]), engine, False, {})


def test_a_sweep_of_uncommitted_changes_is_refused(repo):
    (repo / "params.yaml").write_text((repo / "params.yaml").read_text() + "\n")
    with pytest.raises(SweepError, match=r"expected a clean checkout .*found changes to "
                       r"params.yaml: commit them first"):  # fmt: skip
        submitting.submit(request())
    assert not (repo / "sweeps").exists()


def test_slurm_needs_an_mlflow_server_and_the_commit_on_the_git_remote(repo, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    with pytest.raises(SweepError, match=r"^MLFLOW_TRACKING_URI: expected an MLflow server .* "
                       "found sqlite:///mlflow.db"):  # fmt: skip
        submitting.submit(request())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://user:secret@127.0.0.1:1")
    with pytest.raises(GenpipeError, match=r"got http://user:\*\*\*@127.0.0.1:1 ") as refused:
        submitting.submit(request())  # the password would reach every task's environment
    assert "secret" not in str(refused.value)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    with pytest.raises(SweepError, match="expected a git remote named 'origin'"):
        submitting.submit(request())
    remote = repo.parent / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", str(remote)], check=True)
    subprocess.run(["git", "remote", "add", "origin", str(remote)], check=True)
    with pytest.raises(SweepError) as caught:
        submitting.submit(request())
    assert str(caught.value).endswith("found it only here: `git push origin HEAD` first")
    assert "secret" not in str(caught.value)


def test_a_bad_point_or_flag_is_refused_naming_it_before_any_record(repo):
    with pytest.raises(SweepError, match=r"^sweep point 1 \(gan.lr_g=0\): gan.lr_g: "):
        submitting.submit(request("gan.lr_g=0.0001,0"))
    flagged = submitting.Request(["gan.lr_g=0.0001"], "slurm", False, {"time": "4 hours"})
    with pytest.raises(SweepError, match=r"^genpipe sweep: .*sweep\.time: "):
        submitting.submit(flagged)
    assert not (repo / "sweeps").exists()


def test_the_status_says_what_slurm_knows_of_a_task_that_recorded_no_end(tmp_path, monkeypatch):
    points = [("a=1",), ("a=2",), ("a=3",), ("a=4",), ("a=5",)]
    sweep = make_sweep(tmp_path, points=points, jobs=["7"])
    write_point(sweep, 0, PointState(DONE, job="7_0", runs={"gan": "f" * 32}))
    write_point(sweep, 1, PointState(RUNNING, job="7_1", log="/logs/1-7.out"))
    write_point(sweep, 2, PointState(RUNNING, job="7_2"))
    write_point(sweep, 3, PointState(FAILED, job="7_3", error="error: train.device: no GPU",
                                     log="/logs/3-7.out"))  # fmt: skip
    said = {1: ("7", "OUT_OF_MEMORY", "None"), 2: ("7", "RUNNING", "None"),
            4: ("7", "PENDING", "Resources")}  # fmt: skip
    monkeypatch.setattr(slurm, "states", lambda jobs: said if jobs == ["7"] else {})
    states = submitting.point_states(sweep)
    assert [states[i].state for i in range(5)] == [DONE, FAILED, RUNNING, FAILED, PENDING]
    assert states[4].job == "7_4"
    assert states[1].error == ("Slurm says OUT_OF_MEMORY (None) and the task recorded no end "
                               "(killed? see its log)")  # fmt: skip
    lines, failed = submitting.status_lines(sweep)
    assert failed == 2
    assert lines[0] == "sweep swabcdef12: slurm, commit 0123456789ab, 5 points, jobs 7"
    assert lines[2].split() == ["0", "done", "swabcdef12-0", "7_0", "a=1", "runs", "gan:ffffffff"]
    assert lines[3:6] == [
        "1      failed   swabcdef12-1   7_1          a=2",
        "       error: Slurm says OUT_OF_MEMORY (None) and the task recorded no end (killed? "
        "see its log)",
        "       log: /logs/1-7.out",
    ]  # fmt: skip
    assert "       error: train.device: no GPU" in lines
    assert lines[-1] == "1 pending, 1 running, 1 done, 2 failed"
    # a task that Slurm no longer lists at all
    monkeypatch.setattr(slurm, "states", lambda jobs: {})
    assert submitting.point_states(sweep)[2].error.startswith("Slurm no longer lists it")
    # Slurm cannot be asked: the records as they are, no running task called failed
    monkeypatch.setattr(slurm, "states", lambda jobs: None)
    assert submitting.point_states(sweep)[2].state == RUNNING
    # point 3 submitted again (job 9) and pending: not its earlier failure; a job submitted
    # by hand (8, named only by a task's record) is asked about too
    write_point(sweep, 0, PointState(DONE, job="8_0"))
    asked = []
    again = {3: ("9", "PENDING", "Priority")}
    monkeypatch.setattr(slurm, "states", lambda jobs: asked.append(jobs) or again)
    states = submitting.point_states(sweep)
    assert (states[3].state, states[3].job, states[3].error) == (PENDING, "9_3", None)
    assert asked == [["7", "8"]]


def test_a_sweep_that_is_not_there_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SweepError, match=r"^sweep sw00000000: expected sweeps/sw00000000/"
                       r"sweep.json; found no such file"):  # fmt: skip
        load(Path("sw00000000"))
    (tmp_path / "sweeps/sw1").mkdir(parents=True)
    (tmp_path / "sweeps/sw1/sweep.json").write_text('{"id": 1}')
    with pytest.raises(SweepError, match="expected the record genpipe sweep wrote; found Type"):
        load(Path("sw1"))
    sweep = make_sweep(tmp_path)  # a record as written, then edited by hand
    record = sweep.dir / "sweep.json"
    record.write_text(record.read_text().replace('"jobs": []', '"jobs": "123"'))
    with pytest.raises(SweepError, match=r"found TypeError: jobs is '123', not a list of job ids"):
        load(sweep.dir)


def test_waiting_asks_squeue_more_slowly_until_no_task_is_active(monkeypatch):
    said = [("PENDING", "PENDING"), ("RUNNING", "PENDING"), ("COMPLETED", "RUNNING"),
            ("COMPLETED", "FAILED")]  # fmt: skip
    answers = iter([{0: ("7", a, ""), 1: ("7", b, "")} for a, b in said])
    monkeypatch.setattr(slurm, "_squeue", lambda job: next(answers))
    slept = []
    slurm.wait("7", sleep=slept.append)
    assert slept == [1.0, 2.0, 3.0]
    # a job squeue has forgotten (past MinJobAge) has ended too
    monkeypatch.setattr(slurm, "_squeue", lambda job: {})
    slurm.wait("7", sleep=slept.append)
    assert slept == [1.0, 2.0, 3.0]
    # a controller that does not answer ends the waiting, in one line, after `patience`
    monkeypatch.setattr(slurm, "_squeue", lambda job: None)
    with pytest.raises(SweepError, match=r"^squeue: expected to follow job 7; found no answer "
                       r"3 times in a row \(the job goes on"):  # fmt: skip
        slurm.wait("7", sleep=lambda s: None, patience=3)


def fake_dvc(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "dvc"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def test_a_failed_dvc_command_keeps_the_stages_own_error_line(tmp_path, monkeypatch, capsys):
    dvc = fake_dvc(tmp_path, "echo 'Running stage train@gan'; echo 'error: train.device: no GPU'; "
                   "echo \"ERROR: failed to reproduce 'train@gan'\"; exit 1")  # fmt: skip
    monkeypatch.setattr(task, "dvc_command", lambda: str(dvc))
    state = PointState(RUNNING)
    with pytest.raises(SweepError, match="^error: train.device: no GPU$"):
        task._dvc(["exp", "run"], tmp_path, state)
    assert state.error == "error: train.device: no GPU"
    assert "Running stage train@gan" in capsys.readouterr().out  # passed on to the task's log
    dvc = fake_dvc(tmp_path, "echo 'ERROR: failed to push'; exit 1")
    with pytest.raises(SweepError, match="^ERROR: failed to push$"):
        task._dvc(["exp", "push"], tmp_path, PointState(RUNNING))


def test_the_stages_register_as_candidates_and_local_runs_land_here(tmp_path, monkeypatch):
    sweep = make_sweep(tmp_path, engine="local")
    monkeypatch.setenv("GENPIPE_BRANCH", "main")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    env = local.queue_env(sweep)
    assert env["GENPIPE_BRANCH"] == "sweep-swabcdef12" and env["GENPIPE_SWEEP"] == "swabcdef12"
    assert env["MLFLOW_TRACKING_URI"] == f"sqlite:///{tmp_path}/mlflow.db"  # not the queue's copy
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5050")
    assert local.queue_env(sweep)["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5050"


def test_the_sweep_command_says_what_it_takes(tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for args, expected in (
        (["sweep", "status", "sw00000000"], "error: sweep sw00000000: expected sweeps/sw00000000/"),
        (["sweep", "bogus"], "error: genpipe sweep bogus: expected `genpipe sweep -S"),
        (["compare", "gan", "--sweep", "x'y"], "expected a sweep's id (sw and 8 hex digits)"),
    ):  # fmt: skip
        result = subprocess.run(["genpipe", *args], cwd=tmp_path, env=env, capture_output=True,
                                text=True)  # fmt: skip
        assert result.returncode != 0 and expected in result.stderr, result.stderr
