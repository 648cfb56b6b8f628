"""data.local: the official files read in place from data.path, verified by archive or
content SHA-256; DVC tracks the directory; the Fashion-MNIST preset; Debian's real copy."""

from __future__ import annotations

import gzip
import os
import re
from pathlib import Path

import numpy as np
import pytest

from genpipe import yamlio
from genpipe.data import download, formats, sources
from genpipe.data.download import Pin
from genpipe.data.sources import REMOTE_SOURCES, RemoteSource, fetch_dataset
from genpipe.errors import DataError, ParamsError
from genpipe.params.load import load_params, parse_params

from builders import cifar_archive, idx_bytes, idx_dataset, sha256

REPO = Path(__file__).resolve().parents[1]
PRESET = REPO / "examples" / "fashion-mnist" / "params.yaml"
DEBIAN = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
FILES = idx_dataset(n_train=40, n_test=20)
TEST_IMAGES = "t10k-images-idx3-ubyte.gz"


def recompress(body: bytes) -> bytes:
    """The same payload, gzipped again as a distribution might (other level, other mtime)."""
    return gzip.compress(gzip.decompress(body), compresslevel=1, mtime=1_600_000_000)


@pytest.fixture
def pinned(monkeypatch) -> dict[str, Pin]:
    """mnist pinned, archive and content, to the fixture files (as fashion-mnist is to the
    real ones), and no mirror that could answer."""
    pins = {n: Pin(sha256(b), content=sha256(gzip.decompress(b))) for n, b in FILES.items()}
    fake = RemoteSource(pins, ("http://127.0.0.1:9/",), REMOTE_SOURCES["mnist"].class_names)
    monkeypatch.setitem(REMOTE_SOURCES, "mnist", fake)
    return pins


