# Set-up and entry points. The README's Quick start and CI (.ci/run) use exactly these targets.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
export DVC_NO_ANALYTICS := true
export MLFLOW_DISABLE_TELEMETRY := true
# MLflow's server-side job runner (GenAI scorer and trace jobs; this project has none) would start
# eight more processes with each `mlflow server` or `mlflow ui`, for 4-5x the CPU time and memory
# (`python -m benchmarks.tracking_server`; docs/performance.md, "The test suite").
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION := false
# Stages run `python` from PATH: the project's environment, whether or not it is activated.
export PATH := $(abspath $(BIN)):$(PATH)
FAST := not e2e and not server and not slow

.PHONY: setup lock pipeline quick test test-fast lint dvc-yaml review benchmark ui

# constraints.txt pins every package, not only pyproject.toml's: a fresh clone gets the environment
# the tests passed in, whatever its dependencies have released since. --use-pep517: DVC's
# antlr4-python3-runtime ships only a setup.py, which Python 3.11's pip would otherwise run the
# deprecated way, with a notice no user can act on.
$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --use-pep517 -c constraints.txt -e '.[test]'
	touch $@

setup: $(BIN)/.installed

# After a change to pyproject.toml's dependencies: resolve them afresh in a scratch environment
# (the newest releases its pins allow), then `make test` on the result.
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet --use-pep517 -e '.[test]'
	{ sed -n '1,2p' constraints.txt; .lock-venv/bin/pip freeze --all --exclude-editable | grep -v '^pip=='; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf .lock-venv

# Offline (no access to CIFAR-10's host)? Point at a local copy of the archive, e.g.
#   make pipeline DATA=/path/to/cifar10-jpeg-q75.tar.gz DATA_MD5=<its md5> DATA_FORMAT=imagefolder
# (`kdistill set` writes the three values into params.yaml, validated, comments kept).
SOURCE = $(if $(DATA),data.url=$(DATA) data.md5=$(DATA_MD5) data.format=$(or $(DATA_FORMAT),cifar10))

pipeline: setup
	$(if $(SOURCE),kdistill set $(SOURCE))
	dvc repro

# Every stage and every command of the README in minutes: one epoch on 5,000 training images.
quick: setup
	kdistill set data.train_images=5000 train.epochs=1 $(SOURCE)
	dvc repro
	@echo "quick run done; for the full run: kdistill set data.train_images=0 train.epochs=10 && make pipeline"

lint: setup
	ruff check src tests stages benchmarks
	kdistill dvc-yaml --check

# Everything, in random order (pytest-randomly): unit tests, the real `dvc repro`, real servers.
# Three workers (pytest-xdist; they often wait on servers and subprocesses), a test file each at a
# time (its module fixtures stay in one worker), the longest files first in the order that
# tests/conftest.py sets, and one thread per process: on 2 cores, processes of two busy-waiting
# threads each fight over the cores (docs/performance.md, "Parallel experiments").
test: lint
	OMP_NUM_THREADS=1 pytest -n 3 --dist loadfile --no-loadscope-reorder --durations=10

# The edit loop: no `dvc repro`, no servers, no stage processes.
test-fast: setup
	pytest -m "$(FAST)"

dvc-yaml: setup
	kdistill dvc-yaml

# What a change did to each method: make review [BASELINE=HEAD] [CANDIDATE=workspace]
review: setup
	kdistill review --baseline $(or $(BASELINE),HEAD) --candidate $(or $(CANDIDATE),workspace)

benchmark: setup
	dvc repro download
	PYTHONPATH=src python -m benchmarks.speed
	PYTHONPATH=src python -m benchmarks.peak

# PYTHONWARNINGS: MLflow's own server imports starlette's deprecated WSGI middleware, and each of
# its workers would print that deprecation, which no user of this project can act on.
UI_PORT ?= 5000
ui: setup
	@echo "MLflow UI, opened on the runs: http://127.0.0.1:$(UI_PORT)/#/experiments/1?workflowType=machine_learning"
	PYTHONWARNINGS="ignore:starlette.middleware.wsgi is deprecated" \
	    mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port $(UI_PORT)
