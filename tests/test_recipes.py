"""Recipes across seeds: the recipe id, grouping, spreads and the verdict between recipes."""

from __future__ import annotations

import json

import pytest

from genpipe import recipes
from genpipe.params.schema import Params
from genpipe.tracking.lineage import recipe_id, run_params

PARAMS = Params().model_dump(mode="json", by_alias=True)


def params_with(**changes) -> dict:
    params = json.loads(json.dumps(PARAMS))
    for key, value in changes.items():
        section, _, name = key.rpartition("__")
        (params[section] if section else params)[name] = value
    return run_params(params, "gan")


def test_the_recipe_id_ignores_the_seeds_and_nothing_else():
    base = recipe_id(params_with())
    assert recipe_id(params_with(seed=7)) == base
    assert recipe_id(params_with(train__seed=3)) == base
    for change in ({"gan__lr_g": 3e-4}, {"train__batch_size": 64}, {"evaluate__pr_k": 5},
                   {"data__image_size": 16}, {"cpu_kernels": "native"}):  # fmt: skip
        assert recipe_id(params_with(**change)) != base, change


def run(name: str, recipe: str, fid: float, lr: str = "0.0002", data: str = "d1") -> dict:
    return {"name": name, "recipe": recipe, "data_hash": data, "params": {"gan.lr_g": lr,
            "seed": name[-1]}, "metrics": {"fid": fid, "precision": 1 / fid}}  # fmt: skip


def test_runs_group_by_recipe_and_data_with_mean_std_and_count():
    runs = [run("a0", "A", 10.0), run("a1", "A", 12.0), run("a2", "A", 11.0),
            run("b0", "B", 8.0, "0.0004"), run("b1", "B", 8.4, "0.0004"),
            run("c0", "A", 30.0, data="d2"),  # the same recipe on other data: apart
            {"name": "old", "recipe": None, "metrics": {"fid": 1.0}},  # before recipe tags
            {"name": "unevaluated", "recipe": "A", "data_hash": "d1", "metrics": {}}]  # fmt: skip
    groups = recipes.group(runs, ("fid",))
    assert [(g.recipe, g.data_hash, len(g.runs)) for g in groups] == [
        ("B", "d1", 2), ("A", "d1", 3), ("A", "d2", 1)]  # fmt: skip
    b, a, lone = groups
    assert a.mean("fid") == pytest.approx(11.0) and a.std("fid") == pytest.approx(1.0)
    assert lone.std("fid") is None
    assert recipes.differ(b, a, "fid") is True  # 8.2 vs 11, spreads 0.28 and 1
    assert recipes.differ(b, lone, "fid") is None  # a single run: no spread
    # higher is better for precision: the best recipe comes first
    assert recipes.group(runs, ("precision",))[0].recipe == "B"


def test_close_recipes_are_within_the_spread_and_the_table_says_so():
    runs = [run("a0", "A", 10.0), run("a1", "A", 12.0), run("b0", "B", 10.5, "0.0004"),
            run("b1", "B", 11.9, "0.0004")]  # fmt: skip
    groups = recipes.group(runs, ("fid",))
    assert recipes.differ(*groups, "fid") is False
    text = recipes.table(groups, ("fid",))
    assert "11 ± 1.4" in text and "11.2 ± 0.99" in text
    assert "gan.lr_g" in text and "seed" not in text.splitlines()[0]  # what varies: lr_g
    assert "within the spread" in text.splitlines()[-1]


def test_runs_from_before_a_metric_count_for_the_ones_they_have():
    from genpipe.recipes import group, table

    runs = [{"name": "old", "recipe": "r1", "data_hash": "d", "metrics": {"fid": 2.0}},
            {"name": "new", "recipe": "r1", "data_hash": "d",
             "metrics": {"fid": 1.0, "density": 0.9}},
            {"name": "none", "recipe": "r1", "data_hash": "d", "metrics": {"density": 1.0}}]
    [recipe] = group(runs, ("fid", "density"))
    assert recipe.runs == ["old", "new"] and recipe.n("fid") == 2 and recipe.n("density") == 1
    assert "1.5 ± 0.71  0.9" in table([recipe], ("fid", "density"))
    [bare] = group(runs[:1], ("fid", "density"))
    assert table([bare], ("fid", "density")).splitlines()[1].split()[3:] == ["2", "-"]


def test_the_seeds_are_never_what_sets_recipes_apart():
    """Each recipe's params are its first run's: two recipes whose first runs had other
    seeds still differ only in what the table names, lr_g here."""
    runs = [run("a0", "A", 10.0), run("a1", "A", 12.0), run("b1", "B", 10.5, "0.0004"),
            run("b0", "B", 11.9, "0.0004")]  # fmt: skip
    groups = recipes.group(runs, ("fid",))
    assert recipes.varying_params(groups) == ["gan.lr_g"]
    header = recipes.table(groups, ("fid",)).splitlines()[0].split()
    assert header[-1] == "gan.lr_g" and "seed" not in header
