"""`genpipe serve gan` against the baseline, `mlflow models serve` of the same registered
version: requests per second and p50/p99 latency for 1, 16 and 256 seeds a request, then
genpipe serve's figures while @champion moves between two versions every 2 s.

The model is the workspace's trained GAN (models/gan/weights, from `dvc repro`), registered
twice (the second with its weights scaled by 1.01) in a sqlite store in a temporary folder.
Each figure: CLIENTS threads on keep-alive connections posting MLflow's `inputs` payload for
SECONDS seconds, in ROUNDS rounds that take the servers in turn (both up, on 127.0.0.1), after
a warm-up: the median round's requests per second, and p50/p99 over all rounds' answers.
Both servers are one process; the client shares the machine's cores with them.

Run (from the repository root, after `dvc repro`):
    .venv/bin/python benchmarks/serve_latency.py
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
WEIGHTS = REPO / "models/gan/weights"
SIZES = [1, 16, 256]
CLIENTS = 4
SECONDS = 6.0
ROUNDS = 3
SWITCH_EVERY_S = 2.0
PREFIX = "bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def register_two(root: Path, uri: str) -> None:
    """Versions 1 and 2 of bench-gan: the workspace's GAN, then its weights scaled; @champion
    on version 1."""
    from mlflow import MlflowClient
    from safetensors.torch import load_file, save_file

    from genpipe.params.schema import Params
    from genpipe.registry.gate import Policy
    from genpipe.registry.register import Outputs, register
    from genpipe.tracking.training_run import TrainingRun

    params = Params().model_dump(mode="json", by_alias=True)
    for version, (scale, fid) in enumerate(((1.0, 2.0), (1.01, 1.0)), start=1):
        run = root / f"v{version}"
        shutil.copytree(WEIGHTS, run / "models/gan/weights")
        ema = run / "models/gan/weights/generator_ema.safetensors"
        save_file({k: v * scale if v.is_floating_point() else v
                   for k, v in load_file(ema).items()}, ema)  # fmt: skip
        (run / "reports/gan").mkdir(parents=True)
        (run / "reports/gan/metrics.json").write_text(json.dumps({"fid": fid}))
        (run / "reports/gan/train_log.csv").write_text("step,loss_d,loss_g\n1,1.0,1.0\n")
        (run / "data/reference").mkdir(parents=True)
        (run / "data/reference/reference.json").write_text('{"backbone": "domain"}')
        with TrainingRun("gan", {"seed": version}, "data-hash", "bench",
                         record_path=run / "models/gan/mlflow_run.json", uri=uri):
            pass
        outputs = Outputs.of("gan", "data-hash")
        outputs = Outputs(**{k: (run / v if isinstance(v, Path) else v)
                             for k, v in vars(outputs).items() if k != "images"}, images=[])
        register(outputs, params, PREFIX, Policy(0.01, False, None, "main", None, 0.0),
                 experiment="bench", uri=uri)  # fmt: skip
    MlflowClient(uri).set_registered_model_alias(f"{PREFIX}-gan", "champion", "1")


@contextlib.contextmanager
def server(command: list[str], cwd: Path, env: dict, port: int, what: str):
    log = open(cwd / f"{what.split()[0]}-{port}.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while True:
            with contextlib.suppress(OSError):
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/ping")
                if conn.getresponse().status == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{what} did not start: see {log.name}")
            time.sleep(0.3)
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()


def load(port: int, seeds: int, seconds: float) -> dict:
    """CLIENTS threads posting `seeds` seeds a request for `seconds`: the latencies (ms) of
    the answers, and the failed requests."""
    body = json.dumps({"inputs": {"seed": list(range(seeds))}})
    headers = {"Content-Type": "application/json"}
    latencies: list[float] = []
    failed = [0]
    stop = time.monotonic() + seconds

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while time.monotonic() < stop:
            started = time.perf_counter()
            try:
                conn.request("POST", "/invocations", body, headers)
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            if ok:
                latencies.append((time.perf_counter() - started) * 1000)
            else:
                failed[0] += 1

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"ms": latencies, "rps": len(latencies) / seconds, "failed": failed[0]}


def pooled(runs: list[dict]) -> dict:
    """Rounds of one figure: the median round's requests per second, p50 and p99 over all
    the rounds' answers."""
    ms = np.concatenate([run["ms"] for run in runs])
    return {"rps": float(np.median([run["rps"] for run in runs])),
            "p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)),
            "failed": sum(run["failed"] for run in runs)}  # fmt: skip


