"""A training run rebuilt from the DVC outputs, when the tracking server does not hold the
run that mlflow_run.json names (a CI runner with a fresh server, a lost mlflow.db): the
registry is rebuildable from DVC outputs alone. The rebuilt run is the train stage's (its
experiment, name, tags and params) with the train log's and the evaluation's points, tagged
with the run it stands in for, so a second register finds it rather than rebuilding again.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genpipe.tracking import lineage
from genpipe.tracking.experiments import experiment_name, get_or_create_experiment
from genpipe.tracking.flatten import log_params
from genpipe.tracking.recorded_run import evaluation_points

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recorded:
    """What the DVC outputs say of a model's training run."""

    run_id: str  # the run mlflow_run.json names
    model: str
    experiment_prefix: str  # train.experiment
    params: dict[str, Any]  # the whole params.yaml, as dumped
    data_hash: str  # of data/prepared
    metrics: dict[str, Any]  # metrics.json
    train_log: Path  # train_log.csv: the training curve's points
    files: tuple[Path, ...]  # logged to the run as artifacts, where they exist


def find_or_rebuild(client: Any, recorded: Recorded) -> str:
    """The run mlflow_run.json names if the server has it, else the one rebuilt for it
    before (found by its tag), else one rebuilt now."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_run(recorded.run_id)
        return recorded.run_id
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
    experiment = experiment_name(recorded.experiment_prefix, recorded.model)
    exp = client.get_experiment_by_name(experiment)
    if exp is not None:
        found = client.search_runs([exp.experiment_id],
                                   f"tags.`{lineage.TAG_SOURCE_RUN}` = '{recorded.run_id}'",
                                   max_results=1)  # fmt: skip
        if found:
            return found[0].info.run_id
    log.info("run %s is not on the tracking server: rebuilding it from the DVC outputs",
             recorded.run_id)  # fmt: skip
    return rebuild(client, recorded, experiment)


def rebuild(client: Any, recorded: Recorded, experiment: str) -> str:
    """A run as the train stage would have made it, with the train log's points and the
    evaluation's (as evaluate logs them), ended FINISHED; returns its id."""
    from mlflow.entities import Metric

    git = lineage.git_info()
    logged = lineage.run_params(recorded.params, recorded.model)  # what the train stage logs
    run = client.create_run(
        get_or_create_experiment(client, experiment),
        run_name=lineage.run_name(recorded.model, git["short"], lineage.dvc_exp_name(), logged),
        tags={
            **lineage.run_tags(recorded.model, recorded.data_hash, git),
            lineage.TAG_RECIPE: lineage.recipe_id(logged),
            lineage.TAG_SOURCE_RUN: recorded.run_id,
        },
    )
    run_id = run.info.run_id
    log_params(client, run_id, logged)
    points = []
    if recorded.train_log.is_file():
        with recorded.train_log.open() as f:
            for row in csv.DictReader(f):
                step = int(row.pop("step"))
                points += [Metric(k, float(v), 0, step) for k, v in row.items() if v != ""]
    evaluated, tags = evaluation_points(recorded.metrics)
    client.log_batch(run_id, metrics=points + evaluated, tags=tags)  # MlflowClient batches it
    for path in recorded.files:
        if path.is_file():
            client.log_artifact(run_id, str(path))
    client.set_terminated(run_id, "FINISHED")
    return run_id
