"""The MLflow pyfunc model of a trained genpipe model, logged as "models from code".

MLflow stores this file with the model and runs it at load time; nothing from the
pipeline's process is pickled. The model carries the genpipe package (code_paths) and
its weights directory (artifact "weights": safetensors + config.json), so
`mlflow.pyfunc.load_model(uri)` works in any process with torch and MLflow installed.

- GAN: `predict(pd.DataFrame({"seed": [0, 1, ...]}))` -> uint8 (N, C, S, S), one image
  per seed, the same image for the same seed. A conditional GAN (gan.conditional) takes
  an optional "label" column (class indices); without it each seed draws its class from
  the train split's class shares.
- Autoencoder: `predict(uint8 array (N, C, S, S))` -> their reconstructions, uint8.

A request runs in batches of BATCH images, so its memory is the output's plus one batch's;
a request of more than $GENPIPE_SERVE_MAX_IMAGES images (default MAX_IMAGES) is refused
with one line (HTTP 400 from `mlflow models serve`), and an empty one gets an empty result.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel

from genpipe import models

BATCH = 256  # images generated or reconstructed at once
MAX_IMAGES = 1024  # a request's images at most, unless $GENPIPE_SERVE_MAX_IMAGES says
MAX_IMAGES_ENV = "GENPIPE_SERVE_MAX_IMAGES"


def max_images() -> int:
    """$GENPIPE_SERVE_MAX_IMAGES, a positive integer, else MAX_IMAGES."""
    text = os.environ.get(MAX_IMAGES_ENV, "").strip()
    if not text:
        return MAX_IMAGES
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{MAX_IMAGES_ENV}: expected a positive integer; got {text!r}")
    return int(text)


def _refuse(message: str) -> Exception:
    """An error the scoring server answers with HTTP 400 and this message."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


class GenpipeModel(PythonModel):
    def load_context(self, context) -> None:
        import torch

        weights = Path(context.artifacts["weights"])
        self.kind = json.loads((weights / "config.json").read_text())["model"]
        # the table of models: a model's served code is its own package (genpipe/<model>/)
        self.net = models.get(self.kind).artifact().load_served(weights, torch.device("cpu"))
        self.torch = torch
        self.max_images = max_images()

    # no type hints on predict: MLflow would read them as a schema; the logged signature is it
    def predict(self, context, model_input, params=None):
        from genpipe.images import to_float, to_uint8

        torch = self.torch
        n = len(model_input)
        if n > self.max_images:
            raise _refuse(f"request: expected at most {self.max_images} images "
                          f"(${MAX_IMAGES_ENV}); got {n}")  # fmt: skip
        config = self.net.config()
        out = np.empty((n, config["channels"], config["image_size"], config["image_size"]),
                       dtype=np.uint8)  # fmt: skip
        if n == 0:
            return out
        with torch.inference_mode():
            if self.kind == "gan":
                seeds = np.asarray(model_input["seed"], dtype=np.int64)  # (N,)
                draws = [torch.Generator().manual_seed(int(s)) for s in seeds]
                z = torch.stack([torch.randn(self.net.z_dim, generator=g) for g in draws])
                labels = self._labels(model_input, draws)  # each seed's, after its z
                for start in range(0, n, BATCH):
                    rows = slice(start, start + BATCH)
                    out[rows] = to_uint8(self.net(z[rows], *(label[rows] for label in labels)))
            else:
                images = np.ascontiguousarray(model_input, dtype=np.uint8)
                for start in range(0, n, BATCH):
                    x = torch.from_numpy(images[start : start + BATCH])
                    out[start : start + BATCH] = to_uint8(self.net(to_float(x))[0])  # VAE: mean
        return out  # (N, C, S, S)

    def _labels(self, model_input, draws) -> tuple:
        """A conditional GAN's labels: the "label" column when given, else each seed's own
        draw from the train split's class shares (so a seed is one image wherever it sits
        in a request); () for an unconditional one."""
        torch = self.torch
        classes = getattr(self.net, "num_classes", 0)
        if not classes:
            return ()
        if "label" in getattr(model_input, "columns", ()):
            labels = np.asarray(model_input["label"])
            integral = labels.dtype.kind in "iu"
            bad = (labels[(labels < 0) | (labels >= classes)] if integral else labels).tolist()
            if bad:
                raise _refuse(f"label: expected class indices 0..{classes - 1}; got {bad[0]!r}")
            return (torch.from_numpy(labels.astype(np.int64)),)
        shares = torch.tensor(self.net.class_weights, dtype=torch.float64)
        return (torch.cat([torch.multinomial(shares, 1, generator=g) for g in draws]),)


mlflow.models.set_model(GenpipeModel())
