"""What `dvc repro` costs when nothing changed, and what each kind of change reruns.

1. The wall time of a no-op `dvc repro` in this repository after a full run (median of
   --rounds), against the target of 3 s.
2. The stages a real `dvc repro` reruns after each kind of change, against what the
   pipeline promises. The project is a throwaway copy of the repository's files (its own
   git repo, DVC cache and sqlite MLflow store) on tiny training params, reading the
   offline digits as a folder of PNGs, so that "the data itself" can change: one full run,
   then each change applied to a copy of that state and reproduced. Which stages rerun
   depends on what each stage reads, not on the params' sizes. Takes about 10 minutes on
   2 cores; --no-reruns skips it.

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

from genpipe import dvclock, yamlio

REPO = Path(__file__).resolve().parents[1]
TARGET_SECONDS = 3.0
TRAIN = ["train@gan", "train@autoencoder"]
EVALUATE = ["evaluate@gan", "evaluate@autoencoder"]
REGISTER = ["register@gan", "register@autoencoder"]
# params checks the whole of params.yaml: it reruns after any edit of the file, and since
# its output's bytes never change, reruns nothing by itself
ALL = ["params", "fetch", "validate", "reference", *TRAIN, *EVALUATE, *REGISTER]
GAN = ["train@gan", "evaluate@gan", "register@gan"]
AUTOENCODER = ["train@autoencoder", "evaluate@autoencoder", "register@autoencoder"]
MODELS = [*TRAIN, *EVALUATE, *REGISTER]
TINY = {  # seconds per stage: the stages that rerun do not depend on these sizes
    "data": {"source": "folder", "path": "images", "channels": 1, "image_size": 8},
    "train": {"batch_size": 16, "checkpoint_every": 10, "log_every": 5},
    "gan": {"steps": 10, "width": 8, "z_dim": 8},
    "autoencoder": {"steps": 10, "width": 8, "latent_dim": 4},
    "evaluate": {"kid_subsets": 5,
                 "domain": {"steps": 100, "width": 8, "feature_dim": 16, "min_accuracy": 0.5}},
}  # fmt: skip


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "GX_ANALYTICS_ENABLED": "false",
           "MLFLOW_TRACKING_URI": f"sqlite:///{cwd}/mlflow.db",
           "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.com",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@example.com"}  # fmt: skip
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)


def dvc(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    result = run(sys.executable, "-m", "dvc", *args, cwd=cwd)
    if result.returncode != 0:
        raise SystemExit(f"dvc {' '.join(args)} failed in {cwd}:\n{result.stderr[-3000:]}")
    return result


def set_params(root: Path, section: str, values: dict) -> None:
    path = root / "params.yaml"
    params = yamlio.load(path.read_text())
    params[section].update(values)
    path.write_text(yamlio.dump(params))


def append(root: Path, name: str) -> None:
    with (root / name).open("a") as f:
        f.write("\n# an edit\n")


def write_digits(folder: Path) -> None:
    """scikit-learn's digits as 8x8 grey PNGs in one subfolder per class."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.round(digits.images * (255 / 16)).astype(np.uint8)
    for i, (image, label) in enumerate(zip(pixels, digits.target, strict=True)):
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / str(label) / f"{i:04d}.png")


def new_image(root: Path) -> None:
    """A new image in the folder: the first one, mirrored."""
    from PIL import Image, ImageOps

    first = min((root / "images").rglob("*.png"))
    ImageOps.mirror(Image.open(first)).save(first.with_name("added.png"))


