"""Data validation: a Great Expectations suite over the manifest, plus the array
checks GX cannot express.

GX validates three tables derived from the prepared dataset:

- ``manifest``: one row per image (columns, types, nulls, labels, splits,
  per-image pixel statistics, duplicates);
- ``splits``: one row per split (image count, missing classes, class imbalance);
- ``images_by_hash``: one row per distinct image (how many splits it is in).

Every check has a stable id; ``summary.json`` maps each id to pass/fail next to
the counts, so `dvc metrics diff` shows what changed.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from genpipe.data.canonical import MANIFEST_COLUMNS, SPLITS, Prepared, image_sha1
from genpipe.fileio import replace_dir
from genpipe.params.schema import DataParams, ValidateParams

log = logging.getLogger(__name__)

# dtypes accepted for the numeric families of the manifest: numpy's by name, pandas'
# nullable ones by class name (GX looks up getattr(pandas, name); "Int64" matches nothing)
TYPE_NAMES = {"int64": ["int64", "Int64Dtype"], "float64": ["float64", "Float64Dtype"]}


# the columns that name a row of each table in failure details: an image by its manifest
# index and its source (the file, for the folder source)
ROW_KEYS = {"manifest": ("index", "source"), "splits": ("split",), "images_by_hash": ("sha1",)}
SHOWN_ROWS = 5


@dataclass(frozen=True)
class Check:
    id: str  # stable key in summary.json
    passed: bool
    detail: str  # what was expected and what was found, for people


@dataclass
class ValidationReport:
    checks: list[Check] = field(default_factory=list)
    counts: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [check for check in self.checks if not check.passed]

    def summary(self) -> dict[str, Any]:
        """Deterministic: counts and pass/fail per check, no timestamps or paths."""
        return {
            "passed": self.passed,
            **self.counts,
            "checks": {check.id: check.passed for check in self.checks},
            "failed": [check.id for check in self.failures],
        }


def validate_dataset(
    prepared: Prepared,
    data: DataParams,
    rules: ValidateParams,
    docs_dir: Path | None = None,
) -> ValidationReport:
    """Run the array checks, then the GX suite; build Data Docs into `docs_dir`."""
    report = ValidationReport()
    report.checks += array_checks(prepared, data)
    tables = derived_tables(prepared.manifest, prepared.info.get("num_classes", 0))
    checks = run_expectations(tables, expectations(prepared, rules), docs_dir)
    report.checks += [_name_copies(check, prepared.manifest) for check in checks]
    report.counts = counts(tables, rules)
    return report


def array_checks(prepared: Prepared, data: DataParams) -> list[Check]:
    images, manifest = prepared.images, prepared.manifest
    want = (data.channels, data.image_size, data.image_size)
    checks = [
        Check("images.dtype", images.dtype == np.uint8, f"expected uint8; found {images.dtype}"),
        Check(
            "images.shape",
            images.ndim == 4 and tuple(images.shape[1:]) == want,
            f"expected N x {' x '.join(map(str, want))} (N x C x H x W, from data.channels and "
            f"data.image_size); found {' x '.join(map(str, images.shape))}",
        ),
        Check(
            "images.rows",
            len(images) == len(manifest),
            f"expected one manifest row per image ({len(images)}); found {len(manifest)} rows",
        ),
    ]
    if all(check.passed for check in checks) and "sha1" in manifest:
        differ = np.flatnonzero(np.array(image_sha1(images)) != manifest["sha1"].to_numpy())
        checks.append(
            Check(
                "images.sha1",
                len(differ) == 0,
                f"expected the manifest's sha1 to match the pixels; {len(differ)} images differ"
                + (f" (e.g. {_name_rows(manifest.iloc[differ])})" if len(differ) else ""),
            )
        )
    return checks


def _name_rows(rows: pd.DataFrame) -> str:
    """'index 3 (cats/a.png), index 9 (...)' for the first few rows of the manifest."""
    names = []
    for _, row in rows.head(SHOWN_ROWS).iterrows():
        source = f" ({row['source']})" if "source" in row else ""
        names.append(f"index {row.get('index', row.name)}{source}")
    return ", ".join(names)


def _name_copies(check: Check, manifest: pd.DataFrame) -> Check:
    """A failed duplicates or leakage check, its detail extended with the images that are
    copies of one another (GX names no rows for them)."""
    if check.passed or check.id not in {"images.duplicates", "images.no_leakage"}:
        return check
    if not {"sha1", "split"} <= set(manifest.columns):
        return check
    if check.id == "images.duplicates":
        copies = manifest[manifest.duplicated("sha1", keep=False)]
    else:
        copies = manifest[manifest.groupby("sha1")["split"].transform("nunique") > 1]
    shown = [
        f"[{_name_rows(copies[copies['sha1'] == h])}]" for h in sorted(set(copies["sha1"]))[:3]
    ]
    if not shown:
        return check
    return Check(check.id, check.passed, f"{check.detail}; identical images: {', '.join(shown)}")


def derived_tables(manifest: pd.DataFrame, num_classes: int) -> dict[str, pd.DataFrame]:
    """The tables GX validates: the manifest, one row per split, one row per distinct image."""
    rows = []
    for split in SPLITS:
        part = manifest[manifest["split"] == split] if "split" in manifest else manifest.iloc[:0]
        row = {"split": split, "images": len(part), "missing_classes": 0, "imbalance": 1.0}
        if num_classes and "label" in manifest:
            per_class = part["label"].value_counts().reindex(range(num_classes), fill_value=0)
            present = per_class[per_class > 0]
            row["missing_classes"] = int((per_class == 0).sum())
            row["imbalance"] = float(present.max() / present.min()) if len(present) else 1.0
        rows.append(row)
    if {"sha1", "split"} <= set(manifest.columns):
        by_hash = manifest.groupby("sha1", sort=True)["split"].agg(["nunique", "size"])
        by_hash = by_hash.rename(columns={"nunique": "splits", "size": "copies"}).reset_index()
    else:
        by_hash = pd.DataFrame({"sha1": [], "splits": [], "copies": []})
    return {"manifest": manifest, "splits": pd.DataFrame(rows), "images_by_hash": by_hash}


def expectations(prepared: Prepared, rules: ValidateParams) -> dict[str, list[tuple[str, Any]]]:
    """(check id, GX expectation) per table."""
    import great_expectations.expectations as gxe

    num_classes = prepared.info.get("num_classes", 0)
    labels = list(range(num_classes)) if num_classes else [-1]
    manifest: list[tuple[str, Any]] = [
        (
            "manifest.columns",
            gxe.ExpectTableColumnsToMatchOrderedList(column_list=list(MANIFEST_COLUMNS)),
        ),
    ]
    for column, family in MANIFEST_COLUMNS.items():
        # string columns are handed to GX as object dtype, so each value's type is checked
        type_check = (
            gxe.ExpectColumnValuesToBeOfType(column=column, type_="str")
            if family == "str"
            else gxe.ExpectColumnValuesToBeInTypeList(column=column, type_list=TYPE_NAMES[family])
        )
        manifest += [
            (f"manifest.{column}.type", type_check),
            (f"manifest.{column}.not_null", gxe.ExpectColumnValuesToNotBeNull(column=column)),
        ]
    manifest += [
        ("manifest.index.unique", gxe.ExpectColumnValuesToBeUnique(column="index")),
        (
            "manifest.split.values",
            gxe.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)),
        ),
        (
            "manifest.label.values",
            gxe.ExpectColumnValuesToBeInSet(column="label", value_set=labels),
        ),
        (
            "manifest.sha1.format",
            gxe.ExpectColumnValuesToMatchRegex(column="sha1", regex=r"^[0-9a-f]{40}$"),
        ),
        (
            "pixels.mean.range",
            gxe.ExpectColumnValuesToBeBetween(column="mean", min_value=0, max_value=255),
        ),
        (
            "pixels.min.range",
            gxe.ExpectColumnValuesToBeBetween(column="min", min_value=0, max_value=255),
        ),
        (
            "pixels.max.range",
            gxe.ExpectColumnValuesToBeBetween(column="max", min_value=0, max_value=255),
        ),
        (
            "pixels.min_le_mean",
            gxe.ExpectColumnPairValuesAToBeGreaterThanB(
                column_A="mean", column_B="min", or_equal=True
            ),
        ),
        (
            "pixels.mean_le_max",
            gxe.ExpectColumnPairValuesAToBeGreaterThanB(
                column_A="max", column_B="mean", or_equal=True
            ),
        ),
        (
            "pixels.not_blank",
            gxe.ExpectColumnValuesToBeBetween(
                column="std", min_value=rules.min_image_std, max_value=128
            ),
        ),
        (
            "images.duplicates",
            gxe.ExpectColumnProportionOfUniqueValuesToBeBetween(
                column="sha1", min_value=1 - rules.max_duplicate_fraction
            ),
        ),
    ]
    splits = [
        ("splits.present", gxe.ExpectColumnValuesToBeBetween(column="images", min_value=1)),
        (
            "splits.min_images",
            gxe.ExpectColumnValuesToBeBetween(
                column="images", min_value=rules.min_images_per_split
            ),
        ),
    ]
    if num_classes:
        splits += [
            (
                "classes.present",
                gxe.ExpectColumnValuesToBeBetween(column="missing_classes", max_value=0),
            ),
            (
                "classes.balance",
                gxe.ExpectColumnValuesToBeBetween(
                    column="imbalance", min_value=1, max_value=rules.max_class_imbalance
                ),
            ),
        ]
    by_hash = [
        # at most one split: an image whose split is null is in none, which is not leakage
        ("images.no_leakage", gxe.ExpectColumnValuesToBeBetween(column="splits", max_value=1)),
    ]
    return {"manifest": manifest, "splits": splits, "images_by_hash": by_hash}


def run_expectations(
    tables: dict[str, pd.DataFrame],
    suites: dict[str, list[tuple[str, Any]]],
    docs_dir: Path | None,
) -> list[Check]:
    """Validate each table with its suite in an ephemeral GX context; optionally build Data Docs."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    import great_expectations as gx

    context = _ephemeral_context()
    staging = None
    if docs_dir is not None:
        Path(docs_dir).parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".data_docs.", dir=Path(docs_dir).parent))
        context.add_data_docs_site(
            "genpipe",
            {
                "class_name": "SiteBuilder",
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(staging.resolve()),
                },
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            },
        )
    source = context.data_sources.add_pandas("genpipe")
    results: dict[str, Check] = {}
    try:
        for table, entries in suites.items():
            batch = source.add_dataframe_asset(table).add_batch_definition_whole_dataframe(table)
            suite = context.suites.add(gx.ExpectationSuite(name=table))
            for check_id, expectation in entries:
                expectation.meta = {"check": check_id}
                suite.add_expectation(expectation)
            definition = context.validation_definitions.add(
                gx.ValidationDefinition(data=batch, suite=suite, name=table)
            )
            results.update(_run_checkpoint(context, definition, table, tables[table], staging))
        if staging is not None:
            replace_dir(staging, Path(docs_dir))
    finally:
        if staging is not None and staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    # in suite order, so the summary reads the same every time
    return [results[check_id] for entries in suites.values() for check_id, _ in entries]


