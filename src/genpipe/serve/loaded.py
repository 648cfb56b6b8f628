"""A registered model version loaded to serve: MLflow's pyfunc model of it, what it is, and
its one checked answer."""

from __future__ import annotations

import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd

from genpipe.errors import GenpipeError, exception_text
from genpipe.tracking.lineage import TAG_DATA_HASH


class LoadFailed(GenpipeError):
    """A version that cannot be served: its files are gone, it is not a genpipe model of
    this kind, it does not answer, or memory ran out."""


@dataclass
class Served:
    """One loaded version. `inflight` counts the requests it is answering (under `lock`)."""

    name: str
    version: str
    alias: str
    run_id: str | None
    data_hash: str | None
    model: Any  # mlflow.pyfunc.PyFuncModel
    kind: str  # "gan" or "autoencoder": the genpipe model it is
    channels: int
    image_size: int
    load_s: float
    since: str = ""  # when it began to answer (UTC, ISO 8601)
    inflight: int = 0
    lock: threading.Condition = field(default_factory=threading.Condition, repr=False)

    input_schema: Any = None  # the logged signature's inputs, read once

    def __post_init__(self) -> None:
        self.input_schema = self.model.metadata.get_input_schema()

    def describe(self) -> dict[str, Any]:
        return {"model": self.name, "version": self.version, "alias": self.alias,
                "run_id": self.run_id, "data_hash": self.data_hash, "since": self.since,
                "kind": self.kind, "image_size": self.image_size, "load_s": round(self.load_s, 3),
                "channels": self.channels}  # fmt: skip

    def predict(self, model_input: Any) -> np.ndarray:
        return self.model.predict(model_input)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def probe_input(kind: str, channels: int, size: int) -> Any:
    """The one request a version must answer before it serves: seed 0, or a blank image."""
    if kind == "gan":
        return pd.DataFrame({"seed": np.array([0], dtype=np.int64)})
    return np.zeros((1, channels, size, size), dtype=np.uint8)


CODE = "code"  # the model's copy of the genpipe package (its code_paths)


def download(client: Any, uri: str, into: str) -> None:
    """The model's files at `uri` into `into`, all but its copy of the genpipe package: this
    process runs its own genpipe, imported already, which the model's code would import in
    any case (a package in sys.modules is not imported again). Its files are fetched at once,
    a tenth of the requests that the whole model takes."""
    from concurrent.futures import ThreadPoolExecutor

    from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository

    repo = ModelsArtifactRepository(uri, tracking_uri=client.tracking_uri,
                                    registry_uri=client.tracking_uri)  # fmt: skip
    entries = [entry.path for entry in repo.list_artifacts("") if entry.path != CODE]
    with ThreadPoolExecutor(max_workers=8) as pool:
        for done in [pool.submit(repo.download_artifacts, path, into) for path in entries]:
            done.result()


def load(client: Any, name: str, version: str, alias: str, kind: str | None) -> Served:
    """Version `version` of `name`, loaded by MLflow as `mlflow models serve` loads it, and
    checked: a genpipe `kind` model (None: either) that answers one request with images of
    its size. A LoadFailed names the reason otherwise."""
    import mlflow

    from genpipe import models

    started = time.monotonic()
    try:
        details = client.get_model_version(name, version)
    except Exception as exc:  # noqa: BLE001 (any failure leaves the served version serving)
        raise LoadFailed(f"the registry: {exception_text(exc)}") from exc
    scratch = None
    path = list(sys.path)  # the model's code_paths go first in sys.path while it loads
    try:
        scratch = tempfile.mkdtemp(prefix=f"genpipe-serve-{version}-")
        download(client, f"models:/{name}/{version}", scratch)
        model = mlflow.pyfunc.load_model(scratch)
        python_model = model.unwrap_python_model()
        net = getattr(python_model, "net", None)
        found = getattr(python_model, "kind", None)
        if net is None or found not in ([kind] if kind else models.TABLE):
            raise LoadFailed(f"expected a genpipe {kind or 'gan or autoencoder'} model; "
                             f"found {found or 'another model'}")  # fmt: skip
        config = net.config()
        channels, size = int(config["channels"]), int(config["image_size"])
        answer = model.predict(probe_input(kind, channels, size))
        if np.shape(answer) != (1, channels, size, size):
            raise LoadFailed(f"expected one {channels}x{size}x{size} image from one request; "
                             f"got shape {np.shape(answer)}")  # fmt: skip
    except LoadFailed:
        raise
    except MemoryError as exc:
        raise LoadFailed("out of memory while loading it") from exc
    except Exception as exc:  # noqa: BLE001 (files gone, foreign weights, a broken model)
        raise LoadFailed(exception_text(exc)) from exc
    finally:
        sys.path[:] = path
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)  # the weights are in memory now
    return Served(name, str(version), alias, details.run_id, details.tags.get(TAG_DATA_HASH),
                  model, found, channels, size, time.monotonic() - started)  # fmt: skip
