"""tracking: MLflow runs in a temporary sqlite store, server checks, git lineage, run names."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

from genpipe.errors import TrackingError
from genpipe.tracking import describe, experiments, flatten, limits, lineage, training_run
from genpipe.tracking import store as tracking_store
from genpipe.tracking.recorded_run import RecordedRun
from genpipe.tracking.training_run import TrainingRun

from net import free_port

# MLflow's sqlalchemy store uses an option that SQLAlchemy deprecates; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore::sqlalchemy.exc.SADeprecationWarning")

PARAMS = {
    "seed": 0,
    "models": ["gan", "autoencoder"],
    "data": {"source": "digits", "mirrors": None, "sha256": {}, "download": {"timeout": 30.0}},
    "gan": {"lr_g": 2e-4, "steps": 3000, "spectral_norm": False},
}


@pytest.fixture(scope="module")
def template_db(tmp_path_factory) -> Path:
    """An empty, migrated MLflow sqlite store. A fresh store spends seconds in migrations;
    each test gets a copy of this one instead."""
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def store(template_db, tmp_path, monkeypatch) -> Iterator[str]:
    """MLFLOW_TRACKING_URI -> a sqlite store of this test's own, run from tmp_path."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # tmp_path: no repo
    shutil.copy(template_db, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    yield uri
    mlflow.set_tracking_uri(None)  # TrainingRun set it process-wide; leave no trace


def _git(repo: Path, *args: str) -> str:
    cmd = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    cmd += ["-c", "commit.gpgsign=false", "-C", str(repo), *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()


def _git_repo(path: Path) -> str:
    """A repository at `path` with params.yaml and dvc.lock committed; returns the sha."""
    _git(path, "init", "-q")
    (path / "params.yaml").write_text("seed: 0\n")
    (path / "dvc.lock").write_text("schema: '2.0'\n")
    _git(path, "add", "params.yaml", "dvc.lock")
    _git(path, "commit", "-q", "-m", "init")
    return _git(path, "rev-parse", "HEAD")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _training_run(record: Path, **kwargs) -> TrainingRun:
    kwargs.setdefault("model", "gan")
    kwargs.setdefault("params", PARAMS)
    return TrainingRun(
        data_hash="d" * 40,
        experiment_prefix="genpipe",
        record_path=record,
        **kwargs,
    )


def test_run_is_logged_to_sqlite(store, tmp_path):
    sha = _git_repo(tmp_path)
    (tmp_path / "samples.png").write_bytes(b"not really a png")
    record = tmp_path / "models" / "gan" / "mlflow_run.json"  # its directory is created
    steps = [0, 50, 100, 150]

    with _training_run(record) as run:
        for step in steps:
            run.log_metrics({"loss_d": 0.5, "loss_g": 1.0 + step / 100}, step=step)
        run.log_artifact(Path("samples.png"))

    client = MlflowClient(store)
    logged = client.get_run(run.run_id)
    assert logged.info.status == "FINISHED"
    assert logged.info.run_name == run.run_name == f"gan-{sha[:7]}-p{lineage.digest(PARAMS)[:7]}"
    experiment = client.get_experiment(logged.info.experiment_id)
    assert experiment.name == run.experiment == "genpipe-gan"
    # MLflow's UI shows it as model training (runs, charts), not as a GenAI experiment
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert logged.data.params == {
        "seed": "0",
        "models": "['gan', 'autoencoder']",
        "data.source": "digits",
        "data.mirrors": "null",
        "data.sha256": "{}",
        "data.download.timeout": "30.0",
        "gan.lr_g": "0.0002",
        "gan.steps": "3000",
        "gan.spectral_norm": "False",
    }
    tags = logged.data.tags
    assert tags["git.commit"] == tags["mlflow.source.git.commit"] == sha
    assert tags["git.dirty"] == "false"  # the untracked mlflow.db and mlruns/ do not count
    assert tags["data.hash"] == "d" * 40
    assert tags["genpipe.model"] == "gan"
    assert "dvc.exp_name" not in tags
    history = client.get_metric_history(run.run_id, "loss_g")
    assert sorted((m.step, m.value) for m in history) == [(s, 1.0 + s / 100) for s in steps]
    assert [a.path for a in client.list_artifacts(run.run_id)] == ["samples.png"]

    text = record.read_text()
    assert text.endswith("}\n")
    assert json.loads(text) == {
        "experiment_id": logged.info.experiment_id,
        "run_id": run.run_id,
        "run_name": run.run_name,
        "tracking_uri": store,
    }
    assert list(json.loads(text)) == sorted(json.loads(text))
    assert [p.name for p in record.parent.iterdir()] == ["mlflow_run.json"]  # no temp file


def test_a_failed_run_writes_no_record_and_keeps_the_previous_one(store, tmp_path):
    record = tmp_path / "mlflow_run.json"
    with _training_run(record) as finished:
        pass
    before = record.read_bytes()
    with pytest.raises(ValueError, match="diverged"), _training_run(record) as failed:
        raise ValueError("diverged")  # training fails inside the run
    assert record.read_bytes() == before  # evaluate still reads the finished run
    client = MlflowClient(store)
    assert client.get_run(failed.run_id).info.status == "FAILED"
    assert json.loads(before)["run_id"] == finished.run_id != failed.run_id


def test_run_name_and_dvc_experiment(store, tmp_path, monkeypatch):
    params = {"gan": {"lr_g": 2e-4}}
    assert lineage.run_name("gan", "3f2a1bc", "clean-hake", params) == "gan-3f2a1bc-clean-hake"
    # outside `dvc exp run`: the params hash (the version's params.hash tag) tells runs apart
    plain = lineage.run_name("gan", "3f2a1bc", None, params)
    assert plain == f"gan-3f2a1bc-p{lineage.digest(params)[:7]}"
    assert lineage.run_name("gan", "3f2a1bc", None, {"gan": {"lr_g": 3e-4}}) != plain
    monkeypatch.setenv("DVC_EXP_NAME", "clean-hake")

    with _training_run(tmp_path / "run.json", model="autoencoder") as run:
        pass

    logged = MlflowClient(store).get_run(run.run_id)
    assert logged.info.run_name == "autoencoder-nogit-clean-hake"  # tmp_path is no repo
    assert logged.data.tags["dvc.exp_name"] == "clean-hake"
    assert logged.data.tags["git.commit"] == "unknown"
    assert "mlflow.source.git.commit" not in logged.data.tags


@pytest.mark.parametrize(
    ("error", "status"), [(ValueError, "FAILED"), (KeyboardInterrupt, "KILLED")]
)
def test_exception_ends_the_run_and_propagates(store, tmp_path, error, status):
    with pytest.raises(error, match="boom"), _training_run(tmp_path / "run.json") as run:
        run.log_metrics({"loss_g": 2.5}, step=7)
        raise error("boom")

    client = MlflowClient(store)
    assert client.get_run(run.run_id).info.status == status
    # what was logged before the failure is kept
    assert [(m.step, m.value) for m in client.get_metric_history(run.run_id, "loss_g")] == [
        (7, 2.5)
    ]


def test_log_metrics_is_cheap_and_complete(store, tmp_path):
    n = 2000
    with _training_run(tmp_path / "run.json") as run:
        start = time.perf_counter()
        for step in range(n):
            run.log_metrics({"loss_d": 0.5, "loss_g": step / 7, "images_per_s": 900.0}, step)
        elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"{n} log_metrics calls took {elapsed:.2f} s"

    client = MlflowClient(store)
    history = client.get_metric_history(run.run_id, "loss_g")
    assert sorted((m.step, m.value) for m in history) == [(s, s / 7) for s in range(n)]
    assert len(client.get_metric_history(run.run_id, "images_per_s")) == n


def test_failed_metric_upload_stops_training(store, tmp_path, monkeypatch):
    monkeypatch.setattr(training_run, "FLUSH_SECONDS", 0.0)  # hand over on every call
    log_batch = SqlAlchemyStore.log_batch

    def refuse_metrics(self, run_id, metrics=(), params=(), tags=()):
        if metrics:
            raise MlflowException("database is locked")
        log_batch(self, run_id, metrics, params, tags)

    # on the class, before the run's store exists: MLflow's async logging worker calls the
    # store's log_batch as it was when the store was made
    monkeypatch.setattr(SqlAlchemyStore, "log_batch", refuse_metrics)
    steps = []
    with pytest.raises(TrackingError) as excinfo:  # noqa: SIM117
        with _training_run(tmp_path / "run.json") as run:
            for step in range(300):
                run.log_metrics({"loss_g": 1.0}, step)
                steps.append(step)
                time.sleep(0.01)
    message = str(excinfo.value)
    assert message.startswith(f"MLflow tracking store {store}: could not log metrics to run ")
    assert "database is locked" in message
    assert "\n" not in message
    assert len(steps) < 50  # raised from log_metrics soon after the write failed, not at exit
    assert MlflowClient(store).get_run(run.run_id).info.status == "FAILED"


def test_failed_last_upload_fails_the_stage(store, tmp_path, monkeypatch):
    """Metrics still buffered at the end: __exit__ waits for MLflow's async write, and its
    failure is the stage's (a one-line TrackingError), the run FAILED."""
    log_batch = SqlAlchemyStore.log_batch

    def refuse_metrics(self, run_id, metrics=(), params=(), tags=()):
        if metrics:
            raise MlflowException("disk I/O error")
        log_batch(self, run_id, metrics, params, tags)

    monkeypatch.setattr(SqlAlchemyStore, "log_batch", refuse_metrics)
    with pytest.raises(TrackingError, match=r"could not log metrics .*disk I/O error"):  # noqa: SIM117
        with _training_run(tmp_path / "run.json") as run:
            run.log_metrics({"loss_g": 1.0}, 0)
    assert MlflowClient(store).get_run(run.run_id).info.status == "FAILED"


def test_each_model_has_its_own_experiment(store, tmp_path):
    assert experiments.experiment_name("genpipe", "gan") == "genpipe-gan"
    runs = {}
    for model in ("gan", "autoencoder"):
        with _training_run(tmp_path / f"{model}.json", model=model) as run:
            run.log_metrics({"fid": 1.0}, 0)
        runs[model] = run

    client = MlflowClient(store)
    made = {
        model: client.get_experiment(client.get_run(run.run_id).info.experiment_id)
        for model, run in runs.items()
    }
    assert made["gan"].name == "genpipe-gan"
    assert made["autoencoder"].name == "genpipe-autoencoder"
    for experiment in made.values():
        assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert [r.info.run_name for r in client.search_runs([made["gan"].experiment_id])] == [
        runs["gan"].run_name
    ]


def test_existing_experiment_gets_the_kind_tag(store):
    client = MlflowClient(store)
    made_by_hand = client.create_experiment("genpipe-gan")  # as genpipe before the tag
    assert "mlflow.experimentKind" not in client.get_experiment(made_by_hand).tags

    assert experiments.get_or_create_experiment(client, "genpipe-gan") == made_by_hand
    tags = client.get_experiment(made_by_hand).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"

    # a kind someone chose is kept
    client.set_experiment_tag(made_by_hand, "mlflow.experimentKind", "finetuning")
    assert experiments.get_or_create_experiment(client, "genpipe-gan") == made_by_hand
    assert client.get_experiment(made_by_hand).tags["mlflow.experimentKind"] == "finetuning"


def test_deleted_experiment_is_a_one_line_error(store, tmp_path):
    client = MlflowClient(store)
    client.delete_experiment(client.create_experiment("genpipe-gan"))
    with pytest.raises(TrackingError) as excinfo, _training_run(tmp_path / "run.json"):
        pytest.fail("training ran into a deleted experiment")
    message = str(excinfo.value)
    assert "MLflow experiment 'genpipe-gan' in " in message
    assert "is deleted; restore it (mlflow experiments restore --experiment-id " in message
    assert "\n" not in message


def test_params_are_logged_in_batches(store):
    """More params than MLflow takes in one batch (100)."""
    client = MlflowClient(store)
    run_id = client.create_run(experiments.get_or_create_experiment(client, "p")).info.run_id
    params = {"grid": {f"p{i:03d}": i for i in range(250)}, "seed": 0}

    flatten.log_params(client, run_id, params)

    logged = client.get_run(run_id).data.params
    assert logged == {**{f"grid.p{i:03d}": str(i) for i in range(250)}, "seed": "0"}


def test_run_tags():
    git = {"commit": "a" * 40, "short": "a" * 7, "dirty": "false"}
    tags = lineage.run_tags("autoencoder", "d" * 40, git)
    assert tags["genpipe.model"] == "autoencoder"
    assert tags["git.commit"] == tags["mlflow.source.git.commit"] == "a" * 40
    assert tags["git.dirty"] == "false"
    assert tags["data.hash"] == "d" * 40
    unknown = lineage.run_tags("gan", "h", {"commit": "unknown", "short": "nogit",
                                             "dirty": "unknown"})  # fmt: skip
    assert "mlflow.source.git.commit" not in unknown


def test_flatten():
    tree = {"a": {"b": 1, "c": {"d": None}}, "e": {}, "f": [1, 2], "g": "x"}
    assert flatten.flatten(tree) == {"a.b": 1, "a.c.d": None, "e": {}, "f": [1, 2], "g": "x"}
    assert flatten.flatten({}) == {}
    metrics = {"fid": 12, "per_class": {"0": 1.5, "note": "n/a", "ok": True}, "empty": {}}
    assert flatten.flatten_metrics(metrics) == {"fid": 12.0, "per_class.0": 1.5}


def test_flatten_params():
    params = {
        "gan": {"lr_g": 2e-4, "loss": "hinge"},
        "data": {"download": {"timeout": 30.0, "retries": 3}, "path": None, "sha256": {}},
        "models": ["gan", "autoencoder"],
        "long": "x" * 7000,
    }

    flat = flatten.flatten_params(params)

    assert flat == {
        "gan.lr_g": "0.0002",
        "gan.loss": "hinge",
        "data.download.timeout": "30.0",
        "data.download.retries": "3",
        "data.path": "null",
        "data.sha256": "{}",
        "models": "['gan', 'autoencoder']",
        "long": "x" * limits.PARAM_VALUE_MAX,
    }


def test_tracking_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    default = tracking_store.DEFAULT_TRACKING_URI
    assert tracking_store.tracking_uri() == "sqlite:///mlflow.db" == default
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    assert tracking_store.tracking_uri() == "sqlite:///mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_store.tracking_uri() == "http://127.0.0.1:5000"


def test_unreachable_server_fails_fast(store, tmp_path):
    uri = f"http://127.0.0.1:{_closed_port()}"
    start = time.perf_counter()
    with pytest.raises(TrackingError) as excinfo:
        tracking_store.check_tracking_server(uri)
    assert time.perf_counter() - start < 3.0
    message = str(excinfo.value)
    assert "\n" not in message
    assert message == (
        f"MLflow tracking server {uri} is unreachable (connection refused); "
        "start it or unset MLFLOW_TRACKING_URI to use sqlite:///mlflow.db"
    )

    # a run fails in __enter__: the body (training) never runs, no record is written
    record = tmp_path / "run.json"
    with pytest.raises(TrackingError, match="unreachable"), _training_run(record, uri=uri):
        pytest.fail("training ran although the tracking server is down")
    assert not record.exists()


def test_server_health(http_server):
    http_server.route("/health", (200, b"OK"), (503, b"down"), ("hang", b""))

    tracking_store.check_tracking_server(http_server.url + "/")
    assert http_server.hits["/health"] == 1

    with pytest.raises(TrackingError, match=r"unreachable \(HTTP 503 on /health\)"):
        tracking_store.check_tracking_server(http_server.url)

    start = time.perf_counter()
    with pytest.raises(TrackingError, match=r"unreachable \(no answer within 0.2 s\)"):
        tracking_store.check_tracking_server(http_server.url, timeout=0.2)
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize(
    ("uri", "fragment"),
    [
        ("sqlite:///{tmp}/missing/mlflow.db", "directory {tmp}/missing does not exist"),
        ("sqlite:/mlflow.db", "is malformed; expected sqlite:///relative/path.db"),
        ("http://", "is malformed; expected http(s)://host"),
        ("http://host:port", "is malformed"),
        ("foo://bar", "could not start a run in experiment 'genpipe-gan'"),
    ],
)
def test_bad_uri_is_a_one_line_error(store, tmp_path, uri, fragment):
    uri = uri.format(tmp=tmp_path)
    with pytest.raises(TrackingError) as excinfo, _training_run(tmp_path / "r.json", uri=uri):
        pytest.fail("training ran with an unusable tracking URI")
    assert fragment.format(tmp=tmp_path) in str(excinfo.value)
    assert "\n" not in str(excinfo.value)
    assert not (tmp_path / "missing").exists()  # MLflow would have created it


def test_git_info_outside_a_repository(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    unknown = {"commit": "unknown", "short": "nogit", "dirty": "unknown"}
    assert lineage.git_info(tmp_path) == unknown
    assert lineage.git_info(tmp_path / "does-not-exist") == unknown
    monkeypatch.setenv("PATH", str(tmp_path))  # no git executable at all
    assert lineage.git_info(tmp_path) == unknown


def test_git_info_in_a_repository(tmp_path):
    sha = _git_repo(tmp_path)
    assert lineage.git_info(tmp_path) == {"commit": sha, "short": sha[:7], "dirty": "false"}

    (tmp_path / "untracked.txt").write_text("new\n")
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")  # DVC rewrites it
    assert lineage.git_info(tmp_path)["dirty"] == "false"

    (tmp_path / "params.yaml").write_text("seed: 1\n")
    assert lineage.git_info(tmp_path) == {"commit": sha, "short": sha[:7], "dirty": "true"}


# --- what goes wrong: a corrupt store, a server whose API fails ------------------------------


def test_corrupt_mlflow_db_is_one_line_naming_the_file(store, tmp_path):
    (tmp_path / "mlflow.db").write_bytes(b"\x00garbage, not sqlite" * 1000)
    uri = "sqlite:///mlflow.db"  # as the stages see it, from the repo root
    with pytest.raises(TrackingError) as excinfo, _training_run(tmp_path / "r.json", uri=uri):
        pytest.fail("training ran on a corrupt store")
    message = str(excinfo.value)
    assert "\n" not in message
    assert "mlflow.db is not a usable SQLite database" in message
    assert "`mv mlflow.db mlflow.db.corrupt`" in message

    record = tmp_path / "run.json"
    record.write_text(json.dumps({"run_id": "a" * 32, "tracking_uri": uri}))
    with pytest.raises(TrackingError, match=r"mv mlflow.db mlflow.db.corrupt") as excinfo:
        RecordedRun(record, uri=uri).open()
    assert "\n" not in str(excinfo.value)


def broken_api(http_server) -> str:
    """/health answers, every /api/ call fails with HTTP 500."""
    http_server.route("/health", (200, b"OK"))
    http_server.route("/api/*", (500, b'{"error_code": "INTERNAL_ERROR", "message": "boom"}'))
    return http_server.url


def test_server_whose_api_fails_fails_the_stage_within_seconds(http_server, tmp_path,
                                                                monkeypatch, caplog):  # fmt: skip
    for key in tracking_store.HTTP_DEFAULTS:
        monkeypatch.delenv(key, raising=False)  # genpipe's bounds, not the caller's
    uri = broken_api(http_server)
    start = time.perf_counter()
    with pytest.raises(TrackingError) as excinfo, _training_run(tmp_path / "r.json", uri=uri):
        pytest.fail("training ran although the server's API fails")
    train_s = time.perf_counter() - start
    assert "\n" not in str(excinfo.value) and "could not start a run" in str(excinfo.value)
    assert "retrying" in caplog.text  # a line while it waits

    record = tmp_path / "run.json"
    record.write_text(json.dumps({"run_id": "a" * 32, "tracking_uri": uri}))
    start = time.perf_counter()
    with pytest.raises(TrackingError, match="could not read run"):
        RecordedRun(record, uri=uri).open()
    evaluate_s = time.perf_counter() - start
    print(f"broken API: train failed in {train_s:.1f} s, evaluate in {evaluate_s:.1f} s")
    assert train_s < 60 and evaluate_s < 60


# --- which service failed: the server, the database behind it, or its artifact store ------

PG_DOWN = json.dumps({
    "error_code": "TEMPORARILY_UNAVAILABLE",
    "message": '(psycopg2.OperationalError) connection to server at "127.0.0.1", port 5433 '
               "failed: Connection refused\n\tIs the server running on that host?\n\n"
               "(Background on this error at: https://sqlalche.me/e/21/e3q8)",
}).encode()  # fmt: skip
DB = "/api/2.0/mlflow/experiments/get*"
ARTIFACTS = "/api/2.0/mlflow-artifacts/artifacts*"


def mlflow_failure() -> MlflowException:
    """What MLflow's client raises after its retries."""
    return MlflowException("API request to http://h/api/2.0/mlflow/runs/create failed with "
                           "exception HTTPConnectionPool: Max retries exceeded")  # fmt: skip


@pytest.mark.parametrize(
    ("routes", "said"),
    [
        ({DB: (503, PG_DOWN)},
         'its PostgreSQL database fails: connection to server at "127.0.0.1", port 5433 '
         "failed: Connection refused"),
        ({DB: ("hang", b"")}, "a query of its database gets no answer within 0.3 s"),
        ({DB: (404, b"{}"), ARTIFACTS: (500, b"<html>")},
         "listing its artifact store gets HTTP 500: the store behind it"),
        ({"/health": (503, b"")}, "is failing (HTTP 503 on /health)"),
        ({DB: (200, b"{}"), ARTIFACTS: (404, b"")}, None),  # all answer: MLflow's own words
    ],
)  # fmt: skip
def test_a_failed_call_names_the_service_behind_the_server(http_server, monkeypatch, routes,
                                                           said):  # fmt: skip
    monkeypatch.setitem(tracking_store.PROBE_SECONDS, "database", 0.3)
    http_server.route("/health", (200, b"OK"))
    for path, answer in routes.items():
        http_server.route(path, answer)
    uri = http_server.url
    line = tracking_store.failure(f"MLflow registry at {uri}: could not register genpipe-gan",
                                  uri, mlflow_failure())  # fmt: skip
    assert "\n" not in line
    head = f"MLflow registry at {uri}: could not register genpipe-gan"
    if said is None:
        assert line == f"{head} (MlflowException: {mlflow_failure()})"
    else:
        assert line.startswith(f"{head}: the MLflow server at {uri} ")
        assert said in line and "Max retries" not in line and "Background" not in line


def test_a_server_that_is_gone_is_named_and_a_local_store_is_not_probed(http_server):
    uri = f"http://127.0.0.1:{free_port()}"
    line = tracking_store.failure("could not register", uri, mlflow_failure())
    assert line == f"could not register: the MLflow server at {uri} does not answer " \
                   "(connection refused)"  # fmt: skip
    line = tracking_store.failure("could not register", "sqlite:///mlflow.db", mlflow_failure())
    assert line.startswith("could not register (MlflowException: API request")


# --- what a run page shows: its datasets, source, description; constants as tags -----------


def write_prepared(root: Path, md5: str | None) -> None:
    """data/prepared's info.json as fetch writes it, and dvc.lock's entry for it."""
    prepared = root / "data/prepared"
    prepared.mkdir(parents=True)
    info = {"source": "digits", "num_classes": 10, "shape": [1797, 1, 8, 8],
            "counts": {"train": 1437, "test": 360}}  # fmt: skip
    (prepared / "info.json").write_text(json.dumps(info))
    if md5:
        lock = {"schema": "2.0", "stages": {"fetch": {"outs": [
            {"path": "data/prepared", "md5": md5, "size": 1, "nfiles": 3}]}}}  # fmt: skip
        (root / "dvc.lock").write_text(json.dumps(lock))


def test_a_run_lists_its_dataset_with_the_dvc_digest_and_its_source(store, tmp_path,
                                                                    monkeypatch):  # fmt: skip
    from genpipe.tracking.datasets import prepared_input

    sha = _git_repo(tmp_path)
    monkeypatch.chdir(tmp_path)
    write_prepared(tmp_path, md5="0123456789abcdef0123456789abcdef.dir")
    data = {"source": "digits", "image_size": 8, "channels": 1, "test_fraction": 0.2}
    train = prepared_input(data, "train", "e" * 64)
    description = describe.describe_training("gan", PARAMS | {"train": {"batch_size": 64}}, train)
    with _training_run(tmp_path / "run.json", inputs=[train], description=description) as run:
        pass

    logged = MlflowClient(store).get_run(run.run_id)
    [given] = logged.inputs.dataset_inputs
    assert given.dataset.name == "digits"
    assert given.dataset.digest == "0123456789abcdef0123456789abcdef.dir"  # dvc.lock's
    assert "sklearn.datasets.load_digits" in given.dataset.source
    profile = json.loads(given.dataset.profile)
    assert profile["images"] == 1437 and profile["image_shape"] == [1, 8, 8]
    assert [(t.key, t.value) for t in given.tags] == [("mlflow.data.context", "training")]
    tags = logged.data.tags
    assert tags["mlflow.source.name"] == "pipeline/train_gan.py"
    assert tags["mlflow.source.type"] == "LOCAL"
    assert tags["mlflow.source.git.commit"] == sha
    note = tags["mlflow.note.content"]
    assert "**gan** trained on **digits**: 1437 train images of 1×8×8" in note
    assert "`gan.lr_g=0.0002`" in note and "`seed=0`" in note


def test_outside_dvc_the_digest_is_the_data_hash_and_sources_are_named(tmp_path, monkeypatch):
    from genpipe.tracking.datasets import prepared_input

    monkeypatch.chdir(tmp_path)
    write_prepared(tmp_path, md5=None)  # no dvc.lock: a stage run by hand
    folder = {"source": "folder", "path": "shots/cats"}
    test = prepared_input(folder, "test", "e" * 64)
    assert (test.name, test.digest, test.context) == ("folder:cats (test)", "e" * 32, "evaluation")
    assert json.loads(test.source) == {"uri": "shots/cats"} and test.source_type == "local"
    assert test.profile["images"] == 360
    fashion = prepared_input({"source": "fashion-mnist", "local": False, "mirrors": None},
                             "train", "e" * 64)  # fmt: skip
    assert fashion.source_type == "http" and json.loads(fashion.source)["url"].startswith("http")


def test_evaluation_constants_are_tags_and_the_summary_goes_in_the_description(store, tmp_path):
    record = tmp_path / "run.json"
    with _training_run(record, description="**gan** trained on **digits**") as run:
        pass
    metrics = {"fid": 3.5, "fid_over_floor": 2.0, "floor": {"fid": 1.75}, "num_samples": 360}
    recorded = RecordedRun(record, uri=store).open()
    recorded.log(metrics, [], summary="FID 3.5")
    recorded.log(metrics, [], summary="FID 3.4")
    logged = MlflowClient(store).get_run(run.run_id)
    assert set(logged.data.metrics) == {"eval/fid", "eval/fid_over_floor"}
    assert logged.data.tags["eval/floor.fid"] == "1.75"
    assert logged.data.tags["eval/num_samples"] == "360"
    # the summary replaces the last one: a rerun of evaluate does not add a second
    note = logged.data.tags["mlflow.note.content"]
    assert note == "**gan** trained on **digits**\n\n**Evaluated:** FID 3.4"


def test_a_training_run_samples_system_metrics(store, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    client = MlflowClient(store)
    key = "system/cpu_utilization_percentage"
    with _training_run(tmp_path / "run.json") as run:  # training, as far as it can tell
        deadline = time.monotonic() + 30
        while len(client.get_metric_history(run.run_id, key)) < 2:
            assert time.monotonic() < deadline, "no system metrics within 30 s"
            time.sleep(0.1)
    assert "system/system_memory_usage_megabytes" in client.get_run(run.run_id).data.metrics

    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")  # MLflow's own switch
    with _training_run(tmp_path / "off.json") as off:
        assert off.system_metrics is None
    assert not [k for k in client.get_run(off.run_id).data.metrics if k.startswith("system/")]


@pytest.mark.integration  # four runs on a store: about 10 s
def test_genpipe_compare_groups_the_runs_of_a_store_by_recipe(store, tmp_path, capsys):
    from genpipe import cli
    from genpipe.params.schema import Params
    from genpipe.tracking.lineage import run_params

    (tmp_path / "params.yaml").write_text("seed: 0\n")  # train.experiment: genpipe
    base = Params().model_dump(mode="json", by_alias=True)
    for lr, fids in ((2e-4, (10.0, 12.0)), (4e-4, (8.0, 8.4))):
        for seed, fid in enumerate(fids):
            params = json.loads(json.dumps(base))
            params["gan"]["lr_g"], params["train"]["seed"] = lr, seed
            record = tmp_path / f"{lr}-{seed}.json"
            with _training_run(record, params=run_params(params, "gan")):
                pass
            RecordedRun(record).open().log({"fid": fid, "kid_mean": 0.1, "precision": 0.5,
                                                 "recall": 0.5}, [])  # fmt: skip
    cli.main(["compare", "gan"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["recipe", "data", "n", "fid"] and "gan.lr_g" in lines[0]
    assert "8.2 ± 0.28" in lines[1] and "0.0004" in lines[1]  # the better recipe first
    assert "11 ± 1.4" in lines[2]
    assert "differs by more than 2 standard errors" in lines[-1]


def test_a_missing_info_json_is_one_line(tmp_path, monkeypatch):
    from genpipe.errors import DataError
    from genpipe.tracking.datasets import prepared_input

    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"data/prepared/info.json: expected the fetch stage's"):
        prepared_input({"source": "digits"}, "test", "e" * 64)


def test_the_limits_genpipe_cuts_values_to_are_mlflows():
    from mlflow.utils import validation

    assert limits.PARAM_VALUE_MAX == validation.MAX_PARAM_VAL_LENGTH
    assert limits.TAG_VALUE_MAX <= validation.MAX_TAG_VAL_LENGTH  # older servers: 5000
    assert limits.TAG_VALUE_MAX <= validation.MAX_MODEL_REGISTRY_TAG_VALUE_LENGTH
    assert limits.DATASET_DIGEST_MAX == validation.MAX_DATASET_DIGEST_SIZE


def test_ending_an_orphan_on_a_store_that_cannot_be_read_is_a_warning(tmp_path, caplog):
    """Ended while another error is handled (workers that failed): a store that cannot be
    opened must not replace that error."""
    from genpipe.tracking.orphans import end_orphan

    (tmp_path / "mlflow.db").write_bytes(b"\x00garbage, not sqlite" * 100)
    assert end_orphan("a" * 32, "FAILED", f"sqlite:///{tmp_path}/mlflow.db") is False
    assert "could not end run " + "a" * 32 + " as FAILED" in caplog.text