# each kind of change, and the stages the pipeline promises to rerun after it
CHANGES: dict[str, tuple[Callable[[Path], None], list[str]]] = {
    "nothing (a second repro)": (lambda r: None, []),
    "autoencoder.latent_dim (one model's params)": (
        lambda r: set_params(r, "autoencoder", {"latent_dim": 3}), ["params", *AUTOENCODER]),
    "gan.lr_g (the other model's params)": (
        lambda r: set_params(r, "gan", {"lr_g": 1e-4}), ["params", *GAN]),
    "data.test_fraction (the data's params)": (
        lambda r: set_params(r, "data", {"test_fraction": 0.25}), ALL),
    "a new image in the data folder (the data itself)": (new_image, ALL[1:]),
    "src/genpipe/gan/network.py (the GAN's network)": (
        lambda r: append(r, "src/genpipe/gan/network.py"), GAN),
    # training reruns; its new MLflow run id reruns evaluate and register
    "src/genpipe/training.py (the loops' shared bookkeeping)": (
        lambda r: append(r, "src/genpipe/training.py"), MODELS),
    "src/genpipe/resolution.py (what shapes both networks)": (
        lambda r: append(r, "src/genpipe/resolution.py"), MODELS),
    "src/genpipe/images.py (the uint8 <-> float conversion; the reference's too)": (
        lambda r: append(r, "src/genpipe/images.py"), ["reference", *MODELS]),
    "evaluate.kid_subsets (the evaluation's params)": (
        lambda r: set_params(r, "evaluate", {"kid_subsets": 6}),
        ["params", "reference", *EVALUATE, *REGISTER]),
}  # fmt: skip


def tiny_project(root: Path) -> None:
    """The repository's files (committed or not, minus ignored ones) in a fresh git repo, on
    tiny params and a folder of digits, reproduced once."""
    listed = run("git", "ls-files", "-co", "--exclude-standard", cwd=REPO).stdout.split()
    for name in listed:
        if (REPO / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    for name in ("dvc.lock", "reports/validation/summary.json"):  # produced by the run
        (root / name).unlink(missing_ok=True)
    write_digits(root / "images")
    for section, values in TINY.items():
        set_params(root, section, values)
    run("git", "init", "-q", cwd=root)
    run("git", "add", "-A", cwd=root)
    run("git", "commit", "-q", "-m", "tiny", cwd=root)
    ran = repro(root)
    if sorted(ran) != sorted(ALL):
        raise SystemExit(f"the first full run ran {ran}, expected all {len(ALL)} stages")


def repro(root: Path) -> list[str]:
    """`dvc repro` in `root`; the stages it ran, read from dvc.lock before and after."""
    before = dvclock.stages(root / dvclock.LOCK)
    dvc("repro", cwd=root)
    return dvclock.changed(before, dvclock.stages(root / dvclock.LOCK))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-reruns", action="store_true", help="time the no-op repro only")
    args = parser.parse_args()

    status = dvc("status", cwd=REPO)
    if "up to date" not in status.stdout:
        raise SystemExit(
            "expected an up-to-date pipeline; run `dvc repro` first:\n" + status.stdout
        )
    seconds = []
    for _ in range(args.rounds):
        start = time.perf_counter()
        ran = repro(REPO)
        seconds.append(time.perf_counter() - start)
        if ran:
            raise SystemExit(f"a no-op repro ran {ran}")
    median = statistics.median(seconds)
    print(f"no-op `dvc repro`: {median:.2f} s (median of {args.rounds}; min {min(seconds):.2f},"
          f" max {max(seconds):.2f}); target <= {TARGET_SECONDS:.0f} s:"
          f" {median / TARGET_SECONDS:.2f}x of the budget")  # fmt: skip
    if args.no_reruns:
        return

    print(f"\nstages rerun by a real `dvc repro` after each kind of change (of {len(ALL)};"
          " tiny params, a folder of digits):", flush=True)  # fmt: skip
    wrong = []
    with tempfile.TemporaryDirectory(prefix="genpipe-repro-") as tmp:
        base = Path(tmp) / "base"
        tiny_project(base)
        for kind, (change, expected) in CHANGES.items():
            root = Path(tmp) / "changed"
            shutil.rmtree(root, ignore_errors=True)
            shutil.copytree(base, root, symlinks=True)
            change(root)
            start = time.perf_counter()
            ran = repro(root)
            took = time.perf_counter() - start
            verdict = "as promised" if sorted(ran) == sorted(expected) else "NOT as promised"
            if sorted(ran) != sorted(expected):
                wrong.append(kind)
            print(f"  {len(ran)} (promised {len(expected)}, {verdict}, {took:.0f} s)  {kind}:"
                  f" {', '.join(ran) or '-'}", flush=True)  # fmt: skip
    if wrong:
        raise SystemExit(f"{len(wrong)} kind(s) of change reran other stages than promised")


if __name__ == "__main__":
    main()
