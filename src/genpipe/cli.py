"""The `genpipe` command and the error handling every stage script shares."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from genpipe.fileio import atomic_path
from genpipe.stage import run_stage


def _params_command(args: argparse.Namespace) -> None:
    from genpipe.params import load_checked_params

    params = load_checked_params(args.file)
    _print(json.dumps(params.model_dump(mode="json", by_alias=True), indent=2))


def _print(text: str) -> None:
    """print(), quiet when the reader has gone (`genpipe params | head -3`): exit 0 with no
    BrokenPipeError traceback, now or when Python flushes stdout at exit."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the flush at exit writes nowhere, quietly
        sys.exit(0)


def _ci_retrain_command(args: argparse.Namespace) -> None:
    from genpipe.ci import check_report_paths, ci_retrain

    check_report_paths(args.summary, args.report)  # before the retraining, not after
    result = ci_retrain(args.base, push=not args.no_push, branch=args.branch)
    if args.summary:
        with open(args.summary, "a", encoding="utf-8") as f:  # GITHUB_STEP_SUMMARY: appended
            f.write(result.report)
    if args.report:
        with atomic_path(Path(args.report)) as tmp:
            tmp.write_text(result.report, encoding="utf-8")
    _print(result.report)
    if result.failure:  # reported first, so the job summary says what failed
        from genpipe.ci import CIError

        raise CIError(result.failure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="genpipe", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("params", help="check params.yaml and print it with defaults")
    check.add_argument("--file", default="params.yaml", help="params file (default: %(default)s)")
    check.set_defaults(func=_params_command)
    retrain = commands.add_parser(
        "ci-retrain",
        help="CI: rerun the stages whose inputs changed (pulling from the DVC remote), push "
        "the outputs, register to MLFLOW_TRACKING_URI, report metrics and params against BASE",
    )
    retrain.add_argument("--base", default="origin/main",
                         help="git revision to diff metrics and params against "
                         "(default: %(default)s)")  # fmt: skip
    retrain.add_argument("--summary", help="append the Markdown report here "
                         "(the workflow passes $GITHUB_STEP_SUMMARY)")  # fmt: skip
    retrain.add_argument("--report", help="write the Markdown report here too (a PR comment)")
    retrain.add_argument("--no-push", action="store_true", help="do not `dvc push`")
    retrain.add_argument("--branch", help="the branch retrained: only register.default_branch "
                         "moves champion and challenger (default: $GITHUB_HEAD_REF, "
                         "$GITHUB_REF_NAME, else the checkout's)")  # fmt: skip
    retrain.set_defaults(func=_ci_retrain_command)
    args = parser.parse_args(argv)
    run_stage(lambda: args.func(args))
