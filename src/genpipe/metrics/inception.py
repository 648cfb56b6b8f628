"""The Inception-v3 network that FID is defined with, and its weights loader.

The same network pytorch-fid builds in `fid_inception_v3()` (torchvision's Inception3 with
1008 classes, no aux head, and the blocks patched to match the TensorFlow graph of
inception-2015-12-05), written out here so that torchvision is not needed. The standard
weights file pt_inception-2015-12-05-6726825d.pth loads into it unchanged; `forward`
returns the 2048-d pool3 features FID statistics are computed from.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genpipe.errors import MetricsError, exception_text
from genpipe.fileio import sha256_files

__all__ = [
    "FEATURE_DIM",
    "INPUT_SIZE",
    "WEIGHTS_ENV",
    "WEIGHTS_FILE",
    "WEIGHTS_SHA256_PREFIX",
    "WEIGHTS_URL",
    "FIDInceptionV3",
    "load_inception",
    "preprocess",
]

log = logging.getLogger("genpipe.metrics.inception")

FEATURE_DIM = 2048  # pool3
NUM_CLASSES = 1008  # the TensorFlow graph's classifier; unused by FID, kept for the state dict
INPUT_SIZE = 299
WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + WEIGHTS_FILE
)
WEIGHTS_ENV = "GENPIPE_INCEPTION_WEIGHTS"
WEIGHTS_SHA256_PREFIX = "6726825d"  # torch hub's convention: the name carries it
PARAM_KEY = "evaluate.inception_weights"
SHOW = 3  # offending keys named in an error message


# --- the network -----------------------------------------------------------------------------


class BasicConv2d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


def _avg_pool(x: Tensor) -> Tensor:
    # TensorFlow's average pool leaves the padded zeros out of the mean (the FID patch)
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """Mixed_5b-5d: 35x35, in_channels -> 224 + pool_features."""

    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        branch1x1 = self.branch1x1(x)
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = self.branch_pool(_avg_pool(x))
        return torch.cat([branch1x1, branch5x5, branch3x3dbl, branch_pool], 1)


class InceptionB(nn.Module):
    """Mixed_6a: 35x35 -> 17x17, in_channels -> in_channels + 480."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        branch3x3 = self.branch3x3(x)
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([branch3x3, branch3x3dbl, branch_pool], 1)


class InceptionC(nn.Module):
    """Mixed_6b-6e: 17x17, 768 -> 768, factorised 7x7 convolutions."""

    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        branch1x1 = self.branch1x1(x)
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = self.branch7x7dbl_1(x)
        branch7x7dbl = self.branch7x7dbl_3(self.branch7x7dbl_2(branch7x7dbl))
        branch7x7dbl = self.branch7x7dbl_5(self.branch7x7dbl_4(branch7x7dbl))
        branch_pool = self.branch_pool(_avg_pool(x))
        return torch.cat([branch1x1, branch7x7, branch7x7dbl, branch_pool], 1)


