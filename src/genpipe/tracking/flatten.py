"""Nested params and metrics as MLflow takes them: dotted keys; params as strings cut to
MLflow's limit, metrics as numbers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from genpipe.tracking.limits import PARAM_VALUE_MAX

if TYPE_CHECKING:
    from mlflow import MlflowClient


def log_params(client: MlflowClient, run_id: str, params: dict) -> None:
    """Nested params (flatten_params) to the run, now; MlflowClient.log_batch splits them
    into batches of MLflow's limit (100 a batch, as 1000 metrics a batch)."""
    from mlflow.entities import Param

    client.log_batch(run_id, params=[Param(k, v) for k, v in flatten_params(params).items()])


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The leaves of nested dicts under dotted keys ({"a": {"b": 1}} -> {"a.b": 1}); an
    empty dict is a leaf, so its key still shows."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, prefix=f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def flatten_params(params: dict) -> dict[str, str]:
    """Nested params as MLflow params: dotted keys, str() values, None as 'null'.

    Lists are kept whole ("['gan', 'autoencoder']"); an empty mapping is kept as '{}'.
    Values are cut to MLflow's limit (PARAM_VALUE_MAX).
    """
    return {
        key: ("null" if value is None else str(value))[:PARAM_VALUE_MAX]
        for key, value in flatten(params).items()
    }


def flatten_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Numeric leaves of nested metrics under dotted keys; other values are left out."""
    return {
        key: float(value)
        for key, value in flatten(metrics).items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }
