"""What the champion gate reads: a version's values from its tags, the champion's (from its
run for one an operator set by hand without them), whether its files can still be loaded,
and its score on today's data when its own was taken on other data or with another
backbone; then the gate's decision for a new version (gate.decide, a pure function)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from genpipe.metrics.keys import EVAL_PREFIX, std_of
from genpipe.registry import gate
from genpipe.registry.gate import CHAMPION
from genpipe.registry.versions import WEIGHTS, files_gone
from genpipe.tracking.lineage import (
    TAG_BACKBONE,
    TAG_DATA_HASH,
    TAG_METRIC,
    TAG_REFERENCE,
    TAG_STD,
    TAG_VALUE,
    TAG_WEIGHTS,
)

log = logging.getLogger(__name__)


def values(version: Any) -> gate.Version:
    """What a version's tags say of it."""
    tags = version.tags
    return gate.Version(int(version.version), tags.get(TAG_METRIC), _number(tags, TAG_VALUE),
                        tags.get(TAG_BACKBONE), tags.get(TAG_DATA_HASH),
                        tags.get(TAG_WEIGHTS), tags.get(TAG_REFERENCE),
                        std=_number(tags, TAG_STD))  # fmt: skip


def _number(tags: dict[str, str], key: str) -> float | None:
    """A tag's number; None with no tag (an alias set by hand, a version registered before
    spreads) or one edited by hand into something else."""
    try:
        return float(tags[key])
    except (KeyError, ValueError):
        return None


def champion_version(client: Any, name: str) -> Any | None:
    """The model version the champion alias names, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        return None


def champion(client: Any, name: str, metric: str) -> gate.Version | None:
    """The champion's values; for one without genpipe's metric tag (an alias set by hand in
    the UI), its run's `eval/<metric>` and data hash where the run has them."""
    from mlflow.exceptions import MlflowException

    version = champion_version(client, name)
    if version is None:
        return None
    held = values(version)
    if held.value is not None:
        return held
    run = None
    if version.run_id:
        try:
            run = client.get_run(version.run_id)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
    value = run.data.metrics.get(f"{EVAL_PREFIX}{metric}") if run is not None else None
    data_hash = run.data.tags.get(TAG_DATA_HASH) if run is not None else None
    return replace(held, value=value, hand_set=True,
                   metric=held.metric or (metric if value is not None else None),
                   data_hash=held.data_hash or data_hash)  # fmt: skip


def champion_gone(client: Any, name: str, version: Any = None) -> str | None:
    """Why the champion's files cannot be loaded, or None; None too when there is no
    champion or it is `version` itself (repaired before this)."""
    held = champion_version(client, name)
    if held is None or (version is not None and held.version == version.version):
        return None
    return files_gone(client, held)


def decide(mlflow: Any, client: Any, name: str, new: gate.Version,
           policy: gate.Policy) -> gate.Decision:  # fmt: skip
    """The gate's decision for `new` against the champion, scored again on today's data
    when its own was taken on other data or with another backbone; on a branch other than
    the default, what it would be on merge, under an alias of the branch's own."""
    held = champion(client, name, new.metric)
    gone = champion_gone(client, name)
    if held is not None and gone is not None:
        held = replace(held, unloadable=gone)
    elif policy.score is not None and not policy.force and gate.needs_rescore(new, held):
        held = rescored(mlflow, client, name, held, new, policy.score)
    verdict = gate.decide(new, held, policy.min_improvement, policy.force, policy.noise_z)
    if policy.on_default or not verdict.aliases:
        return verdict
    return gate.on_branch(verdict, new.version, str(policy.branch), policy.default_branch)


def rescored(mlflow: Any, client: Any, name: str, held: gate.Version, new: gate.Version,
             score: Callable[[Path], dict[str, Any]]) -> gate.Version:  # fmt: skip
    """The champion with its metric on today's reference and backbone, or marked unloadable
    with why."""
    from genpipe.registry.rescore import score_version

    def download(tmp: Path) -> Path:  # the pyfunc model's "weights" artifact
        uri = f"models:/{name}/{held.version}"
        local = mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp),
                                                    tracking_uri=client.tracking_uri)  # fmt: skip
        return Path(local) / WEIGHTS

    log.info("%s: champion v%d was evaluated on other data or another backbone; scoring it "
             "on today's", name, held.version)  # fmt: skip
    metrics, how = score_version(download, score)
    value = (metrics or {}).get(new.metric)
    if not isinstance(value, int | float):
        log.warning("%s: champion v%d cannot be scored on today's data (%s)", name,
                    held.version, how)  # fmt: skip
        return replace(held, unloadable=how)
    log.info("%s: champion v%d on today's data: %s %.6g (was %.6g), scored in %s", name,
             held.version, new.metric, value, held.value, how)  # fmt: skip
    return gate.rescored(held, new, float(value), std_of(metrics or {}, new.metric))
