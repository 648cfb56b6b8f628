"""cpu_kernels: the AVX2 pin gives the same bits whatever the caller's environment forces;
'native' leaves the environment alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from genpipe import runtime

# A few GAN steps on tiny random data, then an FID of the generator's samples (numpy's
# OpenBLAS): pinned or not as argv[1] says, the way a stage pins (re-executing itself).
SCRIPT = """
import hashlib, json, logging, os, sys, tempfile
from pathlib import Path

import numpy as np
import torch

from genpipe import runtime
from genpipe.gan.train import train_gan
from genpipe.metrics.fid import FeatureStats, frechet_distance
from genpipe.params.load import parse_params

logging.basicConfig(level=logging.INFO, format="%(message)s")
params = parse_params({
    "cpu_kernels": sys.argv[1],
    "train": {"batch_size": 16, "checkpoint_every": 100, "log_every": 4, "device": "cpu"},
    "gan": {"steps": 4, "z_dim": 8, "width": 16, "depth": 1},
})
runtime.pin_cpu_kernels(params.cpu_kernels)
rng = np.random.default_rng(7)
images = rng.integers(0, 256, (64, 1, 8, 8), dtype=np.uint8)
with tempfile.TemporaryDirectory() as tmp:
    result = train_gan(params, images, "data-hash", torch.device("cpu"),
                       Path(tmp) / "ckpt.pt", Path(tmp) / "train_log.csv")
digest = hashlib.sha256()
for _, tensor in sorted(result.ema.state_dict().items()):
    digest.update(tensor.contiguous().numpy().tobytes())
with torch.no_grad():
    fake = result.ema(torch.randn(256, 8, generator=torch.Generator().manual_seed(0)))
real_stats, fake_stats = FeatureStats(), FeatureStats()
fake_stats.add(fake.flatten(1).numpy())
real_stats.add(images.reshape(64, -1) / 127.5 - 1)
mu1, sigma1 = fake_stats.statistics()  # (64,), (64, 64)
mu2, sigma2 = real_stats.statistics()
print(json.dumps({
    "weights": digest.hexdigest(),
    "fid": float(frechet_distance(mu1, sigma1, mu2, sigma2)).hex(),
    "capability": torch.backends.cpu.get_cpu_capability(),
    "env": {k: os.environ.get(k) for k in runtime.CPU_KERNEL_PIN},
}))
"""

FORCED_AVX512 = {"ATEN_CPU_CAPABILITY": "avx512", "DNNL_MAX_CPU_ISA": "AVX512_CORE"}


def run_script(tmp_path: Path, mode: str, env: dict[str, str]) -> tuple[dict, str]:
    script = tmp_path / "tiny_train.py"
    script.write_text(SCRIPT)
    base = {k: v for k, v in os.environ.items() if k not in runtime.CPU_KERNEL_PIN}
    proc = subprocess.run(
        [sys.executable, str(script), mode],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1]), proc.stderr


def native_capability() -> str:
    """What torch picks here, unpinned."""
    base = {k: v for k, v in os.environ.items() if k not in runtime.CPU_KERNEL_PIN}
    code = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    proc = subprocess.run(
        [sys.executable, "-c", code], env=base, capture_output=True, text=True, check=True
    )
    return proc.stdout.strip()


@pytest.mark.slow  # five subprocesses: about 30 s
@pytest.mark.skipif(runtime._no_avx2() is not None, reason="the AVX2 pin needs x86-64 AVX2")
def test_pinned_runs_agree_bitwise_whatever_the_caller_forces(tmp_path):
    pinned, log = run_script(tmp_path, "avx2", {})
    assert pinned["capability"] == "AVX2"
    assert pinned["env"] == runtime.CPU_KERNEL_PIN
    assert "CPU kernels pinned to AVX2 (torch: AVX2)" in log
    # the caller's forcing is overridden, whatever it asks for
    for forced in (FORCED_AVX512, {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "AUTO"}):
        other, _ = run_script(tmp_path, "avx2", forced)
        assert other == pinned, forced
    # the pin is exactly its environment: a native run under it gives the same bits
    native_under_pin, _ = run_script(tmp_path, "native", runtime.CPU_KERNEL_PIN)
    assert native_under_pin == pinned

    if native_capability() != "AVX512":
        pytest.skip("no AVX-512 here: cannot show that unpinned runs differ")
    # unpinned, the bits follow the ISA: what the pin is there to prevent
    native_avx512, _ = run_script(tmp_path, "native", FORCED_AVX512)
    assert native_avx512["capability"] == "AVX512"
    assert native_avx512["weights"] != pinned["weights"]
    assert native_avx512["fid"] != pinned["fid"]


@pytest.mark.integration
def test_native_leaves_the_environment_alone(tmp_path):
    result, log = run_script(tmp_path, "native", {"ATEN_CPU_CAPABILITY": "default"})
    assert result["capability"] == "DEFAULT"
    assert result["env"] == {k: ("default" if k == "ATEN_CPU_CAPABILITY" else None)
                             for k in runtime.CPU_KERNEL_PIN}  # fmt: skip
    assert "CPU kernels native (torch: DEFAULT)" in log


def test_without_avx2_the_pin_logs_and_goes_on(monkeypatch, caplog):
    def no_exec(*args):
        raise AssertionError("re-executed without AVX2")

    monkeypatch.setattr(runtime.platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(runtime.os, "execv", no_exec)
    for key in runtime.CPU_KERNEL_PIN:
        monkeypatch.delenv(key, raising=False)
    with caplog.at_level("INFO", logger="genpipe"):
        runtime.pin_cpu_kernels("avx2")
    assert "CPU kernels not pinned: aarch64 is not x86-64" in caplog.text
    assert not any(key in os.environ for key in runtime.CPU_KERNEL_PIN)
