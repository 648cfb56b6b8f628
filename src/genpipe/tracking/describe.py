"""A training run's page in the MLflow UI: its description (Markdown, MLflow's
`mlflow.note.content` tag), written when training starts, with how the model did added by
each evaluation (replacing the last)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from genpipe.tracking.datasets import DataInput

TAG_NOTE = "mlflow.note.content"  # the run page's description, Markdown
EVALUATED = "\n\n**Evaluated:** "  # where a run's description says how it did

# the params a run's description names, beside train.batch_size and the seed (all of them
# are on the run's Parameters tab)
KEY_PARAMS = {
    "gan": ("steps", "loss", "lr_g", "lr_d", "width", "z_dim", "conditional"),
    "autoencoder": ("kind", "steps", "lr", "width", "latent_dim"),
}


def describe_training(model: str, params: dict[str, Any], dataset: DataInput) -> str:
    """A run's description (Markdown) at the start: what it trains, on what, with which key
    params. `params` is what the run logs (lineage.run_params)."""
    profile = dataset.profile
    shape = "×".join(str(n) for n in profile.get("image_shape", []))
    key = [f"`{model}.{k}={params[model][k]}`" for k in KEY_PARAMS.get(model, ())
           if k in params.get(model, {})]  # fmt: skip
    key += [f"`train.batch_size={params['train']['batch_size']}`", f"`seed={params['seed']}`"]
    return (
        f"**{model}** trained on **{dataset.name}**: {profile.get('images')} train images "
        f"of {shape}, {profile.get('num_classes')} classes (DVC digest `{dataset.digest}`)."
        f"\n\nKey params: {', '.join(key)}."
    )


def with_evaluation(note: str, summary: str) -> str:
    """The run's description `note` with `summary` (how the model did) as its last part, in
    place of an earlier evaluation's."""
    return note.split(EVALUATED, 1)[0] + EVALUATED + summary
