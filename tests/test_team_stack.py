"""The team stack, started by scripts/team_stack.sh on 127.0.0.1 (PostgreSQL, moto's S3
endpoint, `mlflow server` on both): the pipeline against it, with each service failing in
turn, and the champion served over REST (`mlflow models serve`) from it and from the
default sqlite store.

Only MLFLOW_TRACKING_URI and a DVC remote point at the stack: no process here but the
server (and the test's own look into the bucket) holds S3 credentials or the endpoint.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from genpipe import yamlio
from test_pipeline import copy_project, set_params, stages_run

from builders import write_png
from net import free_port, free_ports

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SCRIPT = REPO / "scripts/team_stack.sh"
PREFIX = "stack"  # register.name_prefix: models stack-gan
CHAMPION = f"models:/{PREFIX}-gan@champion"
MOTO_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}  # moto's
GIT_ENV = {"GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com",
           "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.com"}  # fmt: skip


def client_env(uri: str | None) -> dict[str, str]:
    """A client's environment: the tracking URI and nothing of S3 (no keys, no endpoint, no
    AWS config files), so that whatever reaches the bucket went through the server."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("AWS_") and k not in ("MLFLOW_S3_ENDPOINT_URL",
                                                     "MLFLOW_TRACKING_URI")}  # fmt: skip
    no_aws = Path(tempfile.gettempdir()) / "genpipe-test-empty-aws-config"
    no_aws.touch()  # botocore reads an empty file as no profiles; /dev/null is "not found"
    env.update(PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", GX_ANALYTICS_ENABLED="false",
               DVC_NO_ANALYTICS="1", AWS_CONFIG_FILE=str(no_aws),
               AWS_SHARED_CREDENTIALS_FILE=str(no_aws), **GIT_ENV)  # fmt: skip
    if uri:
        env["MLFLOW_TRACKING_URI"] = uri
    return env


def sh(*args: str, cwd: Path, uri: str | None, check: bool = True, timeout: float = 600
       ) -> subprocess.CompletedProcess:  # fmt: skip
    result = subprocess.run(args, cwd=cwd, env=client_env(uri), capture_output=True, text=True,
                            timeout=timeout)  # fmt: skip
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error: ")]


# --- the stack, as the script starts it ---------------------------------------------------


def require(found: bool, what: str) -> None:
    """Skip without `what`; under CI=true (where .ci/run installs it) fail instead."""
    if found:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what}: expected it installed (.ci/run and scripts/setup_env.sh do)")
    pytest.skip(f"{what} not found")


def require_stack() -> None:
    require(bool(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl")),
            "PostgreSQL (Debian's postgresql package: /usr/lib/postgresql/*/bin)")  # fmt: skip
    require((BIN / "moto_server").is_file(), "moto_server (pip install -e '.[team]')")
    for module in ("psycopg2", "dvc_s3", "boto3"):
        require(_importable(module), f"Python module {module} (pip install -e '.[team]')")


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


@dataclass
class Stack:
    dir: Path
    ports: dict[str, int]
    settings: list[str]  # the lines `up` prints for the user to set
    bucket: str = "genpipe"

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.ports['MLFLOW']}"

    @property
    def s3_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['S3']}"

    def script(self, command: str, check: bool = True) -> subprocess.CompletedProcess:
        env = {
            **client_env(None),
            "TEAM_STACK_MLFLOW_WORKERS": "1",
            **{f"TEAM_STACK_{name}_PORT": str(port) for name, port in self.ports.items()},
        }
        result = subprocess.run([str(SCRIPT), command, str(self.dir)], env=env,
                                capture_output=True, text=True, timeout=300)  # fmt: skip
        if check and result.returncode != 0:
            raise AssertionError(f"team_stack.sh {command}:\n{result.stdout}\n{result.stderr}")
        return result

    def pid(self, service: str) -> int:
        return int((self.dir / "run" / f"{service}.pid").read_text().split()[0])

    def stop(self, service: str) -> None:
        """Stop one service behind the script's back (as a crash or an admin would)."""
        pid = self.pid(service)
        if service == "postgres":
            os.kill(pid, signal.SIGINT)  # PostgreSQL's fast shutdown
        else:
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(pid), f"{service} did not stop"

    def s3_keys(self, prefix: str) -> list[str]:
        """What the bucket holds under `prefix`: the test looks with moto's credentials."""
        import boto3

        s3 = boto3.client("s3", endpoint_url=self.s3_url, region_name="us-east-1",
                          **MOTO_CREDENTIALS)  # fmt: skip
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]


