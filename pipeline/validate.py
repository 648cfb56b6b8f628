"""Stage validate: data/prepared/ -> reports/validation/ (summary.json, data_docs/).

Exits non-zero when any expectation fails, so `dvc repro` stops before training.
"""

import logging

from genpipe import paths
from genpipe.data.canonical import read_prepared
from genpipe.errors import ValidationFailed
from genpipe.fileio import write_json
from genpipe.params.load import load_params
from genpipe.stage import run_stage
from genpipe.validation import validate_dataset

log = logging.getLogger("genpipe.validate")


def main() -> None:
    params = load_params()
    prepared = read_prepared(paths.PREPARED)
    report = validate_dataset(prepared, params.data, params.validation, docs_dir=paths.DATA_DOCS)
    write_json(paths.VALIDATION_SUMMARY, report.summary())
    for check in report.failures:
        log.error("FAILED %s: %s", check.id, check.detail)
    if not report.passed:
        raise ValidationFailed(
            f"{len(report.failures)} of {len(report.checks)} data checks failed "
            f"({', '.join(c.id for c in report.failures)}); see {paths.VALIDATION_SUMMARY} "
            f"and {paths.DATA_DOCS / 'index.html'}"
        )
    log.info(
        "all %d data checks passed; Data Docs: %s",
        len(report.checks),
        paths.DATA_DOCS / "index.html",
    )


if __name__ == "__main__":
    run_stage(main)