def _ephemeral_context() -> Any:
    """A GX context in memory: no project directory, no analytics, no progress bars."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        # no throw-away docs site in /tmp: the only site is the one the caller adds
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        progress_bars=ProgressBarsConfig(globally=False),
        analytics_enabled=False,
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def _run_checkpoint(
    context: Any, definition: Any, table: str, frame: pd.DataFrame, staging: Path | None
) -> dict[str, Check]:
    """Run one table's validation (building its Data Docs into `staging`); check id -> Check."""
    import great_expectations as gx

    actions = [gx.checkpoint.UpdateDataDocsAction(name="docs")] if staging else []
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name=f"genpipe-{table}",
            validation_definitions=[definition],
            actions=actions,
            # failures name the rows by their keys (image index and source, split, sha1)
            result_format={
                "result_format": "SUMMARY",
                "unexpected_index_column_names": [k for k in ROW_KEYS[table] if k in frame],
            },
        )
    )
    # pandas >= 3 reads strings as its `str` dtype, which GX's type checks do not know
    frame = frame.astype({c: object for c in frame if pd.api.types.is_string_dtype(frame[c])})
    outcome = checkpoint.run(batch_parameters={"dataframe": frame})
    return {
        result.expectation_config.meta["check"]: Check(
            result.expectation_config.meta["check"], bool(result.success),
            _describe(result, table),
        )
        for run in outcome.run_results.values()
        for result in run.results
    }  # fmt: skip


