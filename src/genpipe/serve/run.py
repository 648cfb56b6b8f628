"""`genpipe serve MODEL`: the version `@alias` names, over HTTP, following the alias."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from genpipe import models
from genpipe.errors import GenpipeError
from genpipe.serve import webhook
from genpipe.serve.follow import Follower
from genpipe.serve.loaded import LoadFailed

log = logging.getLogger("genpipe.serve")

STOP_S = 30  # requests in flight may finish this long after SIGTERM or Ctrl-C


@dataclass(frozen=True)
class Options:
    model: str  # gan, autoencoder (with register.name_prefix) or a registered model's name
    alias: str = "champion"
    host: str = "127.0.0.1"
    port: int = 5001
    poll_s: float = 10.0
    webhook_url: str | None = None  # where the MLflow server posts (default: this server)
    webhook: bool = True  # register a webhook where the store is an MLflow server


def check(options: Options) -> None:
    if not 0 < options.port < 65536:
        raise GenpipeError(f"--port: expected 1..65535; got {options.port}")
    if not options.poll_s > 0:
        raise GenpipeError(f"--poll-s: expected seconds above 0; got {options.poll_s}")
    if not options.alias or not options.alias.replace("-", "").replace("_", "").isalnum():
        raise GenpipeError(f"--alias: expected letters, digits, '-' or '_'; "
                           f"got {options.alias!r}")  # fmt: skip
    url = options.webhook_url
    if url is not None and (urlsplit(url).scheme not in ("http", "https")
                            or not urlsplit(url).hostname):  # fmt: skip
        raise GenpipeError(f"--webhook-url: expected http(s)://host[:port]/path; got {url!r}")


def registered(model: str) -> tuple[str, str | None]:
    """(the registered model's name, the genpipe model it must be: None for a full name)."""
    if model in models.TABLE:
        from genpipe.params.load import load_params

        return models.TABLE[model].registered_name(load_params().registry.name_prefix), model
    return model, None


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, or a one-line error (a port in use, an address not here)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # each answer at once: uvicorn writes head and body apart, and without TCP_NODELAY
    # (which accepted connections take from this socket) the body waits on the client's
    # delayed ACK, 40 ms a request on a keep-alive connection
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise GenpipeError(f"--host {host} --port {port}: expected a free port on an address "
                           f"of this machine; {exc.strerror or exc}") from None  # fmt: skip
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def own_url(host: str, port: int) -> str:
    """Where this server answers, as another machine would name it."""
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).is_unspecified:  # 0.0.0.0 or ::
            host = socket.getfqdn()
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def _quiet_type_hint_advice() -> None:
    """The served model's predict takes its logged signature, not type hints: MLflow's advice
    to add them, given each time the model's class is defined, is not for the server's
    readers. (MLflow shows it under a filter of its own, so a warnings filter cannot.)"""
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if "type hints to the `predict`" not in str(message):
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show


def serve(options: Options) -> None:
    from genpipe.tracking import store

    check(options)
    _quiet_type_hint_advice()
    from genpipe.serve.app import WEBHOOK_PATH, build

    name, kind = registered(options.model)
    uri = store.tracking_uri()
    store.check_tracking_server(uri)
    mlflow = store.import_mlflow()
    client = mlflow.MlflowClient(uri)
    sock = bind(options.host, options.port)
    follower = Follower(client, name, options.alias, kind, options.poll_s)
    try:
        served = follower.start()
    except LoadFailed as exc:
        sock.close()
        raise GenpipeError(f"genpipe serve: {exc}") from None
    url = own_url(options.host, options.port)
    on_server = urlsplit(uri).scheme in ("http", "https") and options.webhook
    verifier = webhook.Verifier() if on_server else None
    if not on_server:
        follower.state["webhook"] = ("off (--no-webhook)" if options.webhook is False else
                                     "off (the tracking store is not an MLflow server)")
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(
        build(follower, verifier), log_level="warning", access_log=False,
        timeout_graceful_shutdown=STOP_S, lifespan="off"))  # fmt: skip
    log.info("serving %s version %s (@%s, run %s) on %s: POST /invocations, GET /health",
             name, served.version, options.alias, served.run_id, url)  # fmt: skip
    hook: dict[str, Any] = {}
    follow = threading.Thread(target=_follow, name="genpipe-follow", daemon=True,
                              args=(server, follower, client, verifier, hook,
                                    options.webhook_url or url + WEBHOOK_PATH))  # fmt: skip
    follow.start()
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # SIGTERM or Ctrl-C during the shutdown: the way to stop
        pass
    finally:
        follower.stop()
        if hook.get("webhook") is not None:
            with contextlib.suppress(Exception):
                client.delete_webhook(hook["webhook"].webhook_id)
        sock.close()
    log.info("stopped serving %s", name)


def _follow(server: Any, follower: Follower, client: Any, verifier: webhook.Verifier | None,
            hook: dict[str, Any], url: str) -> None:  # fmt: skip
    """Once the server listens: the webhook (when there is a verifier), then the follower."""
    while not server.started and not server.should_exit:
        time.sleep(0.05)
    if verifier is not None and not server.should_exit:
        hook["webhook"] = _webhook(client, follower, verifier, url)
    follower.run()


def _webhook(client: Any, follower: Follower, verifier: webhook.Verifier, url: str) -> Any:
    """The webhook registered and tested by a post from the MLflow server, or None (then
    polling alone follows the alias) with one line why."""
    from genpipe.tracking.store import brief

    try:
        hook = webhook.register(client, follower.name, follower.alias, url, verifier)
    except Exception as exc:  # noqa: BLE001 (a file store, an older server, a refused URL)
        follower.state["webhook"] = f"off ({brief(exc)})"
        log.warning("webhook for %s@%s not registered (%s); following it by polling every "
                    "%g s", follower.name, follower.alias, brief(exc), follower.poll_s)
        return None
    try:
        why = webhook.reaches(client, hook)
    except Exception as exc:  # noqa: BLE001
        why = brief(exc)
    if why is not None:
        with contextlib.suppress(Exception):
            client.delete_webhook(hook.webhook_id)
        follower.state["webhook"] = f"off (the MLflow server's test post to {url}: {why})"
        log.warning("webhook for %s@%s: the MLflow server's test post to %s failed (%s); "
                    "following it by polling every %g s", follower.name, follower.alias, url,
                    why, follower.poll_s)  # fmt: skip
        return None
    follower.state["webhook"] = f"on ({url})"
    log.info("webhook for %s@%s registered: the MLflow server posts alias moves to %s",
             follower.name, follower.alias, url)  # fmt: skip
    return hook
