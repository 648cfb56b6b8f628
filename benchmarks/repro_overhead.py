"""What `dvc repro` costs when nothing changed, and what each kind of change reruns.

1. The wall time of a no-op `dvc repro` in this repository after a full run (median of
   --rounds), against the target of 3 s.
2. For each kind of change, in a throwaway copy of the repository (outputs and DVC cache
   included), the stages `dvc repro --dry` lists: those whose own inputs changed (the
   stages downstream of them rerun too when their outputs change; a dry run cannot tell):
   one model's params, the data's params, the data itself (a new image in the folder the
   `folder` source reads), an edit of the GAN's network, an edit of shared training code,
   the evaluation's params.

Run (from the repository root, after `dvc repro`):
    .venv/bin/python benchmarks/repro_overhead.py
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
TARGET_SECONDS = 3.0
SKIP = shutil.ignore_patterns(".venv", "node_modules", "mlartifacts", "mlruns", "__pycache__")


def dvc(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "GX_ANALYTICS_ENABLED": "false"}  # fmt: skip
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=env,
                          capture_output=True, text=True)  # fmt: skip


def stages(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines()
            if line.startswith("Running stage '")]  # fmt: skip


def set_param(root: Path, section: str, key: str, value) -> None:
    path = root / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params[section][key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def append(root: Path, name: str) -> None:
    with (root / name).open("a") as f:
        f.write("\n# an edit\n")


def new_image(root: Path) -> None:
    """A copy of an image in data.path, the folder the folder source reads (fetch depends
    on it whichever source is set)."""
    from PIL import Image

    folder = root / yaml.safe_load((root / "params.yaml").read_text())["data"]["path"]
    first = next(p for p in sorted(folder.rglob("*")) if p.suffix.lower() in (".png", ".jpg"))
    Image.open(first).copy().save(first.with_name("added.png"))


CHANGES: dict[str, Callable[[Path], None]] = {
    "autoencoder.latent_dim (one model's params)": lambda r: set_param(
        r, "autoencoder", "latent_dim", 8
    ),
    "gan.lr_g (the other model's params)": lambda r: set_param(r, "gan", "lr_g", 1e-4),
    "data.test_fraction (the data's params)": lambda r: set_param(r, "data", "test_fraction", 0.25),
    "a new image in data.path (the folder the folder source reads)": new_image,
    "src/genpipe/models/gan.py (the GAN's network)": lambda r: append(
        r, "src/genpipe/models/gan.py"
    ),
    "src/genpipe/train/common.py (shared training code)": lambda r: append(
        r, "src/genpipe/train/common.py"
    ),
    "evaluate.kid_subsets (the evaluation's params)": lambda r: set_param(
        r, "evaluate", "kid_subsets", 50
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    status = dvc("status", cwd=REPO)
    if "up to date" not in status.stdout:
        raise SystemExit(
            "expected an up-to-date pipeline; run `dvc repro` first:\n" + status.stdout
        )
    seconds = []
    for _ in range(args.rounds):
        start = time.perf_counter()
        result = dvc("repro", cwd=REPO)
        seconds.append(time.perf_counter() - start)
        if stages(result.stdout):
            raise SystemExit(f"a no-op repro ran {stages(result.stdout)}")
    median = statistics.median(seconds)
    print(f"no-op `dvc repro`: {median:.2f} s (median of {args.rounds}; min {min(seconds):.2f},"
          f" max {max(seconds):.2f}); target <= {TARGET_SECONDS:.0f} s:"
          f" {median / TARGET_SECONDS:.2f}x of the budget")  # fmt: skip

    print(
        "\nstages whose own inputs each kind of change reaches (of 9; `dvc repro --dry`, which"
        " does not run them, so the stages downstream that rerun when these outputs change"
        " are not counted: tests/test_pipeline.py asserts the real reruns):"
    )
    with tempfile.TemporaryDirectory(prefix="genpipe-repro-") as tmp:
        for kind, change in CHANGES.items():
            root = Path(tmp) / "repo"
            shutil.rmtree(root, ignore_errors=True)
            shutil.copytree(REPO, root, symlinks=True, ignore=SKIP)
            change(root)
            dry = dvc("repro", "--dry", cwd=root)
            if dry.returncode != 0:
                raise SystemExit(f"{kind}: dvc repro --dry failed:\n{dry.stderr}")
            ran = stages(dry.stdout)
            print(f"  {len(ran)}  {kind}: {', '.join(ran) or '-'}")


if __name__ == "__main__":
    main()
