"""Stage reference: data/prepared/ -> data/reference/ (the real test split's features and
statistics, the domain network if that is the backbone, and the FID floor)."""

from pathlib import Path

from genpipe.cli import run_stage
from genpipe.data.canonical import read_prepared
from genpipe.evaluate.common import REFERENCE_DIR
from genpipe.evaluate.reference import build_reference, write_reference
from genpipe.fileio import atomic_dir
from genpipe.params import load_params
from genpipe.train import common

PREPARED = Path("data/prepared")


def main() -> None:
    params = load_params()
    device = common.resolve_device(params.evaluate.device, key="evaluate.device")
    reference, net = build_reference(params, read_prepared(PREPARED), device)
    with atomic_dir(REFERENCE_DIR) as staging:
        write_reference(staging, reference, net)


if __name__ == "__main__":
    run_stage(main)
