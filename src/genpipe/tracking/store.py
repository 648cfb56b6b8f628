"""The tracking store: which one (MLFLOW_TRACKING_URI, else sqlite:///mlflow.db at the
repo root), whether it can be used (a health check before any work, with MLflow's own TLS
settings), and MLflow's HTTP client bounded so that a broken server fails a stage in about
half a minute with a line per retry.
"""

from __future__ import annotations

import http.client
import logging
import os
import socket
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from genpipe.errors import TrackingError, exception_text

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # at the repo root (stages run there)

log = logging.getLogger(__name__)


def tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI if set (and not empty), else DEFAULT_TRACKING_URI. A server's URI
    with a user or password in it is refused (shown masked): such a URI would reach every
    log line, record and report that names the store; MLflow's own variables carry them."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    parts = urlsplit(uri)
    if parts.scheme.lower() in ("http", "https") and "@" in parts.netloc:
        raise TrackingError(
            f"MLFLOW_TRACKING_URI: expected the server's URL without a user or password; "
            f"got {masked(uri)} (set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, "
            "which MLflow sends as HTTP basic auth, or MLFLOW_TRACKING_TOKEN)"
        )
    return uri


def masked(uri: str) -> str:
    """The URI with its password (or a token in the user's place) as ***: what a log line,
    an error or a record may show. postgresql://mlflow:pw@db/x -> postgresql://mlflow:***@db/x;
    http://token@host -> http://***@host."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    user, host = parts.netloc.rsplit("@", 1)
    name, has_password, _ = user.partition(":")
    shown = f"{name}:***" if has_password else "***"
    return urlunsplit((parts.scheme, f"{shown}@{host}", parts.path, parts.query, parts.fragment))


_USE_DEFAULT = f"unset MLFLOW_TRACKING_URI to use {DEFAULT_TRACKING_URI}"


# MLflow 3's UI opens in its GenAI view unless the page's URL (or the browser's one-time
# choice, the sidebar's switch) asks for model training; the parameter sits in the hash route
UI_MODEL_TRAINING = "workflowType=machine_learning"


def ui_url(uri: str, route: str) -> str:
    """A link into the MLflow UI at `uri` (http(s)) that opens in the model-training view,
    without the URI's credentials: ui_url("http://h:5000", "models/genpipe-gan") ->
    "http://h:5000/#/models/genpipe-gan?workflowType=machine_learning"."""
    base = without_credentials(uri).rstrip("/")
    return f"{base}/#/{route}{'&' if '?' in route else '?'}{UI_MODEL_TRAINING}"


def without_credentials(url: str) -> str:
    """A URL without its user, password or token (https://user:token@host/x ->
    https://host/x; a query or fragment goes too): what may go into a log line, a link, a
    tag. An scp-like git@host:x, which has no scheme, is kept."""
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return url
    return urlunsplit((parts.scheme, parts.netloc.rsplit("@", 1)[-1], parts.path, "", ""))


def check_tracking_server(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, before any training, when `uri` cannot be a working tracking store.

    http(s): GET {uri}/health must answer within `timeout` seconds (a 5xx answer fails too).
    sqlite: the database file's directory must exist (MLflow would silently create it,
    which turns a typo into a new, empty store). Other schemes are left to MLflow.
    """
    scheme = uri.split(":", 1)[0].lower() if ":" in uri else ""
    if scheme in ("http", "https"):
        _check_http(uri, timeout)
    elif scheme == "sqlite":
        _check_sqlite(uri)


def _check_http(uri: str, timeout: float) -> None:
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 (raises ValueError on a port that is not a number)
    except ValueError as exc:
        raise TrackingError(f"MLflow tracking URI {masked(uri)!r} is malformed ({exc})") from None
    if not parts.hostname:
        raise TrackingError(
            f"MLflow tracking URI {masked(uri)!r} is malformed; expected "
            "http(s)://host[:port][/path]"
        )
    url = uri.rstrip("/") + "/health"
    try:
        context = _ssl_context(parts.scheme)  # may fail on a bad certificate path
        with urllib.request.urlopen(url, timeout=timeout, context=context):
            return
    except urllib.error.HTTPError as exc:
        exc.close()
        # 401/403/404: something answers (auth, a proxy); the API calls that follow decide
        if exc.code < 500:
            return
        reason = f"HTTP {exc.code} on /health"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = _unreachable_reason(exc, timeout)
    raise TrackingError(
        f"MLflow tracking server {masked(uri)} is unreachable ({reason}); start it or "
        f"{_USE_DEFAULT}"
    )


def _unreachable_reason(exc: BaseException, timeout: float) -> str:
    cause = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused"
    if isinstance(cause, TimeoutError):  # socket.timeout is TimeoutError since 3.10
        return f"no answer within {timeout:g} s"
    if isinstance(cause, ssl.SSLError):
        return f"TLS error: {getattr(cause, 'reason', None) or cause}"
    if isinstance(cause, socket.gaierror):
        return "host not found"
    return " ".join(str(cause).split()) or type(cause).__name__


def _ssl_context(scheme: str) -> ssl.SSLContext | None:
    """TLS as MLflow's own client would do it, from the same environment variables."""
    if scheme != "https":
        return None
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() in ("true", "1"):
        return ssl._create_unverified_context()  # the user opted out of verification
    context = ssl.create_default_context(cafile=os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH"))
    if client_cert := os.environ.get("MLFLOW_TRACKING_CLIENT_CERT_PATH"):
        context.load_cert_chain(client_cert)
    return context


def _check_sqlite(uri: str) -> None:
    if uri in ("sqlite://", "sqlite:///:memory:"):
        return
    if not uri.startswith("sqlite:///"):
        raise TrackingError(
            f"MLflow tracking URI {masked(uri)!r} is malformed; expected "
            "sqlite:///relative/path.db or sqlite:////absolute/path.db"
        )
    db = Path(uri.removeprefix("sqlite:///").split("?", 1)[0])
    if not db.parent.is_dir():
        raise TrackingError(
            f"MLflow tracking store {masked(uri)}: directory {db.parent} does not exist; "
            f"create it or {_USE_DEFAULT}"
        )


# MLflow's own HTTP client settings, where the user has set none: MLflow's defaults (7
# retries with backoff from 2 s, 120 s a request) keep a stage waiting on a broken server
# for minutes; these fail a call within about 30 s (3 tries 8 s each at worst, 2 to 4 s of
# backoff between them) and still ride out a restart of a few seconds.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",  # an int to MLflow
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "8",
}


def bound_http_calls() -> None:
    """Set HTTP_DEFAULTS in the environment (MLflow reads them at each call) where unset, and
    say each retry as a line: a person waiting on a failing server sees why."""
    for key, value in HTTP_DEFAULTS.items():
        if not os.environ.get(key):
            os.environ[key] = value
    retry_log = logging.getLogger("urllib3.util.retry")
    if not any(isinstance(h, _RetryLine) for h in retry_log.handlers):
        retry_log.addHandler(_RetryLine())
        retry_log.setLevel(logging.DEBUG)
        retry_log.propagate = False  # its other debug lines stay unseen
    # urllib3's own "Retrying (Retry(total=...)) after connection broken by ..." warning says
    # the same retry again, in a line of 400 characters
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)


