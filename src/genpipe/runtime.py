"""Where and how the tensors run: the CPU kernels (pinned to one ISA), the device (resolved
once, then passed down), the autocast precision, the memory format, and the one seed with
its explicit generators."""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import sys
from pathlib import Path

import torch
from torch import nn

from genpipe.errors import TrainingError

log = logging.getLogger("genpipe")

# The environment that pins every CPU kernel library to AVX2 code, so any x86-64 machine
# with AVX2 gives the same bits. Each is read once, when its library first dispatches, so
# pin_cpu_kernels sets them and re-executes the process. Each was seen to change bits on an
# AVX-512 machine (AMD EPYC, torch 2.13, numpy 2.4):
CPU_KERNEL_PIN = {
    # ATen's vectorised kernels (elementwise ops, reductions, BatchNorm, Adam)
    "ATEN_CPU_CAPABILITY": "avx2",
    # oneDNN: the convolutions
    "DNNL_MAX_CPU_ISA": "AVX2",
    # MKL's sgemm: Linear layers (autoencoder, domain network). Its AVX2 branch is honoured
    # on Intel CPUs only ("on non-Intel CPUs the AUTO branch is used"); COMPATIBLE is one
    # code path on every vendor, and cost no measurable time in autoencoder training
    "MKL_CBWR": "COMPATIBLE",
    # numpy's OpenBLAS (scipy-openblas, DYNAMIC_ARCH): covariances, eigh in FID, PCA
    "OPENBLAS_CORETYPE": "Haswell",
    # numpy's own AVX-512 loops (exp, log, log10, power): numpy 2.3+ names, then older ones
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR AVX512F AVX512CD AVX512_SKX "
    "AVX512_CLX AVX512_CNL",
}


def pin_cpu_kernels(mode: str) -> None:
    """cpu_kernels 'avx2': unless the environment already carries CPU_KERNEL_PIN, set it
    (over what the caller set) and re-execute this process, which then pins itself before
    any library dispatches; call it before any work. 'native' leaves the environment alone.
    Without AVX2 (another architecture, an old CPU) it logs and goes on unpinned."""
    if mode == "native":
        log.info("CPU kernels native (torch: %s): bits tied to this CPU model", _capability())
        return
    if any(os.environ.get(k) != v for k, v in CPU_KERNEL_PIN.items()):
        reason = _no_avx2()
        if reason:
            log.info("CPU kernels not pinned: %s (torch: %s)", reason, _capability())
            return
        os.environ.update(CPU_KERNEL_PIN)
        sys.stdout.flush()
        sys.stderr.flush()
        # orig_argv keeps `-m module` and interpreter options
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
    log.info("CPU kernels pinned to AVX2 (torch: %s)", _capability())


def _capability() -> str:
    return torch.backends.cpu.get_cpu_capability()


def _no_avx2() -> str | None:
    """Why the AVX2 pin cannot apply here, or None when it can."""
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64"):
        return f"{machine} is not x86-64"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "no /proc/cpuinfo to find AVX2 in"
    if " avx2" not in flags:
        return "this CPU has no AVX2"
    return None


def resolve_device(name: str, key: str = "train.device") -> torch.device:
    """'auto' picks cuda, then mps, then cpu. Called once; the result is passed down.
    `key` is the params key the name came from, for the error message."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"{key}: expected a CUDA GPU for 'cuda'; found none")
    if name == "mps" and not torch.backends.mps.is_available():
        raise TrainingError(f"{key}: expected Apple's MPS for 'mps'; found none")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32. 'auto': bf16 on CUDA where supported."""
    if name == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else None
    if name == "fp16" and device.type == "cpu":
        raise TrainingError("train.precision: expected fp32 or bf16 on the CPU; got fp16")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Autocast to `dtype`; a no-op for fp32. Casts are not cached across calls: a cached
    cast captured in a CUDA graph would go stale when the weights are updated."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=False)


def grad_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """Loss scaling for fp16 only; a disabled scaler passes everything through."""
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)


def channels_last(device: torch.device, compiled: bool = False) -> bool:
    """Whether images and convolution weights are kept channels_last on this device: on CUDA
    (tensor cores) and on the CPU (oneDNN's preferred layout; the default GAN step is about
    15% faster in it). MPS keeps the default layout, and so do compiled networks: inductor
    chooses their layouts itself, and in torch 2.11 its convolution backward failed a
    stride check on channels_last weights."""
    return device.type in ("cuda", "cpu") and not compiled


def prepare_module(module: nn.Module, device: torch.device, compiled: bool = False) -> nn.Module:
    """On the device, in the memory format its convolutions run fastest in there."""
    module = module.to(device)
    if channels_last(device, compiled):
        module = module.to(memory_format=torch.channels_last)
    return module


def seed_everything(seed: int, device: torch.device, cpu_threads: int = 0) -> None:
    """One seed for the global RNG (weight init); sampling takes explicit generators.

    On the CPU the thread count is fixed too: it can change the order of reductions.
    Deterministic algorithms are asked for without their debugging aid of filling every
    new tensor with NaN: that fill is no part of determinism, and it cost the default GAN
    step about 10% on the CPU (each fill touches freshly mapped pages).
    """
    if device.type == "cpu" and cpu_threads:
        torch.set_num_threads(cpu_threads)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = False
    torch.backends.cudnn.benchmark = False


def make_generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def unwrap(module: nn.Module) -> nn.Module:
    """The module itself, under torch.compile's wrapper."""
    return getattr(module, "_orig_mod", module)
