"""`genpipe serve gan` following @champion while a client asks without pause and register
promotes better versions: through MLflow's webhook on the team stack (PostgreSQL, S3, `mlflow
server`), and by polling on a sqlite store. Every answer must succeed, and the new version's
images must come within the bound of each alias move."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from test_registry import do_register, gan_outputs
from test_team_stack import BIN, client_env, stack  # noqa: F401 (stack: the module's fixture)

from net import free_port

pytestmark = pytest.mark.slow

SEEDS = [0, 3, 7]
BODY = json.dumps({"inputs": {"seed": SEEDS}}).encode()
MOST_REQUESTS = 20_000  # the client's bounds: requests, and seconds
MOST_SECONDS = 300


@dataclass
class Answer:
    sent: float
    received: float
    status: int
    version: str | None
    images: bytes  # the predictions' JSON


def project(root: Path, prefix: str) -> Path:
    """Where `genpipe serve gan` runs: a params.yaml naming the registered models' prefix."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(f"register:\n  name_prefix: {prefix}\n")
    return root


@contextlib.contextmanager
def genpipe_serve(cwd: Path, uri: str, *flags: str, stop: int = signal.SIGTERM
                  ) -> Iterator[tuple[str, Path]]:  # fmt: skip
    """`genpipe serve gan` on a free port of 127.0.0.1, once /ping answers; its log. `stop`
    ends it, and it must exit 0."""
    port = free_port()
    log = cwd / f"serve-{port}.log"
    with log.open("w") as out:
        proc = subprocess.Popen([str(BIN / "genpipe"), "serve", "gan", "--port", str(port),
                                 *flags], cwd=cwd, env={**client_env(uri),
                                                        "MLFLOW_TRACKING_URI": uri},
                                stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=_terminal_signals)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while status(f"{url}/ping") != 200:
            assert proc.poll() is None, f"genpipe serve exited: {log.read_text()}"
            assert time.monotonic() < deadline, f"genpipe serve: no answer: {log.read_text()}"
            time.sleep(0.2)
        yield url, log
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, stop)
        try:
            assert proc.wait(timeout=60) == 0, log.read_text()
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise


def _terminal_signals() -> None:
    """SIGHUP as a terminal session has it, even under `nohup make test-slow`."""
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def health(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
        return json.loads(response.read())


class Client(threading.Thread):
    """Posts the same seeds to /invocations without pause until stopped or its bounds."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.answers, self.done = url, [], threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        while (not self.done.is_set() and len(self.answers) < MOST_REQUESTS
               and time.monotonic() - started < MOST_SECONDS):  # fmt: skip
            sent = time.time()
            request = urllib.request.Request(f"{self.url}/invocations", data=BODY,
                                             headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    answer = Answer(sent, time.time(), response.status,
                                    response.headers.get("X-Genpipe-Version"), response.read())
            except urllib.error.HTTPError as exc:
                answer = Answer(sent, time.time(), exc.code, None, exc.read())
            except OSError as exc:
                answer = Answer(sent, time.time(), 0, None, str(exc).encode())
            self.answers.append(answer)


def images(uri: str, name: str, version: str) -> np.ndarray:
    """What `mlflow.pyfunc.load_model` of that version makes of SEEDS, in this process."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    return model.predict(pd.DataFrame({"seed": np.array(SEEDS, dtype=np.int64)}))


def moved_at(uri: str, name: str, version: str, register) -> float:
    """Run `register`; the moment (time.time()) @champion was first seen on `version`,
    watched every 20 ms."""
    from mlflow import MlflowClient

    client, seen = MlflowClient(uri), []

    def watch() -> None:
        while not seen:
            with contextlib.suppress(Exception):  # sqlite busy while register writes
                if str(client.get_model_version_by_alias(name, "champion").version) == version:
                    seen.append(time.time())
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    register()
    watcher.join(timeout=30)
    assert seen, f"@champion never moved to version {version}"
    return seen[0]


def follow_two_promotions(tmp_path: Path, uri: str, prefix: str, bound, *flags: str,
                          switch_only: bool = False, stop: int = signal.SIGTERM) -> dict:
    """v1 served, then v2 and v3 promoted while the client asks; checks every answer, and
    the delay from each alias move to the new version's first answer (`switch_only`: to the
    switch) against bound(url) seconds. Returns the served /health."""
    name = f"{prefix}-gan"

    def register(fid: float, seed: int) -> str:
        outputs = gan_outputs(tmp_path / f"run-{seed}", uri, fid=fid, seed=seed)
        record = do_register(outputs, uri, prefix)
        assert record["decision"] == "champion", record
        return str(record["version"])

    assert register(3.0, 1) == "1"
    expected = {"1": images(uri, name, "1")}
    with genpipe_serve(project(tmp_path / "serve", prefix), uri, *flags, stop=stop) as (url, log):
        client = Client(url)
        client.start()
        moves, limits, switched = {}, {}, {}
        for fid, seed, version in ((2.0, 2, "2"), (1.0, 3, "3")):
            time.sleep(0.5)  # answers from the version before, too
            moves[version] = moved_at(uri, name, version,
                                      lambda f=fid, s=seed: register(f, s))  # fmt: skip
            expected[version] = images(uri, name, version)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and health(url)["version"] != version:
                time.sleep(0.05)
            limits[version] = bound(url)
            switched[version] = datetime.fromisoformat(health(url)["since"]).timestamp()
            time.sleep(0.5)
        client.done.set()
        client.join(timeout=60)
        served = health(url)
    answers = client.answers
    failed = [a for a in answers if a.status != 200]
    assert not failed, f"{len(failed)} of {len(answers)} requests failed: {failed[0]}"
    by_version = {v: json.dumps({"predictions": e.tolist()}) for v, e in expected.items()}
    for answer in answers:  # each answer: exactly the images of the version it names
        assert json.loads(answer.images) == json.loads(by_version[answer.version])
    for version, at in moves.items():
        first = min((a for a in answers if a.version == version), key=lambda a: a.sent)
        late = [a for a in answers if a.sent > first.sent and a.version < version]
        assert not late, f"version {late[0].version} answered after {version} had"
        # switch_only: when the server switched (its /health `since`), on the same clock
        delay = (switched[version] if switch_only else first.received) - at
        print(f"version {version}: {'switched' if switch_only else 'first answer'} "
              f"{delay:.2f} s after the alias moved (at most {limits[version]:.2f} s)")
        assert delay <= limits[version], (delay, limits[version], log.read_text())
    print(f"{len(answers)} requests, none failed")
    return served


def test_serve_follows_champion_through_the_webhook_on_the_team_stack(stack, tmp_path):  # noqa: F811
    # polling every 10 minutes: only the webhook can make the switches in time
    served = follow_two_promotions(tmp_path, stack.uri, "wh", lambda url: 2.0,
                                   "--poll-s", "600")  # fmt: skip
    assert served["version"] == "3" and served["follows"]["webhook"].startswith("on (")


def test_serve_follows_champion_by_polling_a_sqlite_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the store's artifacts: ./mlruns
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    poll_s = 1.0
    # load_s: from the check that saw the move, through the registry's answer, to the switch
    served = follow_two_promotions(tmp_path, uri, "po", lambda url: poll_s + health(url)["load_s"],
                                   "--poll-s", str(poll_s), switch_only=True,
                                   stop=signal.SIGHUP)  # the terminal closed: a clean stop
    assert served["version"] == "3" and served["follows"]["webhook"].startswith("off")
