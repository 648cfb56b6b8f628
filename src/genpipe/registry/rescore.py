"""Scoring a registered version again on today's data, so the champion gate compares a new
version with the champion on equal terms when the data or the backbone changed since the
champion was evaluated.

The score is the evaluate stage's own (the model's `evaluate_weights`, from the table of
models: each model's register stage depends on its own package only), with the same
reference, backbone, seed, threads and sample count as the candidate's metrics.json.
The reference, the backbone and the split are loaded on the first call only: a register
whose champion needs no re-score reads none of them.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from genpipe import models, runtime
from genpipe.errors import GenpipeError, exception_text
from genpipe.params.schema import Params
from genpipe.reference import evaluation_inputs

log = logging.getLogger(__name__)


class Scorer:
    """The evaluate stage's metrics of a weights directory, under `params`."""

    def __init__(self, model: str, params: Params) -> None:
        self.model, self.params = model, params
        self.loaded: dict[str, Any] = {}

    def prepare(self) -> None:
        """Today's reference, backbone and split, once: an error here is today's (a broken
        reference), not the champion's."""
        if self.loaded:
            return
        evaluate = self.params.evaluate
        device = runtime.resolve_device(evaluate.device, key="evaluate.device")
        model = models.get(self.model)
        reference, backbone, split = evaluation_inputs(evaluate, device, model.scores_split)
        self.loaded = {
            "device": device,
            "reference": reference,
            "backbone": backbone,
            "split": split,
            "evaluate_weights": model.evaluation().evaluate_weights,
        }

    def __call__(self, weights_dir: Path) -> dict[str, Any]:
        self.prepare()
        evaluate, seed, device = self.params.evaluate, self.params.seed, self.loaded["device"]
        runtime.seed_everything(seed, device, evaluate.cpu_threads)  # as the evaluate stage
        metrics, _ = self.loaded["evaluate_weights"](
            weights_dir, self.loaded["reference"], self.loaded["backbone"], self.loaded["split"],
            evaluate, seed, device,
        )  # fmt: skip
        return metrics


def score_version(
    download: Callable[[Path], Path], score: Callable[[Path], dict[str, Any]]
) -> tuple[dict[str, Any] | None, str]:
    """A registered version's metrics on today's data: its weights directory, fetched by
    `download` into a temporary folder, scored by `score`; and how long that took. (None,
    why) when its files cannot be loaded or scored on today's data (a foreign weights file,
    another image size or channel count). Today's own set-up (the reference, the backbone:
    `score.prepare`) and the server's errors are raised: they are not the version's."""
    if hasattr(score, "prepare"):
        score.prepare()
    with tempfile.TemporaryDirectory(prefix="genpipe-rescore-") as tmp:
        weights = download(Path(tmp))  # an MlflowException: the register pass retries
        start = time.perf_counter()
        try:
            metrics = score(weights)
        except (GenpipeError, OSError, ValueError, KeyError, RuntimeError) as exc:
            # RuntimeError: torch's, for weights of another image size or channel count
            return None, " ".join(exception_text(exc).split())[:300]
    seconds = time.perf_counter() - start
    log.info("re-scored on today's data in %.1f s", seconds)
    return metrics, f"{seconds:.1f} s"
