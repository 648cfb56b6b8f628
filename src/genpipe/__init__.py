"""genpipe: a reproducible DVC + MLflow pipeline for generative image models."""

__version__ = "0.1.0"
