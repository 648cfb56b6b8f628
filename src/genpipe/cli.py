"""The `genpipe` command and the error handling every stage script shares."""

from __future__ import annotations

import argparse
import json
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


def _params_command(args: argparse.Namespace) -> None:
    from genpipe.params import load_params

    params = load_params(args.file)
    print(json.dumps(params.model_dump(mode="json", by_alias=True), indent=2))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="genpipe", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("params", help="check params.yaml and print it with defaults")
    check.add_argument("--file", default="params.yaml", help="params file (default: %(default)s)")
    check.set_defaults(func=_params_command)
    args = parser.parse_args(argv)
    run_stage(lambda: args.func(args))
