"""The data a run was trained and evaluated on, as MLflow datasets: the run page's Datasets
column and drawer, through MLflow's own inputs API (`log_inputs`).

A dataset is named after its source (`digits`, `fashion-mnist`, `folder:images`; the test
split's is `<name> (test)`), its digest is DVC's hash of data/prepared (what `dvc.lock`
records, 36 characters: MLflow's limit), its source is `data.path` or the official URL, and
its profile holds the counts per split and the image shape.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from genpipe import dvclock, paths
from genpipe.errors import DataError, exception_text
from genpipe.tracking.limits import DATASET_DIGEST_MAX
from genpipe.tracking.store import without_credentials

CONTEXT_TAG = "mlflow.data.context"  # MLflow's input tag: what the run used the data for
CONTEXTS = {"train": "training", "test": "evaluation"}


@dataclass(frozen=True)
class DataInput:
    name: str
    digest: str
    source_type: str  # MLflow's: "code", "local" or "http"
    source: str  # JSON, as MLflow's dataset sources write it
    profile: dict[str, Any]
    context: str  # CONTEXTS' values

    def entity(self) -> Any:
        """MLflow's DatasetInput for MlflowClient.log_inputs."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        dataset = Dataset(self.name, self.digest, self.source_type, self.source,
                          profile=json.dumps(self.profile, sort_keys=True))  # fmt: skip
        return DatasetInput(dataset, tags=[InputTag(CONTEXT_TAG, self.context)])


def data_input(data: dict[str, Any], info: dict[str, Any], digest: str,
               split: Literal["train", "test"]) -> DataInput:  # fmt: skip
    """The prepared data as the dataset a run used: `data` is params.yaml's data section,
    `info` data/prepared/info.json (the fetch stage's counts and shape), `digest`
    prepared_digest()'s. The train split is the training input, the test split the
    evaluation's."""
    source = data["source"]
    if source == "digits":
        name, kind = "digits", "code"
        where = json.dumps({"tags": {"mlflow.source.name": "sklearn.datasets.load_digits"}})
    elif source == "folder":
        name, kind = f"folder:{Path(data['path']).name}", "local"
        where = json.dumps({"uri": str(data["path"])})
    elif data.get("local"):
        name, kind = source, "local"
        where = json.dumps({"uri": str(data["path"])})
    else:
        from genpipe.data.origins import MIRRORS

        mirrors = data.get("mirrors") or MIRRORS[source]
        name, kind, where = source, "http", json.dumps({"url": without_credentials(mirrors[0])})
    counts = info.get("counts", {})
    shape = list(info.get("shape", []))[1:]  # (C, S, S) of (N, C, S, S)
    profile = {
        "split": split,
        "images": counts.get(split),
        "counts": counts,
        "image_shape": shape,
        "num_classes": info.get("num_classes"),
    }
    if split == "test":
        name = f"{name} (test)"
    return DataInput(name, digest[:DATASET_DIGEST_MAX], kind, where, profile, CONTEXTS[split])


def prepared_input(data: dict[str, Any], split: Literal["train", "test"],
                   data_hash: str | None = None, prepared: Path = paths.PREPARED,
                   lock: Path = dvclock.LOCK) -> DataInput:  # fmt: skip
    """data_input() of data/prepared as the fetch stage wrote it (its info.json), digested
    by DVC's hash of it in dvc.lock (`dvc repro` has written the fetch stage's entry before
    a later stage runs); outside DVC, by the start of our SHA-256 of it (`data_hash`, or
    computed)."""
    from genpipe.data.canonical import INFO_FILE, prepared_sha256

    try:
        info = json.loads((prepared / INFO_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{prepared / INFO_FILE}: expected the fetch stage's info as JSON; "
                        f"{exception_text(exc)} (run `dvc repro fetch`)") from None  # fmt: skip
    digest = dvc_digest(prepared, lock) or (data_hash or prepared_sha256(prepared))[:32]
    return data_input(data, info, digest, split)


def dvc_digest(out: Path, lock: Path = dvclock.LOCK) -> str | None:
    """The md5 dvc.lock records for the fetch stage's output `out`, if any."""
    return dvclock.out_md5(dvclock.stages(lock), "fetch", out)
