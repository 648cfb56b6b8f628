"""What every stage script shares: logging, and a user error as one line and a non-zero exit."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
from collections.abc import Callable

from genpipe.errors import GenpipeError, disk_full

log = logging.getLogger("genpipe")
ERROR = "error: "  # how a stage's one line begins on stderr


def stage_error(output: str) -> str | None:
    """The last one-line error a stage printed ("error: ..."), from its output; None when it
    printed none (it was killed, or failed outside genpipe)."""
    found = [line.strip() for line in output.splitlines() if line.startswith(ERROR)]
    return found[-1] if found else None


def setup_logging() -> None:
    # genpipe's own progress at INFO; libraries (GX, DVC, MLflow) only when they warn
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)


class Terminated(KeyboardInterrupt):
    """SIGTERM (`timeout`, `docker stop`, a cancelled CI job) or SIGHUP (the terminal or SSH
    session that ran `dvc repro` closed), raised where the stage is, so it ends as Ctrl-C
    does: the last checkpoint kept, the MLflow run marked KILLED."""

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__(signum)  # args (signum,): a copy (pickle) is built the same way
        self.signum = signum


# the signals that stop a stage as Ctrl-C does. SIGHUP only where it is not ignored already:
# under `nohup dvc repro` it must stay ignored
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _terminate(signum: int, frame: object) -> None:
    # a second signal while the first is cleaned up (the run being ended) is not raised
    for stop in STOP_SIGNALS:
        signal.signal(stop, signal.SIG_IGN)
    raise Terminated(signum)


def disk_full_line(exc: OSError) -> str:
    """A full disk, in one line: where, what the system said, that nothing was replaced."""
    path = getattr(exc, "filename2", None) or exc.filename  # a copy's destination first
    said = exc.strerror or " ".join(str(exc).split())
    where = f"{said}: {path}" if path else said
    return (f"no space left on the device ({where}); free space there and rerun: the "
            "stage's earlier outputs are kept as they were")


def _say(line: str) -> None:
    """The one line on stderr, if it can still be written: after a hang-up (SIGHUP) the
    terminal is gone and a write fails (EIO), which must not replace the exit code."""
    with contextlib.suppress(OSError):
        print(line, file=sys.stderr, flush=True)


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main(); a user error prints one line and exits non-zero. Ctrl-C exits
    130, SIGTERM 143 and SIGHUP 129 (128 + the signal), each with one line."""
    setup_logging()
    previous = {stop: signal.getsignal(stop) for stop in STOP_SIGNALS}
    for stop, handler in previous.items():
        if stop == signal.SIGTERM or handler != signal.SIG_IGN:
            signal.signal(stop, _terminate)
    try:
        main()
    except GenpipeError as exc:
        _say(f"{ERROR}{exc}")
        sys.exit(exc.exit_code)
    except Exception as exc:  # a full disk where no writer of ours saw it (MLflow's, say)
        full = disk_full(exc)
        if full is None:
            raise
        _say(f"{ERROR}{disk_full_line(full)}")
        sys.exit(1)
    except Terminated as exc:
        _say(f"{ERROR}terminated ({signal.Signals(exc.signum).name})")
        sys.exit(128 + exc.signum)
    except KeyboardInterrupt:
        _say(f"{ERROR}interrupted")
        sys.exit(130)
    finally:
        for stop, handler in previous.items():
            signal.signal(stop, handler)