class _RetryLine(logging.Handler):
    """urllib3 notes each retry at DEBUG ("Incremented Retry for (url=...): Retry(total=N,
    ...)"); this says it as one genpipe warning."""

    def emit(self, record: logging.LogRecord) -> None:
        if not str(record.msg).startswith("Incremented Retry") or len(record.args or ()) != 2:
            return
        url, retry = record.args  # type: ignore[misc]
        cause = getattr(retry, "history", None) and retry.history[-1]
        why = f"HTTP {cause.status}" if cause and cause.status else "no answer"
        left = getattr(retry, "total", None)
        log.warning("MLflow server: %s failed (%s); retrying (%s left)",
                    str(url).split("?", 1)[0], why, left)  # fmt: skip


# What a probe of a failing server's parts may take: /health, then one query of its database
# and one listing of its artifact store.
PROBE_SECONDS = {"health": 3.0, "database": 10.0, "artifacts": 10.0}

# the database behind an MLflow server, by the driver its error message names
_DATABASES = {"psycopg": "PostgreSQL", "pymysql": "MySQL", "mysqldb": "MySQL",
              "sqlite": "SQLite", "pyodbc": "SQL Server", "pymssql": "SQL Server"}  # fmt: skip


def failure(message: str, uri: str, exc: BaseException) -> str:
    """An error line for a failed MLflow call: `message`, then which service failed (the
    server, the database behind it, or its artifact store) when `uri` is an http(s) server
    and a probe finds it (diagnose), else MLflow's exception in brackets."""
    try:
        found = diagnose(uri) if urlsplit(uri).scheme in ("http", "https") else None
    except Exception:  # noqa: BLE001 (a probe must never replace the error it explains)
        found = None
    if found is not None:
        return f"{message}: {found}"
    return f"{message} ({exception_text(exc)})"


def brief(exc: BaseException) -> str:
    """MLflow's exception without the HTTP client's retry story: 'MlflowException: API
    request to <url> failed', for a warning line that another line explains."""
    text = " ".join(exception_text(exc).split())
    return text.split(" with exception ", 1)[0]


