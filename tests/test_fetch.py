"""fetch: every source into the canonical format; stable splits; byte-identical outputs;
failures leave earlier outputs intact."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from genpipe import yamlio
from genpipe.data.canonical import (
    MANIFEST_COLUMNS,
    content_split,
    image_sha1,
    read_prepared,
    write_prepared,
)
from genpipe.data.sources import fetch_dataset
from genpipe.errors import DataError, DownloadError, ParamsError
from genpipe.params.load import parse_params

from builders import cifar_archive, idx_bytes, idx_dataset, sha256, tar_gz, write_png

REPO = Path(__file__).resolve().parents[1]


def data_params(**data):
    return parse_params({"data": {"download": {"retries": 0, "timeout": 5}, **data}}).data


def serve(http_server, prefix: str, files: dict[str, bytes]) -> dict:
    """Serve `files` under /prefix/; the params that point a source at them."""
    for name, body in files.items():
        http_server.route(f"/{prefix}/{name}", (200, body))
    return {
        "mirrors": [f"{http_server.url}/{prefix}/"],
        "sha256": {n: sha256(b) for n, b in files.items()},
    }  # noqa: E501


# --- digits (the offline default) -------------------------------------------------------


def test_digits_canonical_format():
    prepared = fetch_dataset(data_params())
    images, manifest = prepared.images, prepared.manifest
    assert images.shape == (1797, 1, 8, 8) and images.dtype == np.uint8
    assert images.min() == 0 and images.max() == 255  # 0..16 rescaled to 0..255
    # sklearn's values are the integers 0..16, so exactly 17 grey levels appear
    assert np.array_equal(np.unique(images), np.rint(np.arange(17) * 255 / 16))
    assert list(manifest.columns) == list(MANIFEST_COLUMNS)
    assert manifest["index"].tolist() == list(range(1797))
    assert sorted(manifest["label"].unique()) == list(range(10))
    assert manifest["sha1"].tolist() == image_sha1(images)
    np.testing.assert_allclose(manifest["mean"], images.reshape(1797, -1).mean(1))
    np.testing.assert_allclose(manifest["std"], images.reshape(1797, -1).std(1))
    assert (manifest["min"] == images.reshape(1797, -1).min(1)).all()
    assert prepared.info["class_names"] == [str(i) for i in range(10)]
    test_share = (manifest["split"] == "test").mean()
    assert 0.15 < test_share < 0.25  # data.test_fraction 0.2 of the hash space
    assert prepared.info["counts"] == {
        "train": int((manifest["split"] == "train").sum()),
        "test": int((manifest["split"] == "test").sum()),
    }


def test_digits_resized_to_rgb():
    images = fetch_dataset(data_params(image_size=16, channels=3)).images
    assert images.shape == (1797, 3, 16, 16)
    assert np.array_equal(images[:, 0], images[:, 1]) and np.array_equal(images[:, 1], images[:, 2])


def test_outputs_are_byte_identical(tmp_path):
    for out in ("a", "b"):
        write_prepared(fetch_dataset(data_params()), tmp_path / out)
    for name in ("images.npy", "manifest.parquet", "info.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]  # no staging dirs left


def test_round_trip_memory_maps_images(tmp_path):
    prepared = fetch_dataset(data_params())
    write_prepared(prepared, tmp_path / "prepared")
    again = read_prepared(tmp_path / "prepared")
    assert isinstance(again.images, np.memmap)
    assert np.array_equal(again.images, prepared.images)
    assert again.manifest.equals(prepared.manifest)
    assert again.info == prepared.info


def test_read_prepared_names_a_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"images.npy: expected the fetch stage's output"):
        read_prepared(tmp_path)


# --- splits -------------------------------------------------------------------------------


def test_content_split_depends_only_on_the_hash():
    hashes = [hashlib.sha1(str(i).encode()).hexdigest() for i in range(2000)]
    full = content_split(hashes, 0.2)
    assert np.array_equal(content_split(hashes[:500], 0.2), full[:500])
    assert np.array_equal(content_split(hashes[::-1], 0.2), full[::-1])
    assert 0.17 < (full == "test").mean() < 0.23


def test_adding_images_never_moves_existing_ones(tmp_path):
    for i in range(30):
        write_png(tmp_path / f"{i:03d}.png", (12, 12), seed=i)
    before = fetch_dataset(data_params(source="folder", path=str(tmp_path))).manifest
    for i in range(30, 60):
        write_png(tmp_path / f"{i:03d}.png", (12, 12), seed=i)
    after = fetch_dataset(data_params(source="folder", path=str(tmp_path))).manifest
    assert len(after) == 60
    old = dict(zip(before["sha1"], before["split"], strict=True))
    moved = [h for h, split in zip(after["sha1"], after["split"], strict=True)
             if h in old and old[h] != split]  # fmt: skip
    assert len(old) == 30 and not moved


def test_identical_images_share_a_split(tmp_path):
    for i in range(20):
        write_png(tmp_path / f"{i:02d}a.png", (8, 8), mode="L", seed=i)
        write_png(tmp_path / f"{i:02d}b.png", (8, 8), mode="L", seed=i)  # an exact copy
    manifest = fetch_dataset(data_params(source="folder", path=str(tmp_path))).manifest
    assert (manifest.groupby("sha1")["split"].nunique() == 1).all()


# --- folder ---------------------------------------------------------------------------------


def test_folder_of_rgb_pngs_of_assorted_sizes(tmp_path):
    sizes = [(40, 30), (17, 50), (64, 64), (9, 9)]
    for cls in ("cats", "dogs"):
        for i, size in enumerate(sizes):
            write_png(tmp_path / cls / f"{i}.png", size, seed=i + 10 * len(cls))
    prepared = fetch_dataset(data_params(source="folder", path=str(tmp_path), channels=3,
                                         image_size=16))  # fmt: skip
    assert prepared.images.shape == (8, 3, 16, 16)
    assert prepared.info["class_names"] == ["cats", "dogs"]
    assert prepared.manifest["label"].tolist() == [0] * 4 + [1] * 4
    assert prepared.manifest["source"].tolist()[:2] == ["cats/0.png", "cats/1.png"]


def test_folder_skip_reports_the_count(tmp_path):
    for i in range(5):
        write_png(tmp_path / f"{i}.png", (10, 10), seed=i)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    with pytest.raises(DataError, match=r"found 1 unreadable or non-image file\(s\): broken.png"):
        fetch_dataset(data_params(source="folder", path=str(tmp_path)))
    prepared = fetch_dataset(data_params(source="folder", path=str(tmp_path), on_bad_file="skip"))
    assert len(prepared.images) == 5 and prepared.info["skipped_files"] == 1


# golden SHA-256 of the fitted pixels: images without alpha must come out byte-identical to
# before transparency was composited (the default digits and the committed example folder)
GOLDEN_PIXELS = {
    "digits-1x8": "b41ca9fd335466eee997366c2e6f6bbe0a1b4582afe091fc4eba35f4a254182f",
    "digits-3x16": "701a31329051b677a5948144962f43da8d5874791f1ccd83d7c734808ffcde81",
    "examples-1x8": "c4934354e2366aedaacc108e09c5053770168bf40694040e6f2a0ea5b9273958",
    "examples-3x32": "567693c34a0dc33be4e0f12efe57ebd0f62b8f3936ff94cb4c45349845503902",
}


@pytest.mark.parametrize("case", sorted(GOLDEN_PIXELS))
def test_opaque_sources_are_byte_identical_to_golden(case):
    name, shape = case.split("-")
    channels, size = map(int, shape.split("x"))
    source = {"source": "folder", "path": str(REPO / "examples" / "images")}
    params = data_params(**(source if name == "examples" else {}), channels=channels,
                         image_size=size)  # fmt: skip
    images = fetch_dataset(params).images
    assert hashlib.sha256(images.tobytes()).hexdigest() == GOLDEN_PIXELS[case]


def test_folder_max_image_pixels_and_background_params_reach_the_reader(tmp_path):
    write_png(tmp_path / "big.png", (20, 12))
    rgba = np.zeros((8, 8, 4), np.uint8)  # fully transparent black
    Image.fromarray(rgba, "RGBA").save(tmp_path / "clear.png")
    with pytest.raises(DataError, match=r"1 image\(s\) over data.max_image_pixels \(200 pixels\)"):
        fetch_dataset(data_params(source="folder", path=str(tmp_path), max_image_pixels=200))
    prepared = fetch_dataset(data_params(source="folder", path=str(tmp_path),
                                         max_image_pixels=200, on_bad_file="skip"))  # fmt: skip
    assert prepared.manifest["source"].tolist() == ["clear.png"]
    assert np.all(prepared.images == 255)  # the default background: white
    black = fetch_dataset(data_params(source="folder", path=str(tmp_path), background="black"))
    assert np.all(black.images[black.manifest["source"] == "clear.png"] == 0)


def test_max_image_pixels_defaults_to_pillows_limit():
    assert data_params().max_image_pixels == Image.MAX_IMAGE_PIXELS == 89_478_485


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (0, "data.max_image_pixels: expected a value greater than 0; got 0"),
        (True, "data.max_image_pixels: expected a valid integer; got true (bool)"),
        ("1e9", "data.max_image_pixels: expected a valid integer; got '1e9' (str)"),
    ],
    ids=["zero", "bool", "string"],
)
def test_max_image_pixels_must_be_a_positive_integer(value, error):
    with pytest.raises(ParamsError) as excinfo:
        data_params(max_image_pixels=value)
    assert str(excinfo.value) == error


def test_background_must_be_white_or_black():
    with pytest.raises(ParamsError, match="data.background: expected one of 'white' or 'black'"):
        data_params(background="grey")


# --- remote sources, served from 127.0.0.1 --------------------------------------------------


@pytest.mark.parametrize("source", ["mnist", "fashion-mnist"])
def test_idx_sources_keep_the_official_split(http_server, tmp_path, source):
    files = idx_dataset(n_train=40, n_test=20)
    params = data_params(source=source, image_size=28, **serve(http_server, source, files))
    prepared = fetch_dataset(params, cache=tmp_path)
    assert prepared.images.shape == (60, 1, 28, 28)
    assert prepared.manifest["split"].tolist() == ["train"] * 40 + ["test"] * 20
    assert prepared.manifest["source"][0] == "train-images-idx3-ubyte.gz#0"
    assert prepared.manifest["source"][40] == "t10k-images-idx3-ubyte.gz#0"
    assert prepared.manifest["label"].tolist()[:12] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert len(prepared.info["class_names"]) == 10
    assert sorted(p.name for p in (tmp_path / source).iterdir()) == sorted(files)
    # a second fetch reads the verified cache: no more requests
    hits = sum(http_server.hits.values())
    fetch_dataset(params, cache=tmp_path)
    assert sum(http_server.hits.values()) == hits


def test_cifar10_binary_archive(http_server, tmp_path):
    served = serve(http_server, "c", {"cifar-10-binary.tar.gz": cifar_archive()})
    params = data_params(source="cifar10", image_size=32, channels=3, **served)
    prepared = fetch_dataset(params, cache=tmp_path)
    assert prepared.images.shape == (60, 3, 32, 32)
    assert (prepared.manifest["split"] == "test").sum() == 10
    assert prepared.manifest["source"][0] == "cifar-10-batches-bin/data_batch_1.bin#0"
    assert prepared.info["class_names"][:2] == ["airplane", "automobile"]


def test_pinned_checksum_rejects_other_content(http_server, tmp_path):
    files = idx_dataset()
    params = data_params(source="mnist", mirrors=[f"{http_server.url}/m/"])  # real MNIST pins
    for name, body in files.items():
        http_server.route(f"/m/{name}", (200, body))
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        fetch_dataset(params, cache=tmp_path)
    assert not (tmp_path / "mnist").exists() or not any((tmp_path / "mnist").iterdir())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"train-images-idx3-ubyte.gz": idx_bytes(np.zeros((4, 8, 8)), magic=0x12345678)},
         r"train-images-idx3-ubyte.gz: expected an IDX file .* \(magic 0x00000803\); found 0x12345678"),  # noqa: E501
        ({"train-labels-idx1-ubyte.gz": idx_bytes(np.zeros(39))},
         "has 40 images but train-labels-idx1-ubyte.gz has 39 labels"),
        ({"t10k-images-idx3-ubyte.gz": idx_dataset()["t10k-images-idx3-ubyte.gz"][:500]},
         "t10k-images-idx3-ubyte.gz: expected a complete gzip file; found a truncated"),
    ],
)  # fmt: skip
def test_broken_idx_files(http_server, tmp_path, change, message):
    files = {**idx_dataset(), **change}  # checksums pinned to the broken files themselves
    with pytest.raises(DataError, match=message):
        fetch_dataset(data_params(source="mnist", **serve(http_server, "m", files)), cache=tmp_path)


@pytest.mark.parametrize(
    ("archive", "problem"),
    [
        (tar_gz({"../evil.bin": b"x"}), "a '..' path component"),
        (tar_gz({"/tmp/evil.bin": b"x"}), "an absolute path"),
        (tar_gz({"ok.bin": b"x"}, links={"cifar-10-batches-bin/test_batch.bin": "/etc/passwd"}),
         "a link to '/etc/passwd'"),
    ],
)  # fmt: skip
def test_unsafe_archives_are_refused(http_server, tmp_path, archive, problem):
    served = serve(http_server, "c", {"cifar-10-binary.tar.gz": archive})
    params = data_params(source="cifar10", image_size=32, channels=3, **served)
    with pytest.raises(DataError, match=f"cifar-10-binary.tar.gz: .*is {problem}"):
        fetch_dataset(params, cache=tmp_path)
    assert not (tmp_path.parent / "evil.bin").exists()


# --- the stage script: exit codes, and earlier outputs stay intact -------------------------


def run_fetch(workdir: Path, params: dict) -> subprocess.CompletedProcess:
    (workdir / "params.yaml").write_text(yamlio.dump(params))
    env = {**os.environ, "GENPIPE_CACHE_DIR": str(workdir / "cache")}
    return subprocess.run([sys.executable, str(REPO / "pipeline" / "fetch.py")], cwd=workdir,
                          env=env, capture_output=True, text=True, timeout=120)  # fmt: skip


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def digits_outputs(tmp_path_factory) -> Path:
    """data/prepared/ from one successful run of the stage on digits."""
    workdir = tmp_path_factory.mktemp("digits")
    result = run_fetch(workdir, {"data": {"source": "digits"}})
    assert result.returncode == 0, result.stderr
    assert "wrote data/prepared: 1797 images 1x8x8 from digits" in result.stderr
    return workdir / "data" / "prepared"


@pytest.fixture
def workdir(tmp_path, digits_outputs) -> Path:
    """A working directory holding the outputs of an earlier successful fetch."""
    shutil.copytree(digits_outputs, tmp_path / "data" / "prepared")
    return tmp_path


def idx_files(**changes: bytes) -> dict[str, bytes]:
    return {**idx_dataset(), **changes}


def cifar_files(archive: bytes) -> dict[str, bytes]:
    return {"cifar-10-binary.tar.gz": archive}


# (served files or a folder builder, data params, exit code, what the error line says)
BAD_INPUTS = {
    "unknown source": (None, {"source": "mnsit"}, 2, "did you mean 'mnist'?"),
    "checksum mismatch": (
        idx_files(), {"source": "mnist", "sha256": {"t10k-labels-idx1-ubyte.gz": "0" * 64}},
        1, "t10k-labels-idx1-ubyte.gz from 1 mirror: ",
    ),
    "truncated gz, checksum pinned to it": (
        idx_files(**{"t10k-images-idx3-ubyte.gz": idx_files()["t10k-images-idx3-ubyte.gz"][:300]}),
        {"source": "mnist"}, 1, "expected a complete gzip file; found a truncated",
    ),
    "HTTP 404 on every mirror": ({}, {"source": "fashion-mnist"}, 1, "HTTP 404"),
    "connection refused": (None, {"source": "mnist", "mirrors": ["http://127.0.0.1:9/"]},
                           1, "connection refused"),
    "wrong IDX magic": (
        idx_files(**{"train-labels-idx1-ubyte.gz": idx_bytes(np.zeros((40, 2, 2)))}),
        {"source": "mnist"}, 1, "expected an IDX file of unsigned bytes with 1 dimensions",
    ),
    "image/label count mismatch": (
        idx_files(**{"t10k-labels-idx1-ubyte.gz": idx_bytes(np.zeros(7))}),
        {"source": "mnist"}, 1, "has 20 images but t10k-labels-idx1-ubyte.gz has 7 labels",
    ),
    "archive member with ..": (cifar_files(tar_gz({"a/../../x": b"1"})), {"source": "cifar10"},
                               1, "member 'a/../../x' is a '..' path component"),
    "archive member with an absolute path": (cifar_files(tar_gz({"/x": b"1"})),
                                             {"source": "cifar10"}, 1, "is an absolute path"),
    "archive member that is a symlink": (
        cifar_files(tar_gz({}, links={"cifar-10-batches-bin/test_batch.bin": "../../secret"})),
        {"source": "cifar10"}, 1, "is a link to '../../secret'",
    ),
    "corrupt PNG": ("corrupt", {"source": "folder", "path": "images"}, 1,
                    "found 1 unreadable or non-image file(s): b/bad.png"),
    "folder without images": ("empty", {"source": "folder", "path": "images"}, 1,
                              "expected PNG or JPEG images; found no files"),
    "missing folder": (None, {"source": "folder", "path": "nowhere"}, 1,
                       "expected a directory of images; found nothing at nowhere"),
}  # fmt: skip


@pytest.mark.integration
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_stage_bad_input_fails_cleanly(case, workdir, http_server):
    files, data, code, message = BAD_INPUTS[case]
    if isinstance(files, dict):
        for name, body in files.items():
            http_server.route(f"/src/{name}", (200, body))
        pins = {name: sha256(body) for name, body in files.items()}
        data = {"mirrors": [f"{http_server.url}/src/"], **data,
                "sha256": {**pins, **data.get("sha256", {})}}  # fmt: skip
    elif files in ("corrupt", "empty"):
        (workdir / "images").mkdir()
        if files == "corrupt":
            write_png(workdir / "images" / "a" / "ok.png", (9, 9))
            good = write_png(workdir / "images" / "b" / "good.png", (9, 9)).read_bytes()
            (workdir / "images" / "b" / "bad.png").write_bytes(good[: len(good) // 2])
    if data.get("source") == "cifar10":
        data = {**data, "image_size": 32, "channels": 3}
    before = snapshot(workdir / "data" / "prepared")

    result = run_fetch(workdir, {"data": {"download": {"retries": 0, "timeout": 5}, **data}})

    assert result.returncode == code, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, result.stderr
    assert "Traceback" not in result.stderr
    assert snapshot(workdir / "data" / "prepared") == before  # earlier outputs intact
    assert sorted(p.name for p in (workdir / "data").iterdir()) == ["prepared"]  # nothing half
    cached = workdir / "cache"
    leftovers = [p.name for p in cached.rglob("*") if p.is_file()] if cached.exists() else []
    assert not [name for name in leftovers if name.endswith(".part")]


@pytest.mark.integration
def test_stage_retries_a_server_error_then_replaces_outputs(workdir, http_server):
    files = idx_dataset()
    for name, body in files.items():
        http_server.route(f"/src/{name}", (500, b"busy"), (200, body))
    data = {"source": "mnist", "image_size": 28, "mirrors": [f"{http_server.url}/src/"],
            "sha256": {name: sha256(body) for name, body in files.items()},
            "download": {"retries": 1, "backoff": 0.01}}  # fmt: skip

    result = run_fetch(workdir, {"data": data})

    assert result.returncode == 0, result.stderr
    assert "retrying" in result.stderr and "HTTP 500" in result.stderr
    assert all(http_server.hits[f"/src/{name}"] == 2 for name in files)
    assert json.loads((workdir / "data/prepared/info.json").read_text())["source"] == "mnist"
    assert sorted(p.name for p in (workdir / "data").iterdir()) == ["prepared"]
