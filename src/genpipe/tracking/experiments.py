"""Each model's MLflow experiment, `<train.experiment>-<model>` (its FID is not the other's):
its name, and the experiment itself, created when missing and tagged for MLflow's
model-training view."""

from __future__ import annotations

from typing import TYPE_CHECKING

from genpipe.errors import TrackingError
from genpipe.tracking.lineage import EXPERIMENT_KIND, TAG_EXPERIMENT_KIND

if TYPE_CHECKING:
    from mlflow import MlflowClient


def experiment_name(prefix: str, model: str) -> str:
    """'genpipe-gan': each model's runs in an experiment of their own (train.experiment is
    the prefix), so a chart of eval/fid never puts one model's beside the other's."""
    return f"{prefix}-{model}"


def get_or_create_experiment(client: MlflowClient, name: str) -> str:
    """The id of experiment `name`, created if missing, tagged as model training (an
    existing one that lacks the tag gets it). A deleted one is a TrackingError: MLflow
    would refuse runs in it, and a new one cannot take its name."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, tags={TAG_EXPERIMENT_KIND: EXPERIMENT_KIND})
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            # another stage created it in the meantime
            experiment = client.get_experiment_by_name(name)
    if experiment.lifecycle_stage == "deleted":
        raise TrackingError(
            f"MLflow experiment '{name}' in {client.tracking_uri} is deleted; restore it "
            f"(mlflow experiments restore --experiment-id {experiment.experiment_id}) "
            "or set train.experiment to another prefix"
        )
    if TAG_EXPERIMENT_KIND not in experiment.tags:
        client.set_experiment_tag(experiment.experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND)
    return experiment.experiment_id

