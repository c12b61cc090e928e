# Set-up and entry points. The README's Quick start and CI (.ci/run) use exactly these targets.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
export DVC_NO_ANALYTICS := true
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: setup postgres pipeline test benchmark ui

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

setup: $(BIN)/.installed

# Offline (no access to CIFAR-10's host)? Point at a local copy, e.g.
#   make pipeline DATA=../shared/datasets/cifar10-jpeg-q75.tar.gz DATA_MD5=96b05c3512c3d946c09d8d2253e7f9b3 DATA_FORMAT=imagefolder
pipeline: setup
ifdef DATA
	PATH=$(BIN):$$PATH dvc exp run -S data.url=$(DATA) -S data.md5=$(DATA_MD5) -S data.format=$(or $(DATA_FORMAT),cifar10)
else
	PATH=$(BIN):$$PATH dvc repro
endif

# The team test (tests/test_team.py) starts a real PostgreSQL server: Debian's postgresql package.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || { \
	  echo "installing PostgreSQL's server programs (Debian package postgresql)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }

test: setup postgres
	PATH=$(BIN):$$PATH pytest

benchmark: setup
	PATH=$(BIN):$$PATH dvc repro download
	PATH=$(BIN):$$PATH PYTHONPATH=src python -m kdistill.benchmark

ui: setup
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port 5000
