"""The MLflow pyfunc model of a trained genpipe model, logged as "models from code".

MLflow stores this file with the model and runs it at load time; nothing from the
pipeline's process is pickled. The model carries the genpipe package (code_paths) and
its weights directory (artifact "weights": safetensors + config.json), so
`mlflow.pyfunc.load_model(uri)` works in any process with torch and MLflow installed.

- GAN: `predict(pd.DataFrame({"seed": [0, 1, ...]}))` -> uint8 (N, C, S, S), one image
  per seed, the same image for the same seed.
- Autoencoder: `predict(uint8 array (N, C, S, S))` -> their reconstructions, uint8.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


class GenpipeModel(PythonModel):
    def load_context(self, context) -> None:
        import torch
        from safetensors.torch import load_file

        weights = Path(context.artifacts["weights"])
        config = json.loads((weights / "config.json").read_text())
        self.kind = config["model"]
        if self.kind == "gan":
            from genpipe.models.gan import Generator

            net = Generator(**config["generator"])
            net.load_state_dict(load_file(weights / "generator_ema.safetensors"))
        else:
            from genpipe.models.autoencoder import AutoEncoder

            net = AutoEncoder(**config["autoencoder"])
            net.load_state_dict(load_file(weights / "autoencoder.safetensors"))
        self.net = net.eval().requires_grad_(False)
        self.torch = torch

    # no type hints on predict: MLflow would read them as a schema; the logged signature is it
    def predict(self, context, model_input, params=None):
        from genpipe.train.common import to_uint8

        torch = self.torch
        with torch.inference_mode():
            if self.kind == "gan":
                seeds = np.asarray(model_input["seed"], dtype=np.int64)  # (N,)
                z = torch.stack([
                    torch.randn(self.net.z_dim, generator=torch.Generator().manual_seed(int(s)))
                    for s in seeds
                ])  # fmt: skip
                out = self.net(z)
            else:
                x = torch.from_numpy(np.ascontiguousarray(model_input, dtype=np.uint8))
                out = self.net(x.float().div(127.5).sub(1.0))[0]  # a VAE decodes its mean
        return to_uint8(out)  # (N, C, S, S)


mlflow.models.set_model(GenpipeModel())