def diagnose(uri: str) -> str | None:
    """Which service behind the MLflow server at `uri` fails, as a phrase, or None when each
    answers (the failure was passing). Three probes, each bounded (PROBE_SECONDS): /health
    (the server itself), experiment 0 (a query of its database: MLflow answers 503 with the
    driver's error when the database is down) and the root of its artifact store (500 when
    the S3 endpoint or bucket behind it fails; 404 when it serves no artifacts)."""
    base = uri.rstrip("/")
    status, body = _probe(f"{base}/health", PROBE_SECONDS["health"])
    if status is None:
        return f"the MLflow server at {masked(uri)} does not answer ({body})"
    if status >= 500:
        return f"the MLflow server at {masked(uri)} is failing (HTTP {status} on /health)"
    status, body = _probe(f"{base}/api/2.0/mlflow/experiments/get?experiment_id=0",
                          PROBE_SECONDS["database"])  # fmt: skip
    if status is None:
        return (f"the MLflow server at {masked(uri)} is up, but a query of its database gets "
                f"{body}: the database behind it (its --backend-store-uri) is down or "
                "stuck; see the server's log")  # fmt: skip
    if status >= 500:
        return f"the MLflow server at {masked(uri)} is up, but {_database_fault(body)}"
    status, body = _probe(f"{base}/api/2.0/mlflow-artifacts/artifacts?path=",
                          PROBE_SECONDS["artifacts"])  # fmt: skip
    if status is None or status >= 500:
        got = body if status is None else f"HTTP {status}"
        return (f"the MLflow server at {masked(uri)} is up, but listing its artifact store gets "
                f"{got}: the store behind it (its --artifacts-destination, an S3 bucket "
                "on the team stack) is down or refuses; see the server's log")  # fmt: skip
    return None


def _database_fault(body: str) -> str:
    """'its PostgreSQL database fails: connection to server at ... refused', from the JSON
    error MLflow answers when a query fails."""
    import json

    try:
        message = str(json.loads(body).get("message", ""))
    except (ValueError, AttributeError):
        message = ""
    driver = message.split(")", 1)[0].lower() if message.startswith("(") else ""
    name = next((db for key, db in _DATABASES.items() if key in driver), None)
    what = f"its {name} database" if name else "the database behind it"
    detail = message.split(") ", 1)[1] if name and ") " in message else message
    detail = " ".join(detail.strip().split("\n", 1)[0].split())  # the driver's hints follow
    return f"{what} fails: {detail}" if detail else f"{what} fails (see the server's log)"


def _probe(url: str, timeout: float) -> tuple[int | None, str]:
    """(HTTP status, body) of a GET; (None, why) when nothing answered within `timeout`."""
    try:
        context = _ssl_context(urlsplit(url).scheme)
        with urllib.request.urlopen(url, timeout=timeout, context=context) as answer:
            return answer.status, answer.read(4096).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        with exc:
            try:
                return exc.code, exc.read(4096).decode("utf-8", "replace")
            except (OSError, http.client.HTTPException):  # a body that stalls or breaks
                return exc.code, ""
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
        return None, _unreachable_reason(exc, timeout)


def store_error(uri: str, exc: BaseException) -> TrackingError | None:
    """The one-line error for a tracking store that cannot be read at all (a corrupt sqlite
    file: SQLAlchemy's DatabaseError), or None when `exc` is not that."""
    from sqlalchemy.exc import SQLAlchemyError

    if not isinstance(exc, SQLAlchemyError):
        return None
    cause = getattr(exc, "orig", None) or exc
    if uri.startswith("sqlite:///") and uri not in ("sqlite:///:memory:",):
        db = uri.removeprefix("sqlite:///").split("?", 1)[0]
        return TrackingError(
            f"MLflow tracking store {db} is not a usable SQLite database "
            f"({exception_text(cause)}); "
            f"move it aside (`mv {db} {db}.corrupt`) to start a new store: the register "
            "stages rebuild the runs from the DVC outputs"
        )
    return TrackingError(f"MLflow tracking store {masked(uri)}: database error "
                         f"({exception_text(cause)})")


def import_mlflow() -> Any:
    """Import MLflow (slow: about 2 s) only when a run starts; keep its INFO lines quiet and
    its HTTP calls bounded (bound_http_calls)."""
    bound_http_calls()
    # a stage's log is lines: no progress bars for the files register up- and downloads
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # nor MLflow's "View run ... at" line, whose link opens the GenAI view: a training run
    # says its own link to the model-training view (TrainingRun)
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    import mlflow

    # MLflow sets its own logger to INFO on import (first sqlite use logs migrations);
    # an explicit MLFLOW_LOGGING_LEVEL still wins.
    if not os.environ.get("MLFLOW_LOGGING_LEVEL"):
        logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # its async logging logs each failed batch; TrainingRun raises them as one TrackingError
    logging.getLogger("mlflow.utils.async_logging.async_logging_queue").setLevel(logging.CRITICAL)
    # the system metrics monitor says each failed sample in a 400-character line: a failing
    # server is the stage's own one-line error
    logging.getLogger("mlflow.system_metrics").setLevel(logging.CRITICAL)
    return mlflow
