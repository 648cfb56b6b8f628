"""Stage params: params.yaml (the whole file) -> reports/params/check.json.

Runs before every other stage (they depend on its output), so a typo in any key, which
DVC itself never notices because it tracks only the keys a stage declares, ends
`dvc repro` with the one-line params error before any stage touches an output. The
output's bytes never change, so a valid edit reruns only the stages whose keys changed.
"""

from genpipe import paths
from genpipe.fileio import write_json
from genpipe.params.load import load_params
from genpipe.stage import run_stage


def main() -> None:
    load_params(paths.PARAMS)
    write_json(paths.PARAMS_CHECK, {"params": str(paths.PARAMS), "valid": True})


if __name__ == "__main__":
    run_stage(main)
