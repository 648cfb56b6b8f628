"""validate_dataset(): each check fires on the defect it names, and only there.

Every dataset is 200 noise images of 8x8 grey, 10 classes; a test breaks one thing
and checks that exactly the expected check ids fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from genpipe import yamlio
from genpipe.data.canonical import (
    MANIFEST_COLUMNS,
    Prepared,
    build_manifest,
    write_prepared,
)
from genpipe.params.schema import DataParams, ValidateParams
from genpipe.validation import ValidationReport, array_checks, validate_dataset

from builders import random_images

STAGE = Path(__file__).resolve().parents[1] / "pipeline" / "validate.py"
N = 200
CLASSES = 10
DATA = DataParams(image_size=8, channels=1)
RULES = ValidateParams(min_images_per_split=5, max_class_imbalance=2.0, max_duplicate_fraction=0.05)
CHECK_IDS = {
    "images.dtype",
    "images.shape",
    "images.rows",
    "images.sha1",
    "manifest.columns",
    *(f"manifest.{column}.{what}" for column in MANIFEST_COLUMNS for what in ("type", "not_null")),
    "manifest.index.unique",
    "manifest.split.values",
    "manifest.label.values",
    "manifest.sha1.format",
    "pixels.mean.range",
    "pixels.min.range",
    "pixels.max.range",
    "pixels.min_le_mean",
    "pixels.mean_le_max",
    "pixels.not_blank",
    "images.duplicates",
    "splits.present",
    "splits.min_images",
    "classes.present",
    "classes.balance",
    "images.no_leakage",
}


def arrays(n: int = N) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images, labels, splits): (n, 1, 8, 8) uint8 noise, label i % 10, test where i % 40 < 10.

    Each class gets n/40 test images and 3n/40 train images: balanced in both splits.
    """
    i = np.arange(n)
    return random_images(n, 1, 8), i % CLASSES, np.where(i % 40 < 10, "test", "train")


def prepare(images: np.ndarray, labels: np.ndarray, splits: np.ndarray) -> Prepared:
    sources = [f"{label}/{i}.png" for i, label in enumerate(labels)]  # as a folder names them
    manifest = build_manifest(images, labels, splits, sources)
    return Prepared(images=images, manifest=manifest, info={"num_classes": CLASSES})


def summary(prepared: Prepared, rules: ValidateParams = RULES, data: DataParams = DATA) -> dict:
    return validate_dataset(prepared, data, rules, docs_dir=None).summary()


def rules_with(**changes) -> ValidateParams:
    return ValidateParams(**{**RULES.model_dump(), **changes})


def assert_failed(result: dict, *check_ids: str) -> None:
    """Exactly these checks failed; every other check ran and passed."""
    assert result["passed"] is False
    for check_id in check_ids:
        assert result["checks"][check_id] is False, check_id
    assert sorted(result["failed"]) == sorted(check_ids)


def test_clean_dataset_passes_every_check():
    result = summary(prepare(*arrays()))

    assert set(result["checks"]) == CHECK_IDS
    assert all(result["checks"].values())
    assert result["passed"] is True
    assert result["failed"] == []
    assert result["images"] == {"total": N, "train": 150, "test": 50}
    assert (result["duplicates"], result["leaked"], result["blank_images"]) == (0, 0, 0)
    assert result["class_imbalance"] == {"train": 1.0, "test": 1.0}


@pytest.mark.parametrize("label", [CLASSES, -1])
def test_label_out_of_range(label):
    images, labels, splits = arrays()
    labels[0] = label

    assert_failed(summary(prepare(images, labels, splits)), "manifest.label.values")


def test_constant_images_are_blank():
    images, labels, splits = arrays()
    images[0] = 0
    images[1] = 128

    report = validate_dataset(prepare(images, labels, splits), DATA, RULES, docs_dir=None)
    result = report.summary()

    assert_failed(result, "pixels.not_blank")
    assert result["blank_images"] == 2
    # the failure names the images by their manifest index and their source file
    (detail,) = [check.detail for check in report.failures]
    assert "2 of 200 rows fail (e.g. index 0 (0/0.png): 0.0, index 1 (1/1.png): 0.0)" in detail


def test_same_image_in_train_and_test_is_leakage():
    images, labels, splits = arrays()
    assert (splits[0], splits[10]) == ("test", "train")
    images[10] = images[0]

    report = validate_dataset(prepare(images, labels, splits), DATA, RULES, docs_dir=None)
    result = report.summary()

    assert_failed(result, "images.no_leakage")
    assert (result["leaked"], result["duplicates"]) == (1, 1)
    (detail,) = [check.detail for check in report.failures]
    assert detail.endswith("identical images: [index 0 (0/0.png), index 10 (0/10.png)]")