def _describe(result: Any, table: str) -> str:
    """'<expectation> on <table>.<column>: found <observed>' from a GX result."""
    config = result.expectation_config
    kwargs = {k: v for k, v in config.kwargs.items() if k not in {"batch_id", "column"}}
    column = config.kwargs.get("column")
    target = f"{table}.{column}" if column else table
    expected = ", ".join(f"{k}={v}" for k, v in kwargs.items())
    res = result.result or {}
    if result.exception_info and result.exception_info.get("raised_exception"):
        found = f"error: {result.exception_info.get('exception_message')}"
    elif res.get("unexpected_count"):
        rows = [_row_name(table, row) for row in res.get("partial_unexpected_index_list") or []]
        values = res.get("partial_unexpected_list") or []
        examples = ", ".join(
            f"{row}: {value}" for row, value in zip(rows[:SHOWN_ROWS], values, strict=False)
        )
        found = f"{res['unexpected_count']} of {res.get('element_count')} rows fail"
        found += f" (e.g. {examples})" if examples else ""
    else:
        found = f"observed {res.get('observed_value')}"
    return f"{config.type} on {target} ({expected}): {found}"


def _row_name(table: str, row: dict[str, Any]) -> str:
    """'index 720 (7/ink.png)' for an image, 'split test', 'sha1 ...' for the other tables."""
    key, *more = ROW_KEYS[table]
    extra = ", ".join(str(row[k]) for k in more if k in row)
    return f"{key} {row.get(key)}" + (f" ({extra})" if extra else "")


def counts(tables: dict[str, pd.DataFrame], rules: ValidateParams) -> dict[str, Any]:
    manifest, splits, by_hash = tables["manifest"], tables["splits"], tables["images_by_hash"]
    split_images = dict(zip(splits["split"], splits["images"].astype(int), strict=True))
    has = set(manifest.columns)
    return {
        "images": {"total": len(manifest), **split_images},
        "duplicates": int((by_hash["copies"] - 1).sum()) if len(by_hash) else 0,
        "leaked": int((by_hash["splits"] > 1).sum()) if len(by_hash) else 0,
        "blank_images": (
            int((pd.to_numeric(manifest["std"], errors="coerce") < rules.min_image_std).sum())
            if "std" in has
            else 0
        ),
        "class_imbalance": {
            row.split: round(float(row.imbalance), 6) for row in splits.itertuples()
        },
    }
