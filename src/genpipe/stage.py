"""What every stage script shares: logging, and a user error as one line and a non-zero exit."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from genpipe.errors import GenpipeError

log = logging.getLogger("genpipe")


def setup_logging() -> None:
    # genpipe's own progress at INFO; libraries (GX, DVC, MLflow) only when they warn
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main(); a user error prints one line and exits non-zero."""
    setup_logging()
    try:
        main()
    except GenpipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