def write_files(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, body in files.items():
        (folder / name).write_bytes(body)
    return folder


def local(folder: Path, **data):
    return parse_params({"data": {"source": "mnist", "image_size": 28, "local": True,
                                  "path": str(folder), **data}}).data  # fmt: skip


def test_official_files_are_read_in_place(pinned, tmp_path, monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("local mode downloaded")

    monkeypatch.setattr(sources.download, "download", no_download)
    monkeypatch.setenv("GENPIPE_CACHE_DIR", str(tmp_path / "cache"))
    folder = write_files(tmp_path / "mnist", FILES)
    prepared = fetch_dataset(local(folder))
    assert prepared.images.shape == (60, 1, 28, 28)
    assert prepared.manifest["split"].tolist() == ["train"] * 40 + ["test"] * 20
    assert not (tmp_path / "cache").exists()  # nothing downloaded, nothing copied


def test_recompressed_copy_passes_by_content(pinned, tmp_path):
    original = fetch_dataset(local(write_files(tmp_path / "a", FILES)))
    again = {name: recompress(body) for name, body in FILES.items()}
    assert all(again[n] != FILES[n] for n in FILES)  # other archive sums
    copy = fetch_dataset(local(write_files(tmp_path / "b", again)))
    assert np.array_equal(copy.images, original.images)
    assert copy.manifest.equals(original.manifest)


def test_modified_copy_is_refused_naming_every_sum(pinned, tmp_path):
    images = np.frombuffer(gzip.decompress(FILES[TEST_IMAGES]), np.uint8, offset=16).copy()
    images[0] ^= 1  # one pixel of one image
    body = idx_bytes(images.reshape(20, 28, 28))
    folder = write_files(tmp_path / "mnist", {**FILES, TEST_IMAGES: body})
    with pytest.raises(DataError) as excinfo:
        fetch_dataset(local(folder))
    pin = pinned[TEST_IMAGES]
    assert str(excinfo.value) == (
        f"{folder / TEST_IMAGES}: expected archive sha256 {pin.archive} or content sha256 "
        f"{pin.content}; found archive {sha256(body)}, content {sha256(gzip.decompress(body))}"
    )


def test_override_pins_the_archive_and_replaces_both_sums(pinned, tmp_path):
    other = idx_bytes(np.zeros((20, 28, 28)))
    folder = write_files(tmp_path / "mnist", {**FILES, TEST_IMAGES: other})
    assert len(fetch_dataset(local(folder, sha256={TEST_IMAGES: sha256(other)})).images) == 60
    # pinned to the original archive: a recompressed copy no longer passes by content
    folder = write_files(tmp_path / "again", {**FILES, TEST_IMAGES: recompress(FILES[TEST_IMAGES])})
    with pytest.raises(DataError, match=f"expected sha256 {pinned[TEST_IMAGES].archive}; found "):
        fetch_dataset(local(folder, sha256={TEST_IMAGES: pinned[TEST_IMAGES].archive}))


def test_missing_files_are_named(pinned, tmp_path):
    folder = write_files(tmp_path / "mnist", {TEST_IMAGES: FILES[TEST_IMAGES]})
    with pytest.raises(DataError) as excinfo:
        fetch_dataset(local(folder))
    assert str(excinfo.value) == (
        f"data.path: expected mnist's official files in {folder}; missing "
        "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-labels-idx1-ubyte.gz"
    )


@pytest.mark.parametrize(
    ("body", "found"),
    [
        (FILES[TEST_IMAGES][:300], "expected a complete gzip file; found a truncated"),
        (gzip.compress(bytes(3 << 20)), "expected at most 1048576 bytes once decompressed"),
    ],
    ids=["truncated", "gzip bomb"],
)
def test_truncated_and_bomb_files_keep_clear_errors(pinned, tmp_path, monkeypatch, body, found):
    monkeypatch.setattr(formats, "MAX_GUNZIP_BYTES", 1 << 20)
    folder = write_files(tmp_path / "mnist", {**FILES, TEST_IMAGES: body})
    with pytest.raises(DataError, match=f"{TEST_IMAGES}: expected archive sha256 .*{found}"):
        fetch_dataset(local(folder))
    # pinned to these very bytes, the reader refuses them all the same (bounded there too)
    with pytest.raises(DataError, match=f"{TEST_IMAGES}: {found}"):
        fetch_dataset(local(folder, sha256={TEST_IMAGES: sha256(body)}))


def test_cifar10_archive_from_a_directory(tmp_path):
    archive = cifar_archive()
    folder = write_files(tmp_path / "cifar", {"cifar-10-binary.tar.gz": archive})
    data = local(folder, source="cifar10", image_size=32, channels=3,
                 sha256={"cifar-10-binary.tar.gz": sha256(archive)})  # fmt: skip
    assert fetch_dataset(data).images.shape == (60, 3, 32, 32)


def params_error(**data) -> str:
    with pytest.raises(ParamsError) as excinfo:
        parse_params({"data": {"source": "fashion-mnist", "local": True, **data}})
    return str(excinfo.value)


def test_local_needs_a_directory(tmp_path):
    expected = "data.path: expected a directory holding fashion-mnist's official files"
    assert params_error(path=None) == f"{expected} when data.local is true; got null"
    assert params_error() == f"{expected} when data.local is true; got null"  # key missing
    nowhere = tmp_path / "nowhere"
    assert params_error(path=str(nowhere)).endswith(f"; found nothing at {nowhere}")
    (tmp_path / "file").write_text("x")
    assert params_error(path=str(tmp_path / "file")).endswith(f"; found a file at {tmp_path}/file")


@pytest.mark.parametrize("source", ["digits", "folder"])
def test_local_is_an_error_for_sources_without_official_files(tmp_path, source):
    message = params_error(source=source, path=str(tmp_path))
    assert message.startswith(f"data.local: expected false for source '{source}' (only mnist")


def test_local_is_off_by_default():
    assert parse_params({}).data.local is False
    assert load_params(REPO / "params.yaml").data.local is False


# --- DVC and the preset -----------------------------------------------------------------------


def fetch_stage(params: dict) -> dict:
    """dvc.yaml's fetch stage, `${key.path}` interpolated from params as DVC does it."""
    stage = yamlio.load((REPO / "dvc.yaml").read_text())["stages"]["fetch"]

    def value(match: re.Match) -> str:
        node = params
        for key in match[1].split("."):
            node = node[key]
        return str(node)

    return {**stage, "deps": [re.sub(r"\$\{([\w.-]+)\}", value, d) for d in stage["deps"]]}


def test_dvc_tracks_the_local_directory():
    preset = yamlio.load(PRESET.read_text())
    stage = fetch_stage(preset)
    assert str(DEBIAN) in stage["deps"]
    assert {"data.path", "data.local", "data.source", "data.sha256"} <= set(stage["params"])


def test_preset_is_fashion_mnist_from_debian_with_every_key_of_params_yaml():
    raw = yamlio.load(PRESET.read_text())
    data = raw["data"]
    assert (data["source"], data["path"], data["local"], data["image_size"]) == (
        "fashion-mnist", str(DEBIAN), True, 28)  # fmt: skip
    assert raw["evaluate"]["num_samples"] == 10000
    default = yamlio.load((REPO / "params.yaml").read_text())
    assert set(raw) == set(default) and set(data) == set(default["data"])  # no stale keys
    parse_params({**raw, "data": {**data, "local": False}})  # valid, directory aside


# --- the real copy ----------------------------------------------------------------------------


@pytest.mark.slow
def test_debian_fashion_mnist(tmp_path):
    if not DEBIAN.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{DEBIAN}: expected Debian's dataset-fashion-mnist (.ci/run installs it)")
        pytest.skip(f"{DEBIAN} not found: apt-get install dataset-fashion-mnist")
    from genpipe.validation import validate_dataset

    for name, pin in REMOTE_SOURCES["fashion-mnist"].files.items():
        assert download.content_sha256(DEBIAN / name) == pin.content, name
        assert download.mismatch(DEBIAN / name, pin) is None
    params = load_params(PRESET)
    prepared = fetch_dataset(params.data)
    manifest = prepared.manifest
    assert prepared.images.shape == (70000, 1, 28, 28)
    assert prepared.info["counts"] == {"train": 60000, "test": 10000}
    assert manifest["label"].tolist()[:10] == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    per_class = manifest.groupby(["split", "label"]).size().unstack()
    assert per_class.loc["train"].tolist() == [6000] * 10
    assert per_class.loc["test"].tolist() == [1000] * 10
    report = validate_dataset(prepared, params.data, params.validation, tmp_path / "docs")
    assert report.passed, [(c.id, c.detail) for c in report.failures]