def _alive(pid: int) -> bool:
    """Running: an exited process that no one has reaped yet (a zombie) is not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def stack_dir() -> Path:
    """A directory the postgres user can reach (pytest's own tmp is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="genpipe-stack-"))
    path.chmod(0o711)
    return path


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    require_stack()
    path = stack_dir()
    ports = dict(zip(("PG", "S3", "MLFLOW"), free_ports(3), strict=True))
    stack = Stack(path, ports, settings=[])
    try:
        up = stack.script("up")
        stack.settings = up.stdout.splitlines()
        yield stack
    finally:
        stack.script("down", check=False)
        shutil.rmtree(path, ignore_errors=True)


def configure_remote(stack: Stack, project: Path, local_only: bool = False) -> None:
    """Run the `dvc remote` lines `up` printed (in a clone, only the --local ones)."""
    for line in stack.settings:
        if line.startswith("dvc remote") and (not local_only or "--local" in line):
            sh(*shlex.split(line), cwd=project, uri=None)


def gan_only(project: Path) -> None:
    params = yamlio.load((project / "params.yaml").read_text())
    params["models"] = ["gan"]  # the autoencoder's stages would only add minutes here
    (project / "params.yaml").write_text(yamlio.dump(params))


def aliases(uri: str) -> dict[str, str]:
    from mlflow import MlflowClient

    return dict(MlflowClient(uri).get_registered_model(f"{PREFIX}-gan").aliases)


def versions(uri: str) -> list[int]:
    from mlflow import MlflowClient

    found = MlflowClient(uri).search_model_versions(f"name = '{PREFIX}-gan'")
    return sorted(int(v.version) for v in found)


@dataclass
class Trained:
    project: Path
    first: list[str]  # the stages run before the server restarted
    second: list[str]  # and after it
    restart: str  # what `up` said when it restarted the server


@pytest.fixture(scope="module")
def trained(stack, tmp_path_factory) -> Trained:
    """The pipeline (GAN only, tiny) on the stack: trained, the MLflow server restarted, then
    evaluated and registered; pushed to the DVC remote, committed."""
    project = copy_project(tmp_path_factory.mktemp("team") / "project")
    gan_only(project)
    set_params(project, register={"name_prefix": PREFIX})
    configure_remote(stack, project)
    first = stages_run(sh("dvc", "repro", "train@gan", cwd=project, uri=stack.uri).stdout)
    stack.stop("mlflow")
    restart = stack.script("up").stdout
    second = stages_run(sh("dvc", "repro", cwd=project, uri=stack.uri).stdout)
    sh("dvc", "push", cwd=project, uri=stack.uri)
    sh("git", "add", "-A", cwd=project, uri=None)
    sh("git", "commit", "-q", "-m", "trained on the team stack", cwd=project, uri=None)
    return Trained(project, first, second, restart)


def clone(trained: Trained, stack: Stack, dest: Path) -> Path:
    """A fresh clone of the project, with the remote's credentials set (--local) and its
    outputs pulled."""
    sh("git", "clone", "-q", str(trained.project), str(dest), cwd=dest.parent, uri=None)
    configure_remote(stack, dest, local_only=True)
    sh("dvc", "pull", cwd=dest, uri=stack.uri)
    return dest


def test_up_again_says_so_and_status_names_each_service(stack):
    again = stack.script("up")
    assert again.stdout.startswith(f"team-stack: already up in {stack.dir}\n")
    assert f"export MLFLOW_TRACKING_URI={stack.uri}" in again.stdout.splitlines()
    assert f"dvc remote modify team endpointurl {stack.s3_url}" in again.stdout.splitlines()
    status = stack.script("status")
    assert status.stdout.splitlines()[:3] == ["postgres: up", "s3: up", "mlflow: up"]


def test_a_service_that_cannot_start_is_one_line_naming_it_and_its_log(stack):
    """PostgreSQL on a port that is taken: `up` stops there, naming the log and its last
    line, and starts nothing after it."""
    import socket

    path = stack_dir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        s3, mlflow = free_ports(2)
        ports = {"PG": taken.getsockname()[1], "S3": s3, "MLFLOW": mlflow}
        broken = Stack(path, ports, settings=[])
        try:
            result = broken.script("up", check=False)
        finally:
            broken.script("down", check=False)
            shutil.rmtree(path, ignore_errors=True)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("team-stack: PostgreSQL did not start; see ")
    assert f"{path}/logs/postgres.log: " in line and "FATAL" in line  # its last error line
    assert result.stdout == ""


def test_pipeline_on_the_stack_evaluates_after_the_mlflow_server_restarts(stack, trained):
    from mlflow import MlflowClient

    assert trained.first == ["params", "fetch", "validate", "train@gan"]
    assert "team-stack: up in" in trained.restart  # `up` started the stopped server alone
    assert trained.second == ["reference", "evaluate@gan", "register@gan"]
    # the run lives in PostgreSQL: evaluate logged to it after the restart
    record = json.loads((trained.project / "models/gan/mlflow_run.json").read_text())
    run = MlflowClient(stack.uri).get_run(record["run_id"])
    metrics = json.loads((trained.project / "reports/gan/metrics.json").read_text())
    assert run.data.metrics["eval/fid"] == pytest.approx(metrics["fid"])
    registered = json.loads((trained.project / "reports/gan/registry.json").read_text())
    assert (registered["version"], registered["decision"]) == (1, "champion")
    # artifacts went through the server to the bucket, and DVC's cache to its remote
    assert any(key.endswith("MLmodel") for key in stack.s3_keys("mlartifacts/"))
    assert stack.s3_keys("dvc/")
    status = sh("dvc", "status", "--cloud", cwd=trained.project, uri=stack.uri)
    assert "Cache and remote 'team' are in sync" in status.stdout


def test_a_fresh_clone_pulls_and_loads_the_champion_through_the_server(stack, trained,
                                                                       tmp_path):  # fmt: skip
    from mlflow import MlflowClient

    fresh = clone(trained, stack, tmp_path / "clone")
    for name in ("models/gan/weights/generator_ema.safetensors", "reports/gan/metrics.json",
                 "data/reference/reference.json"):  # fmt: skip
        assert (fresh / name).read_bytes() == (trained.project / name).read_bytes(), name
    # every output is on the remote, the run record and train log too, and what is not an
    # output (Data Docs, checkpoints, registry.json) is not missed: a plain `dvc repro`, as
    # `make run` runs it, reruns nothing, and the pulled run record names the server's run
    again = sh("dvc", "repro", cwd=fresh, uri=stack.uri)
    assert stages_run(again.stdout) == [] and "up to date" in again.stdout
    record = json.loads((fresh / "models/gan/mlflow_run.json").read_text())
    assert MlflowClient(stack.uri).get_run(record["run_id"]).info.status == "FINISHED"

    # the model's files are addressed through the server (mlflow-artifacts:), not S3
    client = MlflowClient(stack.uri)
    version = client.get_model_version_by_alias(f"{PREFIX}-gan", "champion")
    where = client.get_model_version_download_uri(f"{PREFIX}-gan", version.version)
    assert where.startswith("mlflow-artifacts:"), where
    code = (
        "import os, mlflow, pandas as pd\n"
        "assert not [k for k in os.environ if k.startswith('AWS_A') or 'S3' in k]\n"
        f"m = mlflow.pyfunc.load_model('{CHAMPION}')\n"
        "x = m.predict(pd.DataFrame({'seed': [0, 1, 2]}))\n"
        "print(x.shape, x.dtype)\n"
    )
    out = sh(sys.executable, "-c", code, cwd=tmp_path, uri=stack.uri, timeout=300)
    assert "(3, 1, 8, 8) uint8" in out.stdout


# --- the champion over REST ---------------------------------------------------------------


@contextlib.contextmanager
def served(model_uri: str, uri: str, cwd: Path) -> Iterator[str]:
    """`mlflow models serve` of `model_uri` on 127.0.0.1 (a free port); its URL once /ping
    answers (2 minutes at most). The server's process group is killed on the way out."""
    port = free_port()
    log = cwd / f"serve-{port}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(BIN / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local",
             "-h", "127.0.0.1", "-p", str(port)],
            cwd=cwd, env=client_env(uri), stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while not _answers(f"{url}/ping"):
            last = (log.read_text().strip().splitlines() or ["(no output)"])[-1]
            assert proc.poll() is None, f"mlflow models serve exited: {last}"
            assert time.monotonic() < deadline, f"mlflow models serve: no answer in 120 s: {last}"
            time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def check_served_champion(model_uri: str, uri: str, cwd: Path) -> None:
    """POST /invocations with seeds returns one uint8 image (1, 8, 8) a seed, the same for the
    same seed: the images the pyfunc model makes in this process (serving.py's contract)."""
    import mlflow
    import pandas as pd

    seeds = [0, 1, 0]
    body = json.dumps({"dataframe_split": {"columns": ["seed"], "data": [[s] for s in seeds]}})
    with served(model_uri, uri, cwd) as url:
        request = urllib.request.Request(f"{url}/invocations", data=body.encode(),
                                         headers={"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(request, timeout=60) as response:
            predictions = json.loads(response.read())["predictions"]
    images = np.asarray(predictions)
    assert images.shape == (3, 1, 8, 8) and images.dtype.kind == "i"
    assert images.min() >= 0 and images.max() <= 255
    assert (images[0] == images[2]).all()  # (a 10-step GAN's images hardly differ by seed)
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        local = mlflow.pyfunc.load_model(model_uri).predict(pd.DataFrame({"seed": seeds}))
    finally:
        mlflow.set_tracking_uri(before)
    assert local.dtype == np.uint8 and (local == images).all()


def test_rest_serving_of_the_champion_on_the_team_stack(stack, trained):
    check_served_champion(CHAMPION, stack.uri, trained.project)


def test_rest_serving_of_the_champion_on_the_default_sqlite_store(tmp_path):
    """A pipeline run with no MLFLOW_TRACKING_URI: genpipe's default, sqlite:///mlflow.db."""
    project = copy_project(tmp_path / "project")
    gan_only(project)
    sh("dvc", "repro", "register@gan", cwd=project, uri=None)
    assert (project / "mlflow.db").is_file()
    check_served_champion("models:/genpipe-gan@champion", f"sqlite:///{project}/mlflow.db",
                          project)  # fmt: skip


# --- ci-retrain, and what goes wrong --------------------------------------------------------


def test_ci_retrain_against_the_stack(stack, trained, tmp_path):
    fresh = clone(trained, stack, tmp_path / "clone")
    set_params(fresh, gan={"lr_g": 5e-4})
    sh("git", "commit", "-q", "-am", "another learning rate", cwd=fresh, uri=None)
    report = tmp_path / "report.md"
    result = sh(str(BIN / "genpipe"), "ci-retrain", "--base", "HEAD~1", "--report", str(report),
                cwd=fresh, uri=stack.uri)  # fmt: skip
    assert stages_run(result.stdout) == ["params", "train@gan", "evaluate@gan", "register@gan"]
    registered = json.loads((fresh / "reports/gan/registry.json").read_text())
    assert registered["version"] == max(versions(stack.uri)) >= 2
    number = registered["version"]
    version = f"[v{number}]({stack.uri}/#/models/{PREFIX}-gan/versions/{number}?workflowType="
    assert version in report.read_text()
    status = sh("dvc", "status", "--cloud", cwd=fresh, uri=stack.uri)
    assert "Cache and remote 'team' are in sync" in status.stdout


def test_postgres_down_fails_register_with_one_line_and_the_rerun_registers(stack, trained,
                                                                           tmp_path):  # fmt: skip
    fresh = clone(trained, stack, tmp_path / "clone")
    set_params(fresh, gan={"lr_d": 5e-4})  # a new model: a version to register
    sh("dvc", "repro", "evaluate@gan", cwd=fresh, uri=stack.uri)
    before = (aliases(stack.uri), versions(stack.uri))

    stack.stop("postgres")
    start = time.monotonic()
    failed = sh("dvc", "repro", cwd=fresh, uri=stack.uri, check=False)
    seconds = time.monotonic() - start
    print(f"register with PostgreSQL down failed in {seconds:.0f} s")
    assert failed.returncode != 0 and stages_run(failed.stdout) == ["register@gan"]
    [line] = error_lines(failed)
    print(line)
    assert (
        f"could not register {PREFIX}-gan: the MLflow server at {stack.uri} is up, but "
        "its PostgreSQL database fails: connection to server at" in line
    ), failed.stderr
    assert "too many 503" not in failed.stderr and "Retrying (Retry(" not in failed.stderr
    assert seconds < 120

    assert "team-stack: up in" in stack.script("up").stdout  # PostgreSQL alone restarts
    assert (aliases(stack.uri), versions(stack.uri)) == before  # nothing moved
    rerun = sh("dvc", "repro", cwd=fresh, uri=stack.uri)
    assert stages_run(rerun.stdout) == ["register@gan"]
    registered = json.loads((fresh / "reports/gan/registry.json").read_text())
    assert registered["version"] == max(before[1]) + 1
    assert registered["decision"] in ("champion", "challenger")


def cache_files(project: Path) -> dict[str, int]:
    return {str(p): p.stat().st_size for p in (project / ".dvc/cache").rglob("*") if p.is_file()}


def test_s3_down_fails_push_and_register_naming_it_and_both_complete_later(stack, trained,
                                                                            tmp_path):  # fmt: skip
    """Last of the stack's tests: moto keeps its objects in memory, so a restarted endpoint
    has an empty bucket (the script creates it again): every MLflow artifact is lost, and
    register repairs what it can from the DVC cache."""
    project = trained.project
    fresh = clone(trained, stack, tmp_path / "clone")
    set_params(fresh, gan={"lr_d": 3e-4})  # a new model: a version to register
    sh("dvc", "repro", "evaluate@gan", cwd=fresh, uri=stack.uri)
    for i in range(20):  # new images, tracked by DVC: objects the remote has not seen
        write_png(project / "new_images" / f"{i:02d}.png", (8, 8), seed=7000 + i)
    sh("dvc", "add", "new_images", cwd=project, uri=None)
    cached = cache_files(project)

    stack.stop("s3")
    start = time.monotonic()
    failed = sh("dvc", "push", cwd=project, uri=stack.uri, check=False)
    seconds = time.monotonic() - start
    print(f"dvc push with the S3 endpoint down failed in {seconds:.0f} s")
    assert failed.returncode != 0
    errors = [line for line in failed.stderr.splitlines() if line.startswith("ERROR: ")]
    print(errors[0] if errors else failed.stderr)
    assert len(errors) == 1 and "Could not connect to the endpoint URL" in errors[0], errors
    assert stack.s3_url in errors[0]
    assert cache_files(project) == cached
    assert "up to date" in sh("dvc", "status", cwd=project, uri=stack.uri).stdout

    # register logs the model's files through the server to S3: the line says it is the
    # server's artifact store that fails, not MLflow's retry warnings
    start = time.monotonic()
    failed = sh("dvc", "repro", cwd=fresh, uri=stack.uri, check=False)
    seconds = time.monotonic() - start
    print(f"register with the S3 endpoint down failed in {seconds:.0f} s")
    assert failed.returncode != 0 and stages_run(failed.stdout) == ["register@gan"]
    [line] = error_lines(failed)
    print(line)
    assert (
        f"the MLflow server at {stack.uri} is up, but listing its artifact store gets " in line
        and "the store behind it (its --artifacts-destination" in line
    ), failed.stderr
    assert "Retrying (Retry(" not in failed.stderr and seconds < 180
    assert "Downloading artifacts" not in failed.stderr

    assert "team-stack: up in" in stack.script("up").stdout
    sh("dvc", "push", cwd=project, uri=stack.uri)
    status = sh("dvc", "status", "--cloud", cwd=project, uri=stack.uri)
    assert "Cache and remote 'team' are in sync" in status.stdout

    # the bucket came back empty: the rerun registers the new version, and the champion,
    # repaired from the DVC cache or replaced, loads
    rerun = sh("dvc", "repro", cwd=fresh, uri=stack.uri)
    assert stages_run(rerun.stdout) == ["register@gan"]
    registered = json.loads((fresh / "reports/gan/registry.json").read_text())
    assert registered["decision"] in ("champion", "challenger"), registered
    code = (f"import mlflow, pandas as pd\nm = mlflow.pyfunc.load_model('{CHAMPION}')\n"
            "print(m.predict(pd.DataFrame({'seed': [0, 1]})).shape)\n")  # fmt: skip
    out = sh(sys.executable, "-c", code, cwd=tmp_path, uri=stack.uri, timeout=300)
    assert "(2, 1, 8, 8)" in out.stdout


def test_down_stops_every_service(stack):
    pids = [stack.pid(service) for service in ("postgres", "s3", "mlflow")]
    down = stack.script("down")
    assert down.stdout.splitlines()[-1] == "team-stack: down"
    assert not [pid for pid in pids if _alive(pid)]
    assert stack.script("status", check=False).returncode == 3
