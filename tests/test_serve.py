"""`genpipe serve`: the version an alias names, followed as the alias moves, over HTTP, with
tiny models registered as register@<model> registers them (a sqlite store, no server
process; the app runs in a thread on 127.0.0.1)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import io
import json
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from genpipe.serve import pictures, webhook
from genpipe.serve.app import build
from genpipe.serve.follow import Follower
from genpipe.serve.loaded import LoadFailed
from genpipe.weights import save_weights
from test_registry import do_register, gan_outputs

from net import free_port

SEEDS = [0, 3, 7]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Iterator[str]:
    """A sqlite store, its artifacts in ./mlruns beside it (the cwd while the module runs)."""
    import os

    root = tmp_path_factory.mktemp("serve-store")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        yield f"sqlite:///{root}/mlflow.db"
    finally:
        os.chdir(cwd)


def register_gan(root: Path, store: str, prefix: str, fid: float, seed: int) -> str:
    """A GAN of its own weights (`seed`) registered with `fid`: its version number."""
    record = do_register(gan_outputs(root / f"{prefix}-{seed}", store, fid=fid, seed=seed),
                         store, prefix)  # fmt: skip
    return str(record["version"])


def register_autoencoder(root: Path, store: str, prefix: str) -> str:
    from genpipe.autoencoder.network import AutoEncoder
    from genpipe.registry.register import Outputs
    from genpipe.tracking.training_run import TrainingRun

    torch.manual_seed(0)
    net = AutoEncoder(8, 1, latent_dim=3, width=4)
    weights = root / "models/autoencoder/weights"
    save_weights(net, weights / "autoencoder.safetensors")
    config = {"model": "autoencoder", "image_size": 8, "channels": 1,
              "autoencoder": net.config()}  # fmt: skip
    (weights / "config.json").write_text(json.dumps(config))
    reports = root / "reports/autoencoder"
    reports.mkdir(parents=True)
    (reports / "metrics.json").write_text(json.dumps({"mse": 0.05}))
    (reports / "train_log.csv").write_text("step,loss\n5,0.2\n")
    (root / "data/reference").mkdir(parents=True)
    (root / "data/reference/reference.json").write_text(json.dumps({"backbone": "domain"}))
    with TrainingRun("autoencoder", {"seed": 0}, "data-hash", "exp",
                     record_path=root / "models/autoencoder/mlflow_run.json", uri=store):
        pass
    outputs = Outputs.of("autoencoder", "data-hash")
    outputs = Outputs(**{k: (root / v if isinstance(v, Path) else v)
                         for k, v in vars(outputs).items() if k != "images"}, images=[])
    return str(do_register(outputs, store, prefix)["version"])


def client(store: str):
    from mlflow import MlflowClient

    return MlflowClient(store)


def expected(store: str, name: str, version: str, seeds: list[int]) -> np.ndarray:
    """What `mlflow.pyfunc.load_model` of that version makes of these seeds, here."""
    import mlflow

    mlflow.set_tracking_uri(store)
    model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    return model.predict(pd.DataFrame({"seed": np.array(seeds, dtype=np.int64)}))


def follower(store: str, name: str, kind: str | None = "gan") -> Follower:
    return Follower(client(store), name, "champion", kind, poll_s=0.05)


# --- following the alias ------------------------------------------------------------------


def test_an_alias_move_switches_with_requests_in_flight_finishing_on_the_old_version(
        store, tmp_path):  # fmt: skip
    name = "s1-gan"
    assert register_gan(tmp_path, store, "s1", fid=2.0, seed=1) == "1"
    follow = follower(store, name)
    assert follow.start().version == "1"
    held = follow.serving()
    old = held.__enter__()  # a request under way on version 1
    freed = weakref.ref(old.model.unwrap_python_model())
    assert register_gan(tmp_path, store, "s1", fid=1.0, seed=2) == "2"  # better: champion
    switching = threading.Thread(target=follow.check)
    switching.start()
    deadline = time.monotonic() + 60
    while follow.current.version != "2":
        assert time.monotonic() < deadline and switching.is_alive()
        time.sleep(0.05)
    with follow.serving() as new:  # a new request: the new version
        assert new.version == "2"
        np.testing.assert_array_equal(new.predict(pd.DataFrame({"seed": SEEDS})),
                                      expected(store, name, "2", SEEDS))  # fmt: skip
    # the old request finishes on the old version, which is held until it has
    time.sleep(0.2)
    assert switching.is_alive() and old.model is not None
    np.testing.assert_array_equal(old.predict(pd.DataFrame({"seed": SEEDS})),
                                  expected(store, name, "1", SEEDS))  # fmt: skip
    held.__exit__(None, None, None)
    switching.join(timeout=30)
    assert not switching.is_alive() and old.model is None and freed() is None
    assert follow.health()["version"] == "2" and follow.health()["last_failure"] is None


def test_a_version_whose_files_are_gone_leaves_the_old_one_serving_and_is_retried_on_the_next_move(
        store, tmp_path, caplog):  # fmt: skip
    name = "s2-gan"
    register_gan(tmp_path, store, "s2", fid=2.0, seed=1)
    loads = []
    follow = follower(store, name)
    loader = follow.loader
    follow.loader = lambda version: loads.append(version) or loader(version)
    follow.start()
    assert register_gan(tmp_path, store, "s2", fid=1.0, seed=2) == "2"
    source = client(store).get_model_version(name, "2").source  # models:/<logged model id>
    logged = client(store).get_logged_model(source.removeprefix("models:/"))
    shutil.rmtree(logged.artifact_location.removeprefix("file://"))
    follow.check()
    health = follow.health()
    assert health["version"] == "1"
    assert health["last_failure"]["version"] == "2" and health["last_failure"]["reason"]
    lines = [r.getMessage() for r in caplog.records if "not served" in r.getMessage()]
    assert len(lines) == 1 and "version 2" in lines[0] and "\n" not in lines[0]
    follow.check()  # a poll of the same alias: not loaded again
    assert loads == ["1", "2"]
    follow.check(again=True)  # the webhook says the alias was set again: tried again
    assert loads == ["1", "2", "2"] and follow.current.version == "1"
    registry = client(store)
    registry.set_registered_model_alias(name, "champion", "1")  # moved back (a rollback)
    follow.check()
    registry.set_registered_model_alias(name, "champion", "2")  # and on to 2 again: tried
    follow.check()
    assert loads == ["1", "2", "2", "2"] and follow.current.version == "1"
    with follow.serving() as served:
        np.testing.assert_array_equal(served.predict(pd.DataFrame({"seed": SEEDS})),
                                      expected(store, name, "1", SEEDS))  # fmt: skip


def test_a_removed_alias_keeps_the_version_serving_and_health_says_so(store, tmp_path):
    register_gan(tmp_path, store, "s3", fid=2.0, seed=1)
    follow = follower(store, "s3-gan")
    follow.start()
    client(store).delete_registered_model_alias("s3-gan", "champion")
    follow.check()
    assert follow.health()["alias_state"] == "removed" and follow.current.version == "1"
    fresh = follower(store, "s3-gan")
    with pytest.raises(LoadFailed, match="expected a version with the alias"):
        fresh.start()


def test_a_check_that_fails_is_said_and_following_goes_on(store, tmp_path, caplog):
    register_gan(tmp_path, store, "s5", fid=2.0, seed=1)
    follow = follower(store, "s5-gan")
    follow.start()
    resolve = follow._resolve
    failures = []

    def broken() -> str | None:
        if len(failures) < 2:
            failures.append(1)
            raise OSError(28, "No space left on device")
        return resolve()

    follow._resolve = broken
    following = threading.Thread(target=follow.run)
    following.start()
    try:
        deadline = time.monotonic() + 30
        while len(failures) < 2 or follow.health()["check_error"] is not None:
            assert time.monotonic() < deadline and following.is_alive()
            time.sleep(0.02)
    finally:
        follow.stop()
        following.join(timeout=30)
    lines = [r.getMessage() for r in caplog.records
             if "check of the alias failed" in r.getMessage()]  # fmt: skip
    assert len(lines) == 2 and "No space left on device" in lines[0]


def test_a_version_of_another_model_is_not_served(store, tmp_path):
    register_autoencoder(tmp_path / "ae", store, "s4")
    with pytest.raises(LoadFailed, match="expected a genpipe gan model; found autoencoder"):
        follower(store, "s4-autoencoder", kind="gan").start()


# --- the webhook's posts ------------------------------------------------------------------


def mlflow_signed(secret: str, body: bytes, at: int, delivery: str = "d-1") -> dict[str, str]:
    """The headers MLflow's own delivery code sends for this post."""
    from mlflow.webhooks.delivery import _generate_hmac_signature

    return {"X-MLflow-Signature": _generate_hmac_signature(secret, delivery, str(at),
                                                           body.decode()),
            "X-MLflow-Timestamp": str(at), "X-MLflow-Delivery-Id": delivery,
            "Content-Type": "application/json"}  # fmt: skip