class InceptionD(nn.Module):
    """Mixed_7a: 17x17 -> 8x8, in_channels -> in_channels + 512."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        branch3x3 = self.branch3x3_2(self.branch3x3_1(x))
        branch7x7x3 = self.branch7x7x3_2(self.branch7x7x3_1(x))
        branch7x7x3 = self.branch7x7x3_4(self.branch7x7x3_3(branch7x7x3))
        branch_pool = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([branch3x3, branch7x7x3, branch_pool], 1)


class InceptionE(nn.Module):
    """Mixed_7b, 7c: 8x8, in_channels -> 2048.

    The FID graph pools Mixed_7c's pool branch with a max pool, not an average pool (a
    quirk of that TensorFlow graph, kept by every FID implementation): `max_pool=True`.
    """

    def __init__(self, in_channels: int, max_pool: bool = False):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        branch1x1 = self.branch1x1(x)
        branch3x3 = self.branch3x3_1(x)
        branch3x3 = torch.cat([self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)], 1)
        branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branch3x3dbl = torch.cat(
            [self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl)], 1
        )
        if self.max_pool:
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            pooled = _avg_pool(x)
        branch_pool = self.branch_pool(pooled)
        return torch.cat([branch1x1, branch3x3, branch3x3dbl, branch_pool], 1)


def preprocess(images: Tensor) -> Tensor:
    """uint8 (N, C, H, W), C = 1 or 3 -> float32 (N, 3, 299, 299) in [-1, 1], as pytorch-fid.

    Scaled to [0, 1], resized bilinearly (align_corners=False) unless already 299x299, then
    mapped to [-1, 1]; grey images are repeated to three channels.
    """
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise MetricsError(
            "Inception input: expected uint8 images (N, C, H, W) with C = 1 or 3; "
            f"got {images.dtype} of shape {tuple(images.shape)}"
        )
    x = images.to(torch.float32).div(255)  # (N, C, H, W) in [0, 1], as ToTensor
    if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
    x = 2 * x - 1
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)  # grey -> RGB after the per-channel work: a third of it
    return x  # (N, 3, 299, 299)


class FIDInceptionV3(nn.Module):
    """uint8 images (N, C, H, W), C = 1 or 3, any size -> pool3 features (N, 2048) float32.

    Attribute names and order are torchvision's Inception3, so that the state dict matches
    the standard FID weights file entry for entry.
    """

    def __init__(self):
        super().__init__()
        self.weights_sha256: str | None = None  # of the file load_inception read
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.maxpool1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.maxpool2 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(FEATURE_DIM, NUM_CLASSES)  # in the weights file; forward skips it

    def forward(self, images: Tensor) -> Tensor:
        x = preprocess(images.to(self.fc.weight.device))  # (N, 3, 299, 299)
        x = self.Conv2d_1a_3x3(x)  # (N, 32, 149, 149)
        x = self.Conv2d_2a_3x3(x)  # (N, 32, 147, 147)
        x = self.Conv2d_2b_3x3(x)  # (N, 64, 147, 147)
        x = self.maxpool1(x)  # (N, 64, 73, 73)
        x = self.Conv2d_3b_1x1(x)  # (N, 80, 73, 73)
        x = self.Conv2d_4a_3x3(x)  # (N, 192, 71, 71)
        x = self.maxpool2(x)  # (N, 192, 35, 35)
        x = self.Mixed_5b(x)  # (N, 256, 35, 35)
        x = self.Mixed_5c(x)  # (N, 288, 35, 35)
        x = self.Mixed_5d(x)  # (N, 288, 35, 35)
        x = self.Mixed_6a(x)  # (N, 768, 17, 17)
        x = self.Mixed_6b(x)
        x = self.Mixed_6c(x)
        x = self.Mixed_6d(x)
        x = self.Mixed_6e(x)  # (N, 768, 17, 17)
        x = self.Mixed_7a(x)  # (N, 1280, 8, 8)
        x = self.Mixed_7b(x)  # (N, 2048, 8, 8)
        x = self.Mixed_7c(x)  # (N, 2048, 8, 8)
        return torch.flatten(self.avgpool(x), 1)  # (N, 2048) pool3


# --- the weights -----------------------------------------------------------------------------


def load_inception(path: str | Path | None, device: torch.device) -> FIDInceptionV3:
    """The FID network with the weights file at `path` (evaluate.inception_weights), else at
    $GENPIPE_INCEPTION_WEIGHTS; in eval mode on `device`, without gradients.

    The file must hold exactly the network's tensors (num_batches_tracked may be left out).
    A file other than the standard one loads with a warning: its FIDs are not comparable
    with published ones.
    """
    path, where = _weights_file(path)
    fix = (
        f"download {WEIGHTS_FILE} from {WEIGHTS_URL} and point {PARAM_KEY} or ${WEIGHTS_ENV} at it"
    )
    _check_is_file(path, where, fix)
    try:
        # weights_only: tensors and plain containers, never arbitrary pickled objects
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise MetricsError(
            f"{where}: expected a PyTorch state dict file ({WEIGHTS_FILE}); torch.load "
            f"(weights_only) could not read it: {_load_error(exc)}. To fix, {fix}"
        ) from None

    net = FIDInceptionV3()
    _check_state_dict(state, net.state_dict(), where, fix)
    state = dict(state)
    for key, value in net.state_dict().items():
        if key.endswith("num_batches_tracked"):
            # unused in eval mode; recent torch fills them itself, older versions may not
            state.setdefault(key, torch.zeros_like(value))
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # anything the checks above did not foresee
        raise MetricsError(
            f"{where}: expected the FID Inception-v3 state dict; loading it failed: "
            f"{exception_text(exc)}. To fix, {fix}"
        ) from exc

    digest = sha256_files([path])
    if not digest.startswith(WEIGHTS_SHA256_PREFIX):
        log.warning(
            "%s: the weights load, but the file's SHA-256 is %s..., not %s... (%s); FID values "
            "computed with it will not be comparable with published ones",
            where, digest[:8], WEIGHTS_SHA256_PREFIX, WEIGHTS_FILE,
        )  # fmt: skip
    net.weights_sha256 = digest  # the reference stage records which file its statistics used
    return net.to(device).eval().requires_grad_(False)


def _weights_file(path: str | Path | None) -> tuple[Path, str]:
    """The weights file's path, from the param or the environment, and where it came from."""
    if path is not None and str(path):
        where = PARAM_KEY
    elif os.environ.get(WEIGHTS_ENV):
        where, path = f"${WEIGHTS_ENV}", os.environ[WEIGHTS_ENV]
    else:
        raise MetricsError(
            f"evaluate.backbone inception: expected the FID Inception weights file "
            f"{WEIGHTS_FILE} at {PARAM_KEY} or ${WEIGHTS_ENV}; neither is set. Download it "
            f"from {WEIGHTS_URL} and set one of them (or use evaluate.backbone: domain, "
            "which works offline)"
        )
    path = Path(path).expanduser()
    return path, f"{where} ({path})"


