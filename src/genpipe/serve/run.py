"""`genpipe serve MODEL`: the version `@alias` names, over HTTP, following the alias."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import signal
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

STOP_S = 25  # requests in flight may finish this long after SIGTERM or Ctrl-C
CLOSE_S = 5  # then the webhook's deletion, at most
POLL_MAX_S = 86400


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
    if not 0 < options.poll_s <= POLL_MAX_S:
        raise GenpipeError(f"--poll-s: expected seconds above 0, at most {POLL_MAX_S}; "
                           f"got {options.poll_s}")  # fmt: skip
    from genpipe import serving  # (its model class is defined on import: after the warnings)

    try:
        serving.max_images()
    except ValueError as exc:
        raise GenpipeError(str(exc)) from None
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

    _quiet_type_hint_advice()
    check(options)
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
    follow = threading.Thread(target=follower.run, name="genpipe-follow", daemon=True)
    follow.start()
    hook = Hook(client, follower, verifier, options.webhook_url or url + WEBHOOK_PATH)
    hooking = threading.Thread(target=hook.open, args=(server,), name="genpipe-webhook",
                               daemon=True)  # fmt: skip
    hooking.start()
    hang_up = _hang_up_stops(server)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # SIGTERM or Ctrl-C during the shutdown: the way to stop
        pass
    finally:
        if hang_up is not None:
            signal.signal(signal.SIGHUP, hang_up)
        follower.stop()
        hook.close(hooking)
        sock.close()
    log.info("stopped serving %s", name)


def _hang_up_stops(server: Any) -> Any:
    """SIGHUP (the terminal closed) stops the server as SIGTERM does, letting requests under
    way finish (uvicorn itself takes SIGINT and SIGTERM alone). The handler it replaced, or
    None where SIGHUP is ignored (`nohup`) and stays so."""
    previous = signal.getsignal(signal.SIGHUP)
    if previous == signal.SIG_IGN:
        return None
    signal.signal(signal.SIGHUP, lambda signum, frame: server.handle_exit(signal.SIGTERM, frame))
    return previous


class Hook:
    """The webhook's life: registered once the server listens, deleted when it stops (also
    when the stop comes while it is being registered)."""

    def __init__(self, client: Any, follower: Follower, verifier: webhook.Verifier | None,
                 url: str) -> None:  # fmt: skip
        self.client, self.follower, self.verifier, self.url = client, follower, verifier, url
        self.webhook: Any = None
        self.closing = False
        self.lock = threading.Lock()

    def open(self, server: Any) -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.05)
        if self.verifier is None or server.should_exit:
            return
        made = _webhook(self.client, self.follower, self.verifier, self.url)
        with self.lock:
            if not self.closing:
                self.webhook, made = made, None
        if made is not None:  # the server stopped meanwhile
            self._delete(made)

    def close(self, opening: threading.Thread) -> None:
        """Delete the webhook, waiting CLOSE_S at most (a registry that does not answer
        must not hold the stop)."""
        with self.lock:
            self.closing = True
            made, self.webhook = self.webhook, None
        if made is not None:
            deleting = threading.Thread(target=self._delete, args=(made,), daemon=True)
            deleting.start()
            deleting.join(CLOSE_S)
        opening.join(CLOSE_S)

    def _delete(self, made: Any) -> None:
        with contextlib.suppress(Exception):
            self.client.delete_webhook(made.webhook_id)


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
