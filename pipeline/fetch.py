"""Stage fetch: `data` params -> data/prepared/ (images.npy, manifest.parquet, info.json)."""

import logging

from genpipe import paths
from genpipe.data.canonical import write_prepared
from genpipe.data.sources import fetch_dataset
from genpipe.params.load import load_params
from genpipe.stage import run_stage

OUT = paths.PREPARED
log = logging.getLogger("genpipe.fetch")


def main() -> None:
    params = load_params()
    prepared = fetch_dataset(params.data)
    write_prepared(prepared, OUT)
    info = prepared.info
    log.info(
        "wrote %s: %d images %s from %s (train %d, test %d, %d classes, %d files skipped)",
        OUT,
        len(prepared.images),
        "x".join(map(str, info["shape"][1:])),
        info["source"],
        info["counts"]["train"],
        info["counts"]["test"],
        info["num_classes"],
        info["skipped_files"],
    )


if __name__ == "__main__":
    run_stage(main)