def lower(headers: dict[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def test_a_post_is_taken_only_signed_with_the_secret_recent_and_not_seen_before():
    verifier = webhook.Verifier("s3cret")
    body = b'{"entity": "model_version_alias"}'
    now = int(time.time())
    assert verifier.refusal(lower(mlflow_signed("s3cret", body, now)), body) is None
    assert "replay" in verifier.refusal(lower(mlflow_signed("s3cret", body, now)), body)
    refused = {
        "wrong secret": lower(mlflow_signed("other", body, now, "d-2")),
        "old": lower(mlflow_signed("s3cret", body, now - 301, "d-3")),
        "unsigned": {k: v for k, v in lower(mlflow_signed("s3cret", body, now, "d-4")).items()
                     if k != "x-mlflow-signature"},
        "another body": lower(mlflow_signed("s3cret", b"{}", now, "d-5")),
    }  # fmt: skip
    refused["not ascii"] = {**refused["wrong secret"], "x-mlflow-signature": "v1,\u00e9",
                            "x-mlflow-delivery-id": "d-6"}  # fmt: skip
    refused["odd digits"] = {**refused["wrong secret"], "x-mlflow-timestamp": "\u00b2"}
    reasons = {why: verifier.refusal(headers, body, at=now) for why, headers in refused.items()}
    assert "does not match" in reasons["not ascii"]
    assert "Unix seconds" in reasons["odd digits"]
    assert "does not match" in reasons["wrong secret"]
    assert "301 s old" in reasons["old"] and "found none" in reasons["unsigned"]
    assert "does not match" in reasons["another body"]
    # the digest is MLflow's recipe: HMAC-SHA256 of "<id>.<timestamp>.<body>", base64
    digest = hmac.new(b"k", b"i.1.b", hashlib.sha256).digest()
    assert webhook.sign("k", "i", "1", b"b") == "v1," + base64.b64encode(digest).decode()


class Registry:
    """MLflow's client as a server answers webhooks: refusing them (a file store, http on a
    loopback address, an older server), or taking one whose test post does not arrive."""

    def __init__(self, refuse: str | None, test_post: str | None) -> None:
        self.refuse, self.test_post, self.deleted = refuse, test_post, []

    def list_webhooks(self, max_results=None, page_token=None):
        from mlflow.store.entities.paged_list import PagedList

        return PagedList([], None)

    def create_webhook(self, **kwargs):
        from types import SimpleNamespace

        from mlflow.exceptions import MlflowException

        if self.refuse:
            raise MlflowException.invalid_parameter_value(self.refuse)
        return SimpleNamespace(webhook_id="w1", **kwargs)

    def test_webhook(self, webhook_id):
        from types import SimpleNamespace

        return SimpleNamespace(success=self.test_post is None, error_message=self.test_post,
                               response_status=None, response_body=None)  # fmt: skip

    def delete_webhook(self, webhook_id):
        self.deleted.append(webhook_id)


@pytest.mark.parametrize(("refuse", "test_post", "says"), [
    ("Invalid webhook URL scheme: 'http'. Allowed schemes are: https.", None, "not registered"),
    (None, "Failed to test webhook: SSRFProtectionError('... not a public IP address')",
     "test post to http://127.0.0.1:1/webhook failed"),
])  # fmt: skip
def test_a_webhook_the_server_refuses_or_cannot_reach_leaves_polling_and_says_why(
        refuse, test_post, says, caplog):  # fmt: skip
    from genpipe.serve import run

    registry = Registry(refuse, test_post)
    follow = Follower(registry, "x-gan", "champion", "gan", poll_s=1)
    assert run._webhook(registry, follow, webhook.Verifier(), "http://127.0.0.1:1/webhook") is None
    assert follow.state["webhook"].startswith("off (") and follow.state["webhook"] != "off ()"
    assert registry.deleted == ([] if refuse else ["w1"])  # a webhook that cannot post is gone
    warned = [r.getMessage() for r in caplog.records if "webhook for x-gan" in r.getMessage()]
    assert len(warned) == 1 and says in warned[0] and "polling every 1 s" in warned[0]
    assert (refuse or test_post).split(":")[0] in warned[0]


# --- over HTTP ----------------------------------------------------------------------------


@contextlib.contextmanager
def running(follow: Follower, verifier: webhook.Verifier | None) -> Iterator[str]:
    """The app on 127.0.0.1 in a thread, and the follower following; the URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", free_port()))
    server = uvicorn.Server(uvicorn.Config(build(follow, verifier), log_level="warning",
                                           lifespan="off"))  # fmt: skip
    serving = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    following = threading.Thread(target=follow.run, daemon=True)
    serving.start()
    following.start()
    try:
        while not server.started:
            time.sleep(0.02)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        follow.stop()
        server.should_exit = True
        serving.join(timeout=30)
        sock.close()


def call(url: str, body: bytes | None = None, headers: dict | None = None
         ) -> tuple[int, bytes, dict]:  # fmt: skip
    request = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def invoke(url: str, payload: dict) -> tuple[int, dict]:
    status, body, _ = call(f"{url}/invocations", json.dumps(payload).encode(),
                           {"Content-Type": "application/json"})  # fmt: skip
    return status, json.loads(body)


def test_the_scoring_protocol_pictures_and_webhook_over_http(store, tmp_path, monkeypatch):
    monkeypatch.setenv("GENPIPE_SERVE_MAX_IMAGES", "20")
    name = "h1-gan"
    register_gan(tmp_path, store, "h1", fid=2.0, seed=1)
    follow = Follower(client(store), name, "champion", "gan", poll_s=3600)  # the webhook alone
    follow.start()
    verifier = webhook.Verifier()
    want = expected(store, name, "1", SEEDS)
    with running(follow, verifier) as url:
        # MLflow's scoring protocol, each of its JSON forms
        for payload in ({"dataframe_split": {"columns": ["seed"], "data": [[s] for s in SEEDS]}},
                        {"dataframe_records": [{"seed": s} for s in SEEDS]},
                        {"inputs": {"seed": SEEDS}}, {"instances": [{"seed": s} for s in SEEDS]}):
            status, answer = invoke(url, payload)
            assert status == 200, answer
            np.testing.assert_array_equal(np.asarray(answer["predictions"]), want)
        assert invoke(url, {"inputs": {"seed": []}}) == (200, {"predictions": []})
        status, answer = invoke(url, {"inputs": {"seed": list(range(21))}})
        assert status == 400 and "at most 20 images" in answer["message"]
        # images a person can open
        status, body, headers = call(f"{url}/sample.png?seed=3")
        assert status == 200 and headers["content-type"] == "image/png"
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(body))), want[1, 0])
        status, body, _ = call(f"{url}/sample.png?seeds=0-15")
        grid = Image.open(io.BytesIO(body))
        assert status == 200 and grid.size == (4 * 34 + 2, 4 * 34 + 2)  # 4x4 tiles of 32 + gaps
        for query, says in (("seeds=0-20", "at most 20 images"), ("seed=x", "whole numbers"),
                            ("seeds=5-2", "A <= B"), ("", "expected ?seed=N")):
            status, body, _ = call(f"{url}/sample.png?{query}")
            assert status == 400 and says in body.decode() and body.decode().count("\n") == 1
        # the webhook: refused posts change nothing; a signed one moves to the new champion
        assert register_gan(tmp_path, store, "h1", fid=1.0, seed=2) == "2"
        post = json.dumps({"entity": "model_version_alias", "action": "created",
                           "data": {"name": name, "alias": "champion", "version": "2"}}).encode()
        now = int(time.time())
        for headers in (mlflow_signed("wrong", post, now, "a"),
                        mlflow_signed(verifier.secret, post, now - 3600, "b"),
                        {"Content-Type": "application/json"}):
            status, body, _ = call(f"{url}/webhook", post, headers)
            assert status == 401 and body.decode().startswith("webhook refused: ")
        time.sleep(0.3)
        assert json.loads(call(f"{url}/health")[1])["version"] == "1"
        status, _, _ = call(f"{url}/webhook", post, mlflow_signed(verifier.secret, post, now))
        assert status == 200
        deadline = time.monotonic() + 30
        while (health := json.loads(call(f"{url}/health")[1]))["version"] != "2":
            assert time.monotonic() < deadline, health
            time.sleep(0.05)
        status, answer = invoke(url, {"inputs": {"seed": SEEDS}})
        np.testing.assert_array_equal(np.asarray(answer["predictions"]),
                                      expected(store, name, "2", SEEDS))  # fmt: skip
        assert call(f"{url}/sample.png?seed=0")[2]["x-genpipe-version"] == "2"
        about = json.loads(call(f"{url}/version")[1])
        assert (about["model"], about["version"], about["alias"]) == (name, "2", "champion")
        assert about["data_hash"] == "data-hash" and about["run_id"] and about["since"]
        assert call(f"{url}/reconstruct", b"x")[0] == 404  # a GAN: no reconstructions


def test_reconstruct_answers_a_png_or_jpeg_at_the_models_size_and_refuses_others(
        store, tmp_path):  # fmt: skip
    register_autoencoder(tmp_path, store, "h2")
    follow = Follower(client(store), "h2-autoencoder", "champion", None, poll_s=3600)
    follow.start()
    image = np.random.default_rng(0).integers(0, 256, (8, 8), np.uint8)

    def encoded(pixels: np.ndarray, form: str, mode: str = "L") -> bytes:
        out = io.BytesIO()
        Image.fromarray(pixels).convert(mode).save(out, format=form)
        return out.getvalue()

    with running(follow, None) as url:
        status, body, headers = call(f"{url}/reconstruct", encoded(image, "PNG"))
        assert status == 200 and headers["content-type"] == "image/png"
        answer = np.asarray(Image.open(io.BytesIO(body)))
        with follow.serving() as served:
            np.testing.assert_array_equal(answer, served.predict(image[None, None])[0, 0])
        status, body, _ = call(f"{url}/reconstruct", encoded(image, "JPEG", "RGB"))
        assert status == 200 and Image.open(io.BytesIO(body)).size == (8, 8)
        wrong_size = encoded(np.zeros((9, 8), np.uint8), "PNG")
        for body, says in ((wrong_size, "expected an image of 8x8 pixels"),
                           (b"not an image", "expected a PNG or JPEG image"),
                           (encoded(image, "GIF"), "got GIF"), (b"", "empty body")):
            status, answer, _ = call(f"{url}/reconstruct", body)
            assert status == 400 and says in answer.decode(), answer
        assert call(f"{url}/sample.png?seed=1")[0] == 404
        assert call(f"{url}/webhook", b"{}")[0] == 404  # polling alone: no webhook here


def test_an_image_whose_header_claims_billions_of_pixels_is_refused_unread():
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))  # fmt: skip

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")
    with pytest.raises(pictures.BadRequest, match="expected an image of 8x8 pixels"):
        pictures.upload(bomb, 1, 8)


def test_seeds_from_a_query():
    assert pictures.seeds("3", None, 10) == [3]
    assert pictures.seeds(None, "0-3", 10) == [0, 1, 2, 3]
    assert pictures.seeds(None, "9,2", 10) == [9, 2]
    for seed, many in (("-1", None), (None, "0-10"), ("1", "2"), (str(2**63), None)):
        with pytest.raises(pictures.BadRequest):
            pictures.seeds(seed, many, 10)


def test_the_command_refuses_bad_flags_a_taken_port_and_a_missing_alias_in_one_line(
        store, tmp_path, capsys, monkeypatch):  # fmt: skip
    from genpipe import cli

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = str(taken.getsockname()[1])
    cases = {("--port", "0"): "--port: expected 1..65535; got 0",
             ("--poll-s", "0"): "--poll-s: expected seconds above 0",
             ("--webhook-url", "ftp://x"): "--webhook-url: expected http(s)://host",
             ("--port", port): f"--host 127.0.0.1 --port {port}: expected a free port",
             ("--alias", "nosuch", "--port", str(free_port())):
                 "nosuch-gan@nosuch: expected a version with the alias"}  # fmt: skip
    for flags, says in cases.items():
        model = "nosuch-gan" if "nosuch" in flags else "s1-gan"
        with pytest.raises(SystemExit) as exited:
            cli.main(["serve", model, *flags])
        lines = capsys.readouterr().err.strip().splitlines()
        assert exited.value.code == 1 and len(lines) == 1 and lines[0].startswith("error: ")
        assert says in lines[0], lines
    taken.close()


def test_genpipe_ui_refuses_a_port_out_of_range_or_taken_in_one_line(tmp_path, capsys,
                                                                     monkeypatch):  # fmt: skip
    from genpipe import cli

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        for flags, says in ((["--port", "99999"], "--port: expected 1..65535; got 99999"),
                            (["--port", port], f"--port {port}: expected a free port"),
                            (["--host", "203.0.113.9"], "expected a free port on an address "
                                                        "of this machine")):  # fmt: skip
            with pytest.raises(SystemExit) as exited:
                cli.main(["ui", *flags])
            lines = capsys.readouterr().err.strip().splitlines()
            assert exited.value.code == 1 and len(lines) == 1, lines
            assert lines[0].startswith("error: ") and says in lines[0], lines
