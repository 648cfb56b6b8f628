"""Stage reference: data/prepared/ -> data/reference/ (the real test split's features and
statistics, the domain network if that is the backbone, and the FID floor)."""

from genpipe import paths, runtime
from genpipe.data.split import read_split
from genpipe.fileio import atomic_dir
from genpipe.params.load import load_params
from genpipe.reference import build_reference, write_reference
from genpipe.stage import run_stage


def main() -> None:
    params = load_params()
    runtime.pin_cpu_kernels(params.cpu_kernels)  # may re-execute: before any work
    device = runtime.resolve_device(params.evaluate.device, key="evaluate.device")
    reference, net = build_reference(params, read_split(paths.PREPARED), device)
    with atomic_dir(paths.REFERENCE) as staging:
        write_reference(staging, reference, net)


if __name__ == "__main__":
    run_stage(main)
