"""Every path the DVC stages read and write, relative to the repo root (where stages run).
dvc.yaml names the same paths; tests/test_dvc_deps.py checks that the two agree."""

from __future__ import annotations

from pathlib import Path

PARAMS = Path("params.yaml")
PIPELINE = Path("pipeline")  # the stages' scripts
PARAMS_CHECK = Path("reports/params/check.json")  # the params stage: params.yaml is valid
PREPARED = Path("data/prepared")
VALIDATION = Path("reports/validation")
VALIDATION_SUMMARY = VALIDATION / "summary.json"
DATA_DOCS = VALIDATION / "data_docs"
REFERENCE = Path("data/reference")
REFERENCE_INFO = REFERENCE / "reference.json"  # the backbone, counts and the floor


def weights_dir(model: str) -> Path:
    """models/<model>/weights: safetensors + config.json, cached by DVC."""
    return Path("models") / model / "weights"


def run_record(model: str) -> Path:
    """models/<model>/mlflow_run.json: the training run's id, not cached."""
    return Path("models") / model / "mlflow_run.json"


def checkpoint(model: str) -> Path:
    return Path("checkpoints") / model / "checkpoint.pt"


def reports(model: str) -> Path:
    """reports/<model>/: train_log.csv, samples.png, metrics.json, eval_grid.png, registry.json."""
    return Path("reports") / model


def train_log(model: str) -> Path:
    """The training curve, one row per train.log_every steps: DVC plots, not cached."""
    return reports(model) / "train_log.csv"


def samples(model: str) -> Path:
    """The train stage's grid: the GAN's samples from fixed noise, the autoencoder's
    reconstructions."""
    return reports(model) / "samples.png"


def metrics(model: str) -> Path:
    """The evaluate stage's DVC metrics."""
    return reports(model) / "metrics.json"


def eval_grid(model: str) -> Path:
    """The evaluate stage's grid: samples, or test images above their reconstructions."""
    return reports(model) / "eval_grid.png"


def tail_grid(model: str) -> Path:
    """The evaluate stage's other grid, its figures' tail: the GAN's samples nearest the
    train images, each above its nearest (the memorisation check); the autoencoder's worst
    reconstructed test images above their reconstructions."""
    return reports(model) / "tail_grid.png"


def registry_record(model: str) -> Path:
    """The register stage's version, aliases and decision: not cached."""
    return reports(model) / "registry.json"


def registry_history(model: str) -> Path:
    """Each alias change register made here, a JSON line each: not cached."""
    return reports(model) / "registry_history.jsonl"
