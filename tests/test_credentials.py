"""A tracking URI with a user and password in it: refused in one line that shows it masked,
on every path that reads or names the tracking store, and never written anywhere."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from genpipe import ci, cli
from genpipe.errors import TrackingError
from genpipe.tracking import store

from net import free_port

SECRET = "S3cretPW"
URI = f"http://alice:{SECRET}@127.0.0.1:{free_port()}"
MASKED = URI.replace(SECRET, "***")


@pytest.fixture
def credentials_in_uri(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", URI)


def test_masked_hides_the_password_or_token_and_keeps_the_rest():
    assert store.masked("postgresql+psycopg2://mlflow:pw@db:5432/x?sslmode=require") == (
        "postgresql+psycopg2://mlflow:***@db:5432/x?sslmode=require")
    assert store.masked("https://tok3n@host/mlflow") == "https://***@host/mlflow"
    assert store.masked("sqlite:///mlflow.db") == "sqlite:///mlflow.db"
    assert store.masked(URI) == MASKED


@pytest.mark.parametrize("argv", [["registry", "check"], ["registry", "history", "gan"],
                                  ["compare", "gan"], ["ui"],
                                  ["serve", "gan", "--port", str(free_port())]])  # fmt: skip
def test_each_command_refuses_it_in_one_masked_line(credentials_in_uri, capsys, argv):
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    out, err = capsys.readouterr()
    assert exited.value.code != 0 and SECRET not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: MLFLOW_TRACKING_URI: expected")
    assert MASKED in lines[0] and "MLFLOW_TRACKING_PASSWORD" in lines[0]


def test_training_register_and_ci_retrain_refuse_it(credentials_in_uri, tmp_path, monkeypatch):
    from genpipe.registry.gate import Policy
    from genpipe.registry.register import Outputs, register
    from genpipe.tracking.training_run import TrainingRun

    record = tmp_path / "mlflow_run.json"
    with pytest.raises(TrackingError, match=r"\*\*\*") as training:
        TrainingRun("gan", {}, "hash", "exp", record_path=record)
    with pytest.raises(TrackingError, match=r"\*\*\*") as registering:
        register(Outputs.of("gan", "hash"), {}, "p", Policy(0.01, False, None, "main", None, 0.0),
                 experiment="exp")  # fmt: skip
    monkeypatch.setattr(ci, "dvc", lambda *args, **kwargs: subprocess.CompletedProcess(
        args, 0, stdout="team\n", stderr=""))  # a default DVC remote
    with pytest.raises(TrackingError, match=r"\*\*\*") as retraining:
        ci.check_setup(tmp_path)
    for error in (training, registering, retraining):
        assert SECRET not in str(error.value) and MASKED in str(error.value)
    assert not record.exists()


def test_the_ci_reports_links_and_a_run_record_name_no_password(monkeypatch, tmp_path):
    """The report's links into the UI come from the URI without its user info; a run record
    names the store masked (a database URI's password is the store's own to keep)."""
    from genpipe.tracking.training_run import TrainingRun

    monkeypatch.setenv("MLFLOW_TRACKING_URI", URI)
    links = ci.mlflow_links("gan", {"run_id": "r" * 32, "version": 1}, tmp_path)
    assert links and all(SECRET not in link and "alice" not in link for link in links.values())
    sqlite = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite)
    with TrainingRun("gan", {"seed": 0}, "hash", "exp", record_path=tmp_path / "r.json",
                     uri=sqlite) as run:  # fmt: skip
        pass
    assert json.loads(Path(tmp_path / "r.json").read_text())["tracking_uri"] == sqlite
    run.uri = "postgresql://mlflow:pw@db/x"  # as a database store's URI would read
    run._write_record()
    assert json.loads(Path(tmp_path / "r.json").read_text())["tracking_uri"] == (
        "postgresql://mlflow:***@db/x")