def _check_is_file(path: Path, where: str, fix: str) -> None:
    if not path.exists():
        raise MetricsError(
            f"{where}: expected the FID Inception weights file {WEIGHTS_FILE}; "
            f"no such file. To fix, {fix}"
        )
    if not path.is_file():
        found = "a directory" if path.is_dir() else "something other than a regular file"
        raise MetricsError(
            f"{where}: expected the FID Inception weights file {WEIGHTS_FILE}; "
            f"found {found}. To fix, {fix}"
        )


def _load_error(exc: BaseException) -> str:
    """The exception quoted. Of torch's weights_only refusal, only its reason: the refusal's
    own advice (to retry with weights_only=False, which would run the pickle) is never
    repeated."""
    text = str(exc)
    if not (isinstance(exc, pickle.UnpicklingError) or "weights_only" in text.lower()):
        return exception_text(exc)
    paragraphs = [p.strip() for p in text.split("\n\n") if p.strip()]
    reasons = [
        p.split("WeightsUnpickler error:", 1)[-1].strip()
        for p in paragraphs
        if not re.search(r"weights.only|pytorch\.org|re-running", p, re.IGNORECASE)
        or "WeightsUnpickler error:" in p
    ]
    reason = next((r for r in reasons if r), "it holds objects other than tensors")
    first = re.split(r"\.\s", reason, maxsplit=1)[0].rstrip(".")
    return f"{type(exc).__name__}: {first[:200]}"


def _check_state_dict(state: object, expected: dict[str, Tensor], where: str, fix: str) -> None:
    """Raise MetricsError unless `state` maps exactly the expected names to tensors of the
    expected shapes (num_batches_tracked entries optional)."""
    head = f"{where}: expected the {len(expected)} tensors of the FID Inception-v3 state dict"
    if not isinstance(state, Mapping):
        raise MetricsError(f"{head}; found a {type(state).__name__}. To fix, {fix}")
    odd = [(k, v) for k, v in state.items() if not (isinstance(k, str) and isinstance(v, Tensor))]
    if odd:
        k, v = odd[0]
        raise MetricsError(
            f"{head} (a mapping of names to tensors); found {len(odd)} other entries, the first "
            f"{k!r}: {type(v).__name__}. To fix, {fix}"
        )
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        found = []
        if missing:
            found.append(f"{len(missing)} missing ({_first(missing)})")
        if unexpected:
            found.append(f"{len(unexpected)} unexpected ({_first(unexpected)})")
        raise MetricsError(f"{head}; found {' and '.join(found)}. To fix, {fix}")
    shapes = [
        f"{k}: expected {tuple(v.shape)}, found {tuple(state[k].shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if shapes:
        raise MetricsError(
            f"{head}; found {len(shapes)} with other shapes ({_first(shapes, sep='; ')}). "
            f"To fix, {fix}"
        )
    # a float file of another precision is cast on load; integers or complex are not weights
    kinds = [
        f"{k}: {state[k].dtype}"
        for k, v in expected.items()
        if k in state and v.is_floating_point() and not state[k].is_floating_point()
    ]
    if kinds:
        raise MetricsError(
            f"{head}; found {len(kinds)} that are not floating point ({_first(kinds)}). "
            f"To fix, {fix}"
        )


def _first(items: list[str], sep: str = ", ") -> str:
    more = f"{sep}..." if len(items) > SHOW else ""
    return sep.join(items[:SHOW]) + more

