"""Runs a killed process left RUNNING (kill -9, a lost machine, a worker that died): ended,
so that no run stays RUNNING for ever. Training's next start ends the one its checkpoint
names; the launcher of several workers ends the one rank 0 named when they fail."""

from __future__ import annotations

import logging
from typing import Any

from genpipe.errors import exception_text

log = logging.getLogger(__name__)


def end_if_running(client: Any, run_id: str, status: str) -> bool:
    """End run `run_id` with `status` if it is still RUNNING; True if it was. A run that is
    gone (another store), or a store that cannot be reached, leaves it as it is, with a
    warning for the latter."""
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    try:
        if client.get_run(run_id).info.status != "RUNNING":
            return False
        client.set_terminated(run_id, status=status)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            log.warning("could not end run %s as %s (%s)", run_id, status, exception_text(exc))
        return False
    except (OSError, SQLAlchemyError) as exc:  # a store gone, a corrupt sqlite file
        log.warning("could not end run %s as %s (%s)", run_id, status, exception_text(exc))
        return False
    log.info("run %s, left RUNNING by a killed process, is marked %s", run_id, status)
    return True


def end_orphan(run_id: str, status: str, uri: str | None = None) -> bool:
    """end_if_running on the tracking store at `uri` (else the project's); a store that
    cannot be opened is a warning, never an error over the one being handled."""
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    from genpipe.tracking.store import import_mlflow, masked, tracking_uri

    mlflow = import_mlflow()
    uri = uri or tracking_uri()
    try:
        client = mlflow.MlflowClient(tracking_uri=uri)
    except (MlflowException, OSError, SQLAlchemyError) as exc:
        log.warning("could not end run %s as %s: %s (%s)", run_id, status, masked(uri),
                    exception_text(exc))  # fmt: skip
        return False
    return end_if_running(client, run_id, status)
