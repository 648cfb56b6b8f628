"""The `genpipe` command and the error handling every stage script shares."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from genpipe.fileio import atomic_path
from genpipe.metrics.keys import (
    COVERAGE,
    DENSITY,
    FID,
    KID_MEAN,
    MSE,
    PRECISION,
    PSNR,
    RECALL,
    SSIM,
)
from genpipe.stage import run_stage


def _params_command(args: argparse.Namespace) -> None:
    from genpipe.params.load import load_checked_params

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


def _registry_check_command(args: argparse.Namespace) -> None:
    from genpipe.errors import GenpipeError
    from genpipe.params.load import load_params
    from genpipe.registry.check import check, repair

    findings = check(list(load_params().models))
    for finding in findings:
        _print(finding.line())
    broken = [f for f in findings if f.problem]
    if broken and args.repair:
        for finding in broken:
            repair(finding.model)
    elif broken:
        models = ", ".join(f.model for f in broken)
        raise GenpipeError(f"registry check: {len(broken)} model(s) not in the registry as "
                           f"registry.json says ({models}); run `genpipe registry check "
                           "--repair` to register them again")  # fmt: skip


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


def _history_command(args: argparse.Namespace) -> None:
    from genpipe import models
    from genpipe.errors import TrackingError
    from genpipe.params.load import load_params
    from genpipe.registry import history
    from genpipe.tracking import store

    name = args.model
    if name in models.TABLE:  # a model of this project: its registered name
        name = models.TABLE[name].registered_name(load_params().registry.name_prefix)
    uri = store.tracking_uri()
    store.check_tracking_server(uri)
    mlflow = store.import_mlflow()
    from mlflow.exceptions import MlflowException

    try:
        changes = history.read(mlflow.MlflowClient(uri), name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise TrackingError(f"registered model {name!r}: expected it in {store.masked(uri)}; "
                                "found no such model") from None  # fmt: skip
        raise TrackingError(f"MLflow registry at {store.masked(uri)}: could not read {name} "
                            f"({store.brief(exc)})") from exc  # fmt: skip
    if args.json:
        from dataclasses import asdict

        _print("\n".join(json.dumps(asdict(c), sort_keys=True) for c in changes))
    else:
        _print(history.table(changes))


def _sweep_id(text: str) -> str:
    import re

    if not re.fullmatch(r"sw[0-9a-f]{8}", text):
        raise argparse.ArgumentTypeError(f"expected a sweep's id (sw and 8 hex digits); "
                                         f"found {text!r}")  # fmt: skip
    return text


# what `genpipe compare` shows of each model, its primary (the gate's) metric first
COMPARED = {"gan": (FID, KID_MEAN, PRECISION, RECALL, DENSITY, COVERAGE),
            "autoencoder": (MSE, PSNR, SSIM, FID)}  # fmt: skip


def _compare_command(args: argparse.Namespace) -> None:
    from genpipe import recipes
    from genpipe.errors import TrackingError
    from genpipe.metrics.keys import EVAL_PREFIX
    from genpipe.params.load import load_params
    from genpipe.tracking import store
    from genpipe.tracking.experiments import experiment_name
    from genpipe.tracking.lineage import TAG_DATA_HASH, TAG_RECIPE, TAG_SWEEP

    metrics = tuple(args.metric) if args.metric else COMPARED[args.model]
    experiment = experiment_name(load_params().train.experiment, args.model)
    uri = store.tracking_uri()
    store.check_tracking_server(uri)
    mlflow = store.import_mlflow()
    from mlflow.exceptions import MlflowException

    try:
        client = mlflow.MlflowClient(uri)
        found = client.get_experiment_by_name(experiment)
        if found is None:
            raise TrackingError(f"MLflow experiment {experiment!r}: expected it in "
                                f"{store.masked(uri)}; found none (train the model first)")
        where = "attributes.status = 'FINISHED'"
        if args.sweep:  # a sweep's id is [a-z0-9]: nothing to quote
            where += f" and tags.`{TAG_SWEEP}` = '{args.sweep}'"
        runs = client.search_runs([found.experiment_id], where, max_results=args.max_runs)
    except MlflowException as exc:
        raise TrackingError(f"MLflow tracking store {store.masked(uri)}: could not search the "
                            f"runs of {experiment} ({store.brief(exc)})") from exc  # fmt: skip
    rows = [{"name": run.info.run_name, "recipe": run.data.tags.get(TAG_RECIPE),
             "data_hash": run.data.tags.get(TAG_DATA_HASH, ""), "params": run.data.params,
             "metrics": {m: run.data.metrics[f"{EVAL_PREFIX}{m}"] for m in metrics
                         if f"{EVAL_PREFIX}{m}" in run.data.metrics}}
            for run in runs]  # fmt: skip
    _print(recipes.table(recipes.group(rows, metrics), metrics))


def _sweep_command(args: argparse.Namespace) -> None:
    from genpipe.sweep.grid import SweepError

    action, *rest = args.action or ["submit"]
    if action == "status" and len(rest) == 1:
        from genpipe.sweep.submit import status

        for line in status(rest[0]):
            _print(line)
    elif action == "task" and len(rest) == 2 and rest[1].isdigit():
        from genpipe.sweep.task import run_task

        run_task(Path(rest[0]), int(rest[1]))
    elif action == "submit" and not rest:
        from genpipe.sweep.submit import Request, submit

        flags = {name: getattr(args, name) for name in SWEEP_FLAGS}
        submit(Request(args.set_param or [], args.on, args.wait, flags), say=_print)
    else:
        raise SweepError(f"genpipe sweep {' '.join(args.action)}: expected `genpipe sweep -S "
                         "key=a,b ...`, `genpipe sweep status <id>` or `genpipe sweep task "
                         "<dir> <index>`")  # fmt: skip


# the sweep section's keys that `genpipe sweep` also takes as flags (--cpus-per-task ...)
SWEEP_FLAGS = {"partition": str, "time": str, "cpus_per_task": int, "mem": str, "gres": str,
               "account": str, "max_parallel": int, "git_remote": str, "scratch": str,
               "checkpoints": str}  # fmt: skip


def _serve_command(args: argparse.Namespace) -> None:
    from genpipe.serve.run import Options, serve

    serve(Options(args.model, args.alias, args.host, args.port, args.poll_s, args.webhook_url,
                  not args.no_webhook))


def _ui_command(args: argparse.Namespace) -> None:
    """`mlflow ui` on the project's tracking store, and the URL of its model-training view
    (MLflow 3's UI opens in its GenAI view otherwise)."""
    import signal
    import subprocess

    from genpipe.errors import GenpipeError
    from genpipe.serve.run import bind
    from genpipe.tracking import store

    uri = store.tracking_uri()
    if uri.startswith(("http://", "https://")):
        _print(f"the tracking store is a server: open {store.ui_url(uri, 'experiments')}")
        return
    if not 0 < args.port < 65536:
        raise GenpipeError(f"--port: expected 1..65535; got {args.port}")
    bind(args.host, args.port).close()  # a port in use, an address not here: one line now
    store.check_tracking_server(uri)
    url = f"http://{args.host}:{args.port}"
    _print(f"MLflow UI on {store.masked(uri)}: open "
           f"{store.ui_url(url, 'experiments')}  (Ctrl-C stops it)")  # fmt: skip
    mlflow = Path(sys.executable).parent / "mlflow"
    command = [str(mlflow) if mlflow.exists() else "mlflow", "ui", "--host", args.host,
               "--port", str(args.port)]  # fmt: skip
    # the store through the environment, not the command line (`ps` shows that to all)
    env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": uri}
    proc = subprocess.Popen(command, env=env)
    try:
        code = proc.wait()
    except KeyboardInterrupt:  # Ctrl-C stops the UI: the way out, not an error
        proc.send_signal(signal.SIGINT)  # it stops its workers; a second Ctrl-C is harmless
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.terminate()
        return
    if code not in (0, 130, -2):
        from genpipe.errors import GenpipeError

        raise GenpipeError(f"mlflow ui exited with {code} (port {args.port} taken? "
                           "choose another with --port)")  # fmt: skip


def _add_serve(commands: Any) -> None:
    served = commands.add_parser(
        "serve", help="serve the version an alias names (@champion) over HTTP: MLflow's "
        "/invocations, /sample.png, /reconstruct, /health; switch when the alias moves")
    served.add_argument("model", help="gan, autoencoder (with register.name_prefix) or a "
                        "registered model's full name")  # fmt: skip
    served.add_argument("--alias", default="champion", help="(default: %(default)s)")
    served.add_argument("--host", default="127.0.0.1", help="(default: %(default)s)")
    served.add_argument("--port", type=int, default=5001, help="(default: %(default)s)")
    served.add_argument("--poll-s", type=float, default=10.0, help="seconds between asking the "
                        "registry where the alias is (default: %(default)s)")  # fmt: skip
    served.add_argument("--webhook-url", help="where the MLflow server posts alias moves "
                        "(default: http://HOST:PORT/webhook)")  # fmt: skip
    served.add_argument("--no-webhook", action="store_true",
                        help="follow the alias by polling alone, with no webhook")
    served.set_defaults(func=_serve_command)


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
    retrain.add_argument("--base", help="git revision to diff metrics and params against "
                         "(default: origin/<register.default_branch>)")  # fmt: skip
    retrain.add_argument("--summary", help="append the Markdown report here "
                         "(the workflow passes $GITHUB_STEP_SUMMARY)")  # fmt: skip
    retrain.add_argument("--report", help="write the Markdown report here too (a PR comment)")
    retrain.add_argument("--no-push", action="store_true", help="do not `dvc push`")
    retrain.add_argument("--branch", help="the branch retrained: only register.default_branch "
                         "moves champion and challenger (default: $GITHUB_HEAD_REF, "
                         "$GITHUB_REF_NAME, else the checkout's)")  # fmt: skip
    retrain.set_defaults(func=_ci_retrain_command)
    registry = commands.add_parser("registry", help="the MLflow Model Registry")
    registry_commands = registry.add_subparsers(dest="registry_command", required=True)
    past = registry_commands.add_parser(
        "history", help="every alias change register made to a model: which version took "
        "which alias from which, when, why, and both values")  # fmt: skip
    past.add_argument("model", help="gan, autoencoder (with register.name_prefix) or a "
                      "registered model's full name")  # fmt: skip
    past.add_argument("--json", action="store_true", help="one JSON object a line")
    past.set_defaults(func=_history_command)
    checked = registry_commands.add_parser(
        "check", help="whether the registry still holds the version each registry.json names "
        "(a model deleted in the UI, a lost mlflow.db); --repair registers it again")  # fmt: skip
    checked.add_argument("--repair", action="store_true",
                         help="rerun register@<model> for each model failing the check")
    checked.set_defaults(func=_registry_check_command)
    compare = commands.add_parser(
        "compare", help="a model's runs grouped by recipe (params without the seeds): "
        "each figure's mean ± std over the seeds, and whether recipes differ by more")  # fmt: skip
    compare.add_argument("model", choices=sorted(COMPARED))
    compare.add_argument("--metric", action="append", help="an eval/ metric to show, the "
                         "first one ranks (repeatable; default: the model's figures)")  # fmt: skip
    compare.add_argument("--max-runs", type=int, default=1000, help="(default: %(default)s)")
    compare.add_argument("--sweep", type=_sweep_id, help="only the runs of this `genpipe sweep`")
    compare.set_defaults(func=_compare_command)
    sweep = commands.add_parser(
        "sweep", help="a grid of params (-S key=a,b -S other=range(0,3)): one DVC experiment "
        "a point, on DVC's queue here (--on local) or a Slurm array (--on slurm); "
        "`genpipe sweep status <id>` says where each point stands")  # fmt: skip
    sweep.add_argument("action", nargs="*", help="status <id> | (none: submit)")
    sweep.add_argument("-S", "--set-param", action="append", metavar="key=values",
                       help="as `dvc exp run -S`; the grid is every combination (repeatable)")
    sweep.add_argument("--on", choices=["local", "slurm"],
                       help="the engine (default: params.yaml's sweep.engine)")
    sweep.add_argument("--wait", action="store_true",
                       help="block until every task has ended (as sbatch --wait); fail if any did")
    for name, kind in SWEEP_FLAGS.items():
        sweep.add_argument(f"--{name.replace('_', '-')}", type=kind, default=None,
                           help=f"sweep.{name} for this sweep")  # fmt: skip
    sweep.set_defaults(func=_sweep_command)
    _add_serve(commands)
    ui = commands.add_parser("ui", help="the MLflow UI on the project's tracking store, "
                             "opened in its model-training view")  # fmt: skip
    ui.add_argument("--host", default="127.0.0.1", help="(default: %(default)s)")
    ui.add_argument("--port", type=int, default=5000, help="(default: %(default)s)")
    ui.set_defaults(func=_ui_command)
    args = parser.parse_args(argv)
    run_stage(lambda: args.func(args))
