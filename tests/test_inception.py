"""The FID Inception-v3: its state dict against the reference key list, pytorch-fid's
preprocessing, the weights loader and its errors.

The real weights file cannot be fetched here; a file of random tensors built from the
reference key list stands in for it (He-scaled, so that features stay finite). A 299x299
forward costs about half a second per image on CPU: few images, few forwards.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from genpipe.errors import MetricsError
from genpipe.metrics import inception
from genpipe.metrics.inception import (
    FEATURE_DIM,
    WEIGHTS_ENV,
    WEIGHTS_SHA256_PREFIX,
    WEIGHTS_URL,
    FIDInceptionV3,
    load_inception,
    preprocess,
)

from builders import REFERENCE_KEYS, random_state_dict

CPU = torch.device("cpu")
LOGGER = "genpipe.metrics.inception"
MAP_SIZES = {  # module -> output (C, H, W) for a 299x299 input
    "Conv2d_1a_3x3": (32, 149, 149),
    "Conv2d_2a_3x3": (32, 147, 147),
    "Conv2d_2b_3x3": (64, 147, 147),
    "maxpool1": (64, 73, 73),
    "Conv2d_3b_1x1": (80, 73, 73),
    "Conv2d_4a_3x3": (192, 71, 71),
    "maxpool2": (192, 35, 35),
    "Mixed_5b": (256, 35, 35),
    "Mixed_5c": (288, 35, 35),
    "Mixed_5d": (288, 35, 35),
    "Mixed_6a": (768, 17, 17),
    "Mixed_6e": (768, 17, 17),
    "Mixed_7a": (1280, 8, 8),
    "Mixed_7b": (2048, 8, 8),
    "Mixed_7c": (2048, 8, 8),
}


def without_batch_counts(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def uint8_images(n: int, channels: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return random_state_dict()


@pytest.fixture(scope="module")
def weights_file(state, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("inception") / "random-inception.pth"
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def net(weights_file) -> FIDInceptionV3:
    return load_inception(weights_file, CPU)


def message(excinfo: pytest.ExceptionInfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text
    return text


# --- the network -----------------------------------------------------------------------------


def test_state_dict_matches_the_reference_entries():
    reference = json.loads(REFERENCE_KEYS.read_text())
    got = [
        {"key": k, "shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
        for k, v in FIDInceptionV3().state_dict().items()
    ]
    assert len(reference) == 566
    assert [e["key"] for e in got] == [e["key"] for e in reference]  # names and order
    assert got == reference  # shapes and dtypes too
    # 23,885,486 values: the size of the standard weights file
    assert sum(math.prod(e["shape"]) or 1 for e in got) == 23_885_486


def test_loaded_network_gives_finite_pool3_features(net, state):
    assert not net.training
    assert not any(p.requires_grad for p in net.parameters())
    loaded = net.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())

    # the map sizes of torchvision's Inception3 at 299x299: strides and paddings as there
    sizes = {}
    hooks = [
        getattr(net, name).register_forward_hook(
            lambda _m, _i, out, name=name: sizes.__setitem__(name, tuple(out.shape[1:]))
        )
        for name in MAP_SIZES
    ]
    grey = uint8_images(2, 1, 8, seed=1)  # (2, 1, 8, 8)
    with torch.inference_mode():
        features = net(grey)
    for hook in hooks:
        hook.remove()
    assert sizes == MAP_SIZES
    assert features.shape == (2, FEATURE_DIM)
    assert features.dtype == torch.float32
    assert torch.isfinite(features).all()
    assert not torch.allclose(features[0], features[1])  # different images, different features
    assert (features >= 0).all()  # a mean of ReLU outputs


@pytest.mark.parametrize(
    ("block", "pool"),
    [(f"Mixed_5{c}", "avg") for c in "bcd"]
    + [(f"Mixed_6{c}", "avg") for c in "bcde"]
    + [("Mixed_7b", "avg"), ("Mixed_7c", "max")],
)
def test_pool_branches_are_the_fid_graphs(net, block, pool):
    """TensorFlow's average pool leaves padding out of the mean; Mixed_7c max-pools.

    A spike in the corner, pooled 3x3 with padding 1: the max pool spreads it unchanged;
    the average without the padding gives 1/4, 1/6, 1/9 (corner, edge, interior); with
    the padding counted (torchvision's Inception3) it would be 1/9 everywhere.
    """
    module = getattr(net, block)
    pooled = []
    hook = module.branch_pool.register_forward_pre_hook(lambda _m, args: pooled.append(args[0]))
    x = torch.zeros(1, module.branch1x1.conv.in_channels, 5, 5)
    x[..., 0, 0] = 1
    with torch.inference_mode():
        module(x)
    hook.remove()
    corner, edge, interior = (pooled[0][0, :, i, j] for i, j in ((0, 0), (0, 1), (1, 1)))
    expected = (1, 1, 1) if pool == "max" else (1 / 4, 1 / 6, 1 / 9)
    for got, value in zip((corner, edge, interior), expected, strict=True):
        torch.testing.assert_close(got, torch.full_like(got, value))


def test_features_do_not_depend_on_the_batch(net):
    """Eval-mode BatchNorm: equal images give equal features, whatever else is in the batch."""
    rgb = uint8_images(2, 3, 32, seed=2)  # (2, 3, 32, 32)
    batch = torch.cat([rgb[:1], rgb])  # image 0, image 0 again, image 1
    with torch.inference_mode():
        together = net(batch)
        alone = net(rgb[:1])
    assert together.shape == (3, FEATURE_DIM)
    assert torch.isfinite(together).all()
    torch.testing.assert_close(together[0], together[1])
    torch.testing.assert_close(alone[0], together[0], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(together[0], together[2], rtol=1e-3, atol=1e-4)


# --- preprocessing ---------------------------------------------------------------------------


def test_preprocess_matches_pytorch_fid_resize_and_scale():
    images = uint8_images(2, 3, 32, seed=3)
    x = preprocess(images)
    expected = (
        F.interpolate(images / 255, size=(299, 299), mode="bilinear", align_corners=False) * 2 - 1
    )
    assert x.shape == (2, 3, 299, 299)
    assert x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-6)


def test_preprocess_repeats_grey_and_maps_the_ends_to_minus_one_and_one():
    black = torch.zeros(1, 1, 8, 8, dtype=torch.uint8)
    white = torch.full((1, 1, 8, 8), 255, dtype=torch.uint8)
    x = preprocess(torch.cat([black, white]))
    assert x.shape == (2, 3, 299, 299)
    assert (x[0] == -1).all()
    assert (x[1] == 1).all()

    grey = preprocess(uint8_images(1, 1, 28, seed=4))
    assert torch.equal(grey[:, 0], grey[:, 1])
    assert torch.equal(grey[:, 0], grey[:, 2])
    assert grey.std() > 0.1  # not constant


def test_preprocess_leaves_299_images_unresized():
    images = uint8_images(1, 3, 299, seed=5)
    assert torch.equal(preprocess(images), images.float() / 255 * 2 - 1)


@pytest.mark.parametrize(
    "images",
    [
        torch.zeros(1, 3, 8, 8),  # float, not uint8
        torch.zeros(1, 4, 8, 8, dtype=torch.uint8),  # RGBA
        torch.zeros(3, 8, 8, dtype=torch.uint8),  # no batch dimension
    ],
)
def test_preprocess_refuses_other_inputs(images):
    with pytest.raises(MetricsError, match="uint8") as excinfo:
        preprocess(images)
    assert str(tuple(images.shape)) in message(excinfo)


# --- loading ---------------------------------------------------------------------------------


def test_loads_from_the_environment_variable(weights_file, state, monkeypatch):
    monkeypatch.setenv(WEIGHTS_ENV, str(weights_file))
    loaded = load_inception(None, CPU).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_path_argument_wins_over_the_environment_variable(weights_file, tmp_path, monkeypatch):
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "elsewhere.pth"))
    assert isinstance(load_inception(weights_file, CPU), FIDInceptionV3)


def test_loads_a_file_without_batch_counts(state, tmp_path):
    path = tmp_path / "no-counts.pth"
    torch.save(without_batch_counts(state), path)
    loaded = load_inception(str(path), CPU).state_dict()
    counts = [k for k in loaded if k.endswith("num_batches_tracked")]
    assert len(counts) == 94
    assert all(loaded[k].item() == 0 for k in counts)
    assert torch.equal(loaded["fc.weight"], state["fc.weight"])


def test_warns_when_the_file_is_not_the_standard_one(weights_file, caplog, monkeypatch):
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        load_inception(weights_file, CPU)
    warnings = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert WEIGHTS_SHA256_PREFIX in warnings[0].getMessage()
    assert "not be comparable" in warnings[0].getMessage()

    # a file whose hash carries the expected prefix loads silently
    caplog.clear()
    monkeypatch.setattr(inception, "WEIGHTS_SHA256_PREFIX", sha256(weights_file)[:8])
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        load_inception(weights_file, CPU)
    assert not [r for r in caplog.records if r.name == LOGGER]


# --- loading errors --------------------------------------------------------------------------


@pytest.mark.parametrize("path", [None, ""])
def test_no_weights_configured(path, monkeypatch):
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    with pytest.raises(MetricsError) as excinfo:
        load_inception(path, CPU)
    text = message(excinfo)
    assert "evaluate.inception_weights" in text
    assert WEIGHTS_ENV in text
    assert WEIGHTS_URL in text
    assert "neither is set" in text


def test_missing_file(tmp_path, monkeypatch):
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "absent.pth"))
    with pytest.raises(MetricsError, match="no such file") as excinfo:
        load_inception(None, CPU)
    text = message(excinfo)
    assert f"${WEIGHTS_ENV}" in text
    assert "absent.pth" in text
    assert WEIGHTS_URL in text


def test_directory_instead_of_a_file(tmp_path):
    with pytest.raises(MetricsError, match="found a directory") as excinfo:
        load_inception(tmp_path, CPU)
    assert "evaluate.inception_weights" in message(excinfo)


def test_garbage_file(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(MetricsError, match="could not read it") as excinfo:
        load_inception(path, CPU)
    assert "garbage.pth" in message(excinfo)


class Payload:
    """Not a tensor: weights_only loading must refuse to rebuild it."""

    def __reduce__(self):
        return (print, ("unpickled!",))


def test_pickled_objects_are_refused(tmp_path, capsys):
    path = tmp_path / "objects.pth"
    torch.save({"fc.weight": Payload()}, path)
    with pytest.raises(MetricsError, match="could not read it") as excinfo:
        load_inception(path, CPU)
    text = message(excinfo)
    assert "UnpicklingError" in text
    assert "print" in text  # names the refused global
    assert "weights_only=False" not in text  # quotes the reason, not torch's advice
    assert "weights_only` set to `False`" not in text and "Re-running" not in text
    assert "unpickled!" not in capsys.readouterr().out


@pytest.mark.parametrize(
    ("payload", "found"),
    [([torch.zeros(1)], "found a list"), ({"fc.weight": 1.5}, "'fc.weight': float")],
)
def test_not_a_state_dict(payload, found, tmp_path):
    path = tmp_path / "other.pth"
    torch.save(payload, path)
    with pytest.raises(MetricsError, match="expected the 566 tensors") as excinfo:
        load_inception(path, CPU)
    assert found in message(excinfo)


def test_missing_and_unexpected_keys(state, tmp_path):
    broken = dict(state)
    del broken["Mixed_6c.branch7x7_2.conv.weight"]
    broken["head.weight"] = torch.zeros(3)
    path = tmp_path / "keys.pth"
    torch.save(broken, path)
    with pytest.raises(MetricsError, match="expected the 566 tensors") as excinfo:
        load_inception(path, CPU)
    text = message(excinfo)
    assert "1 missing (Mixed_6c.branch7x7_2.conv.weight)" in text
    assert "1 unexpected (head.weight)" in text


def test_wrong_shape(state, tmp_path):
    broken = dict(state)
    broken["Mixed_7c.branch_pool.conv.weight"] = torch.zeros(192, 1280, 1, 1)
    path = tmp_path / "shape.pth"
    torch.save(broken, path)
    with pytest.raises(MetricsError, match="other shapes") as excinfo:
        load_inception(path, CPU)
    assert (
        "Mixed_7c.branch_pool.conv.weight: expected (192, 2048, 1, 1), found (192, 1280, 1, 1)"
        in message(excinfo)
    )