# max_duplicate_fraction 0.05 of 200 images: up to 10 copies pass
@pytest.mark.parametrize(("copies", "failed"), [(4, []), (12, ["images.duplicates"])])
def test_duplicates_threshold(copies, failed):
    images, labels, splits = arrays()
    train = np.flatnonzero(splits == "train")
    images[train[1 : copies + 1]] = images[train[0]]  # within train: no leakage

    result = summary(prepare(images, labels, splits))

    assert result["failed"] == failed
    assert result["checks"]["images.duplicates"] is (failed == [])
    assert (result["duplicates"], result["leaked"]) == (copies, 0)


def test_duplicate_images_failure_names_their_source_files():
    images, labels, splits = arrays()
    train = np.flatnonzero(splits == "train")
    images[train[1:13]] = images[train[0]]  # 12 copies of one image: over 5% of 200

    report = validate_dataset(prepare(images, labels, splits), DATA, RULES, docs_dir=None)

    (check,) = report.failures
    assert check.id == "images.duplicates"
    first = ", ".join(f"index {i} ({i % CLASSES}/{i}.png)" for i in train[:5])
    assert f"identical images: [{first}]" in check.detail


def test_pixels_changed_failure_names_the_source_file():
    prepared, data = _pixels_changed()

    (check,) = [c for c in array_checks(prepared, data) if not c.passed]

    assert check.detail.endswith("1 images differ (e.g. index 3 (3/3.png))")


def test_class_imbalance_within_a_split():
    images, labels, splits = arrays()
    ones_in_train = np.flatnonzero((splits == "train") & (labels == 1))
    labels[ones_in_train[:10]] = 0  # train: 25 of class 0, 5 of class 1, 15 of the rest

    result = summary(prepare(images, labels, splits))

    assert_failed(result, "classes.balance")
    assert result["class_imbalance"] == {"train": 5.0, "test": 1.0}


def test_class_missing_from_test_split():
    images, labels, splits = arrays()
    keep = ~((splits == "test") & (labels == 9))

    result = summary(prepare(images[keep], labels[keep], splits[keep]))

    assert_failed(result, "classes.present")
    assert result["images"]["test"] == 45


def test_too_few_images_in_a_split():
    result = summary(prepare(*arrays()), rules=rules_with(min_images_per_split=60))

    assert_failed(result, "splits.min_images")  # test has 50, train 150


def test_empty_test_split():
    images, labels, _ = arrays()
    splits = np.full(N, "train")

    result = summary(prepare(images, labels, splits))

    # no test images also means every class is missing from test
    assert_failed(result, "splits.present", "splits.min_images", "classes.present")
    assert result["images"] == {"total": N, "train": N, "test": 0}


def _wrong_dtype(dtype):
    def build() -> tuple[Prepared, DataParams]:
        images, labels, splits = arrays()
        return prepare(images.astype(dtype), labels, splits), DATA

    return build


def _wrong_size() -> tuple[Prepared, DataParams]:
    return prepare(*arrays()), DataParams(image_size=16, channels=1)


def _wrong_channels() -> tuple[Prepared, DataParams]:
    return prepare(*arrays()), DataParams(image_size=8, channels=3)


def _row_missing() -> tuple[Prepared, DataParams]:
    prepared = prepare(*arrays())
    return Prepared(prepared.images, prepared.manifest.iloc[:-1], prepared.info), DATA


def _pixels_changed() -> tuple[Prepared, DataParams]:
    prepared = prepare(*arrays())
    images = prepared.images.copy()
    images[3, 0, 0, 0] ^= 1  # one bit: the manifest's sha1 no longer matches
    return Prepared(images, prepared.manifest, prepared.info), DATA


def test_wrong_dtype_fails_only_the_dtype_check():
    prepared, data = _wrong_dtype(np.uint16)()

    assert_failed(summary(prepared, data=data), "images.dtype")


@pytest.mark.parametrize(
    ("build", "check_id"),
    [
        (_wrong_dtype(np.uint16), "images.dtype"),
        (_wrong_dtype(np.float32), "images.dtype"),
        (_wrong_size, "images.shape"),
        (_wrong_channels, "images.shape"),
        (_row_missing, "images.rows"),
        (_pixels_changed, "images.sha1"),
    ],
    ids=["uint16", "float32", "size", "channels", "rows", "sha1"],
)
def test_array_checks(build, check_id):
    # the array checks alone (no GX run): the other array checks still pass
    prepared, data = build()

    assert_failed(ValidationReport(checks=array_checks(prepared, data)).summary(), check_id)


