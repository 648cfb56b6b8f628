"""Recipes across seeds: a model's finished runs grouped by recipe (their params without the
seeds, the `genpipe.recipe` tag) and data, with the mean, the standard deviation and the
count of each evaluation figure, and whether two recipes differ by more than their spread.

Whether a params change is better is a question about recipes, not runs: one draw of each
says little when the training seed alone moves the FID by 10%. Queue seeds with
`dvc exp run --queue -S 'train.seed=range(0,3)'`, then `genpipe compare gan`.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

Z = 2.0  # two recipes differ when their means are further apart than Z standard errors
HIGHER_IS_BETTER = {"precision", "recall", "psnr", "ssim", "density", "coverage"}


@dataclass
class Recipe:
    recipe: str  # the genpipe.recipe tag
    data_hash: str
    runs: list[str] = field(default_factory=list)  # run names
    values: dict[str, list[float]] = field(default_factory=dict)  # metric -> one a run
    params: dict[str, str] = field(default_factory=dict)  # the first run's

    def n(self, metric: str) -> int:
        return len(self.values.get(metric, []))

    def mean(self, metric: str) -> float:
        return statistics.fmean(self.values[metric])

    def std(self, metric: str) -> float | None:
        """The sample standard deviation over its runs; None for a single run."""
        values = self.values.get(metric, [])
        return statistics.stdev(values) if len(values) > 1 else None


def group(runs: list[dict[str, Any]], metrics: tuple[str, ...]) -> list[Recipe]:
    """Runs ({"name", "recipe", "data_hash", "metrics", "params"}) grouped by recipe and
    data; a run without a recipe tag (from before it) or without the first metric is left
    out (one without another metric, from before it was measured, counts for the ones it
    has). Groups come in order of their first metric's mean, best first."""
    groups: dict[tuple[str, str], Recipe] = {}
    for run in runs:
        if not run.get("recipe") or metrics[0] not in run["metrics"]:
            continue
        key = (run["recipe"], run.get("data_hash", ""))
        recipe = groups.setdefault(key, Recipe(*key, params=dict(run.get("params", {}))))
        recipe.runs.append(run["name"])
        for metric in metrics:
            if metric in run["metrics"]:
                recipe.values.setdefault(metric, []).append(float(run["metrics"][metric]))
    sign = -1 if metrics[0] in HIGHER_IS_BETTER else 1
    return sorted(groups.values(), key=lambda r: sign * r.mean(metrics[0]))


def differ(a: Recipe, b: Recipe, metric: str) -> bool | None:
    """Whether the means differ by more than Z standard errors of their difference (the
    runs' spreads over their counts); None when either has a single run (no spread)."""
    sa, sb = a.std(metric), b.std(metric)
    if sa is None or sb is None:
        return None
    error = math.sqrt(sa**2 / a.n(metric) + sb**2 / b.n(metric))
    return abs(a.mean(metric) - b.mean(metric)) > Z * error


SEEDS = ("seed", "train.seed")  # in every recipe's runs, one value or another: not a recipe's


def varying_params(recipes: list[Recipe]) -> list[str]:
    """The param keys whose values differ between recipes (what sets them apart); never the
    seeds, which differ within a recipe (its params are its first run's)."""
    keys = sorted({k for r in recipes for k in r.params} - set(SEEDS))
    return [k for k in keys if len({r.params.get(k) for r in recipes}) > 1]


def table(recipes: list[Recipe], metrics: tuple[str, ...]) -> str:
    """Recipes as a plain-text table: id, data, runs, each metric as mean ± std, the params
    that vary; then each recipe against the best on the first metric."""
    if not recipes:
        return "no finished runs with a recipe tag and these metrics"

    def spread(recipe: Recipe, metric: str) -> str:
        if not recipe.n(metric):
            return "-"
        std = recipe.std(metric)
        return f"{recipe.mean(metric):.4g}" + (f" ± {std:.2g}" if std is not None else "")

    keys = varying_params(recipes)
    header = ["recipe", "data", "n", *metrics, *keys]
    rows = [header] + [
        [r.recipe, r.data_hash[:8], str(len(r.runs)), *(spread(r, m) for m in metrics),
         *(r.params.get(k, "-") for k in keys)]
        for r in recipes
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]  # fmt: skip
    best, metric = recipes[0], metrics[0]
    for other in recipes[1:]:
        verdict = differ(best, other, metric)
        said = {True: f"differs by more than {Z:g} standard errors",
                False: "within the spread: not a difference these runs show",
                None: "no spread (a single run): queue more seeds"}[verdict]  # fmt: skip
        lines.append(f"{best.recipe} vs {other.recipe} on {metric}: "
                     f"{best.mean(metric):.4g} vs {other.mean(metric):.4g}, {said}")  # fmt: skip
    return "\n".join(lines)