def switching(uri: str, stop: threading.Event, moves: list) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    while not stop.wait(SWITCH_EVERY_S):
        version = "2" if len(moves) % 2 == 0 else "1"
        client.set_registered_model_alias(f"{PREFIX}-gan", "champion", version)
        moves.append(version)


def moving(uri: str, port: int, seeds: int, moves: list) -> dict:
    """load() while @champion moves between the two versions every SWITCH_EVERY_S."""
    stop = threading.Event()
    mover = threading.Thread(target=switching, args=(uri, stop, moves))
    mover.start()
    try:
        return load(port, seeds, SECONDS)
    finally:
        stop.set()
        mover.join()


def row(name: str, figures: dict[int, dict]) -> str:
    cells = [f"{f['rps']:7.1f} {f['p50']:7.1f} {f['p99']:7.1f}" for f in figures.values()]
    return f"{name:34s}" + " | ".join(cells)


def main() -> None:
    if not (WEIGHTS / "generator_ema.safetensors").is_file():
        raise SystemExit(f"expected the trained GAN in {WEIGHTS}; run `dvc repro` first")
    root = Path(tempfile.mkdtemp(prefix="genpipe-serve-bench-"))
    os.chdir(root)
    uri = f"sqlite:///{root}/mlflow.db"
    (root / "params.yaml").write_text(f"register:\n  name_prefix: {PREFIX}\n")
    register_two(root, uri)
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri,
           "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}  # fmt: skip
    config = json.loads((WEIGHTS / "config.json").read_text())
    print(f"model: models/gan/weights ({config['channels']}x{config['image_size']}x"
          f"{config['image_size']}), {CLIENTS} clients, {ROUNDS} rounds of {SECONDS:g} s a "
          f"figure, {os.cpu_count()} CPUs")
    base_port, our_port = free_port(), free_port()
    runs: dict[str, dict[int, list]] = {k: {n: [] for n in SIZES}
                                        for k in ("base", "ours", "moving")}  # fmt: skip
    moves: list[str] = []
    with contextlib.ExitStack() as up:
        up.enter_context(server([str(BIN / "mlflow"), "models", "serve", "-m",
                                 f"models:/{PREFIX}-gan@champion", "--env-manager", "local",
                                 "-h", "127.0.0.1", "-p", str(base_port)],
                                root, env, base_port, "mlflow models serve"))  # fmt: skip
        up.enter_context(server([str(BIN / "genpipe"), "serve", "gan", "--port", str(our_port),
                                 "--poll-s", "0.5"], root, env, our_port, "genpipe serve"))
        load(base_port, 16, 2.0)  # warm-up
        load(our_port, 16, 2.0)
        for _ in range(ROUNDS):  # the servers in turn, so that a slow spell hits both
            for size in SIZES:
                runs["base"][size].append(load(base_port, size, SECONDS))
                runs["ours"][size].append(load(our_port, size, SECONDS))
                runs["moving"][size].append(moving(uri, our_port, size, moves))
    baseline, ours, during = ({n: pooled(runs[k][n]) for n in SIZES}
                              for k in ("base", "ours", "moving"))  # fmt: skip
    header = " | ".join(f"{f'{n} seeds: req/s  p50 ms  p99 ms':>23s}" for n in SIZES)
    print(f"{'':34s}{header}")
    print(row("mlflow models serve (baseline)", baseline))
    print(row("genpipe serve", ours))
    print(row("genpipe serve, alias moving", during))
    for size in SIZES:
        speed = ours[size]["rps"] / baseline[size]["rps"]
        tail = ours[size]["p99"] / baseline[size]["p99"]
        print(f"{size:3d} seeds: genpipe serve / baseline {speed:.2f}x req/s, p99 {tail:.2f}x; "
              f"alias moving / still {during[size]['rps'] / ours[size]['rps']:.2f}x req/s, "
              f"p99 {during[size]['p99'] / ours[size]['p99']:.2f}x")
    failed = sum(f["failed"] for figures in (baseline, ours, during) for f in figures.values())
    print(f"alias moves while measured: {len(moves)}; failed requests: {failed}")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