@pytest.mark.parametrize(
    ("change", "failed"),
    [
        (
            lambda m: m.drop(columns="std"),
            ["manifest.columns", "manifest.std.type", "manifest.std.not_null", "pixels.not_blank"],
        ),
        (lambda m: m.astype({"label": np.float64}), ["manifest.label.type"]),
        (
            lambda m: m.assign(split=(m["split"] == "test").astype(np.int64)),
            # no row is in 'train' or 'test' any more, so the split table is empty too
            [
                "manifest.split.type",
                "manifest.split.values",
                "splits.present",
                "splits.min_images",
                "classes.present",
            ],
        ),
    ],
    ids=["std-missing", "label-float", "split-int"],
)
def test_manifest_schema(change, failed):
    prepared = prepare(*arrays())
    manifest = change(prepared.manifest.copy())

    result = summary(Prepared(prepared.images, manifest, prepared.info))

    assert_failed(result, *failed)


def _null(column: str, dtype: str | None = None):
    def change(manifest: pd.DataFrame) -> pd.DataFrame:
        if dtype:
            manifest = manifest.astype({column: dtype})
        manifest.loc[5, column] = None
        return manifest

    return change


@pytest.mark.parametrize(
    ("column", "change"),
    [
        ("source", _null("source")),
        ("split", _null("split")),  # an image in no split is not leakage
        ("label", _null("label", "Int64")),  # nullable ints are an accepted label type
    ],
    ids=["source", "split", "label"],
)
def test_null_values(column, change):
    prepared = prepare(*arrays())
    manifest = change(prepared.manifest.copy())
    assert manifest[column].isna().sum() == 1

    result = summary(Prepared(prepared.images, manifest, prepared.info))

    assert_failed(result, f"manifest.{column}.not_null")


@pytest.fixture(scope="module")
def two_runs_with_docs(tmp_path_factory) -> tuple[Path, dict, dict]:
    """Validate the same clean dataset twice into one docs_dir; a stale file in between."""
    root = tmp_path_factory.mktemp("validate")
    docs = root / "data_docs"
    prepared = prepare(*arrays())
    first = validate_dataset(prepared, DATA, RULES, docs_dir=docs)
    (docs / "stale.html").write_text("from an earlier run")
    second = validate_dataset(prepared, DATA, RULES, docs_dir=docs)
    return root, first.summary(), second.summary()


def test_summary_is_deterministic(two_runs_with_docs):
    root, first, second = two_runs_with_docs

    assert first == second
    text = json.dumps(first, sort_keys=True)
    assert text == json.dumps(second, sort_keys=True)
    assert str(root) not in text
    assert "data_docs" not in text


def test_data_docs_are_replaced(two_runs_with_docs):
    root, _, _ = two_runs_with_docs
    docs = root / "data_docs"

    index = docs / "index.html"
    html = index.read_text()
    for table in ("manifest", "splits", "images_by_hash"):
        assert table in html
    assert not (docs / "stale.html").exists()
    assert sorted(p.relative_to(docs) for p in docs.rglob("index.html")) == [Path("index.html")]
    assert [p.name for p in root.iterdir()] == ["data_docs"]  # no .data_docs.* staging left


@pytest.mark.integration
def test_stage_script_fails_on_blank_image_then_passes(tmp_path):
    params = {
        "data": {"source": "digits", "image_size": 8, "channels": 1},
        "validate": {"min_images_per_split": 5, "max_duplicate_fraction": 0.05},
    }
    (tmp_path / "params.yaml").write_text(yamlio.dump(params))
    prepared_dir = tmp_path / "data" / "prepared"
    summary_path = tmp_path / "reports" / "validation" / "summary.json"
    env = {**os.environ, "GX_ANALYTICS_ENABLED": "false"}

    def stage(images: np.ndarray) -> subprocess.CompletedProcess:
        _, labels, splits = arrays()
        write_prepared(prepare(images, labels, splits), prepared_dir)
        return subprocess.run(
            [sys.executable, str(STAGE)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    images = arrays()[0]
    blank = images.copy()
    blank[0] = 0
    failed = stage(blank)

    assert failed.returncode != 0, failed.stderr
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("error:")
    assert "pixels.not_blank" in last
    assert "FAILED pixels.not_blank" in failed.stderr
    result = json.loads(summary_path.read_text())
    assert result["passed"] is False
    assert result["failed"] == ["pixels.not_blank"]
    assert result["blank_images"] == 1
    assert (tmp_path / "reports" / "validation" / "data_docs" / "index.html").is_file()

    passed = stage(images)

    assert passed.returncode == 0, passed.stderr
    result = json.loads(summary_path.read_text())
    assert result["passed"] is True
    assert result["failed"] == []
