"""What every stage script shares: logging, and a user error as one line and a non-zero exit."""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable

from genpipe.errors import GenpipeError

log = logging.getLogger("genpipe")


def setup_logging() -> None:
    # genpipe's own progress at INFO; libraries (GX, DVC, MLflow) only when they warn
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)


class Terminated(KeyboardInterrupt):
    """SIGTERM (`timeout`, `docker stop`, a cancelled CI job), raised where the stage is, so
    it ends as Ctrl-C does: the last checkpoint kept, the MLflow run marked KILLED."""


def _terminate(signum: int, frame: object) -> None:
    # a second SIGTERM while the first is cleaned up (the run being ended) is not raised
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main(); a user error prints one line and exits non-zero. Ctrl-C exits
    130 and SIGTERM 143 (128 + the signal), each with one line."""
    setup_logging()
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        main()
    except GenpipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except Terminated:
        print("error: terminated (SIGTERM)", file=sys.stderr)
        sys.exit(128 + signal.SIGTERM)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        signal.signal(signal.SIGTERM, previous)
