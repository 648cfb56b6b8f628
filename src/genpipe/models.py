"""The models genpipe trains, one package each, and what each package provides: the one
table that serving, the registry and the re-score read.

    genpipe/<model>/artifact.py   load_served(weights_dir, device) -> the network, eval mode
                                  signature(weights_dir) -> (MLflow signature, input example)
    genpipe/<model>/evaluate.py   evaluate_weights(...) -> (metrics, grids); summary(metrics)

A package's modules are imported on use, by name, so that one model's stages depend on its
own package alone (editing the GAN never reruns the autoencoder's). genpipe.codedeps adds
the stage's model's package to the imports of code that reads this table, so dvc.yaml's
deps and the import graph still see it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from genpipe.errors import ParamsError
from genpipe.metrics.keys import FID, MSE

# what a package provides, module by module: the functions the table's readers call
PROVIDES = {"artifact": ("load_served", "signature"),
            "evaluate": ("evaluate_weights", "summary")}  # fmt: skip


@dataclass(frozen=True)
class Model:
    name: str  # the package genpipe/<name>/, the stages' item
    metric: str  # the primary metric, the champion gate's: lower is better
    # whether its figures read the prepared split (the autoencoder scores the test images'
    # reconstructions; the GAN reads the train images for its tail grid alone)
    scores_split: bool

    def module(self, kind: str) -> ModuleType:
        """genpipe.<name>.<kind>, one of PROVIDES."""
        return importlib.import_module(f"genpipe.{self.name}.{kind}")

    def artifact(self) -> ModuleType:
        return self.module("artifact")

    def evaluation(self) -> ModuleType:
        return self.module("evaluate")

    def registered_name(self, prefix: str) -> str:
        """The registered model's name: `<register.name_prefix>-<model>` (genpipe-gan)."""
        return f"{prefix}-{self.name}"


# keyed by the schema's names (params.schema.ModelName), in its order
TABLE = {"gan": Model("gan", FID, scores_split=False),
         "autoencoder": Model("autoencoder", MSE, scores_split=True)}  # fmt: skip


def get(name: str) -> Model:
    """The model `name`; a ParamsError naming the models there are for any other."""
    if name not in TABLE:
        raise ParamsError(f"model: expected one of {', '.join(TABLE)}; got {name!r}")
    return TABLE[name]


def from_argv(script: str, argv: list[str]) -> Model:
    """The model a stage's script was given (`python pipeline/<script> MODEL`), or a
    ParamsError with the usage."""
    if len(argv) != 1 or argv[0] not in TABLE:
        raise ParamsError(f"usage: {script} MODEL: expected one of {', '.join(TABLE)}; "
                          f"got {' '.join(argv) or 'nothing'}")  # fmt: skip
    return TABLE[argv[0]]
