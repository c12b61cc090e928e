"""`make ui`, as the README starts it: the MLflow UI over the project's store, with no warning a user cannot act on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import psutil
import pytest

from helpers import BIN, copy_project, free_port, wait_for_http

pytestmark = pytest.mark.server


def test_make_ui_serves_the_projects_store_without_warnings(tmp_path):
    project = copy_project(tmp_path / "project")
    port = free_port()
    venv = Path(sys.prefix)
    # -o: this environment is already set up; make must not rebuild it in the copy.
    command = ["make", "-o", f"{venv}/bin/.installed", "ui", f"VENV={venv}", f"UI_PORT={port}"]
    # Not inherited from `make test`: `make ui` must switch MLflow's job runner off itself.
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_SERVER_ENABLE_JOB_EXECUTION"}
    server = subprocess.Popen(command, cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**env, "PATH": f"{BIN}:{os.environ['PATH']}"}, start_new_session=True)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/health", server)
        serving = [" ".join(child.cmdline()) for child in psutil.Process(server.pid).children(recursive=True)]
        assert any("uvicorn" in line for line in serving), serving
        assert not [line for line in serving if "huey" in line or "job_runner" in line], serving
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search",
                                         data=json.dumps({"max_results": 10}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200 and "experiments" in json.load(response)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        output = server.communicate(timeout=60)[0]
    assert (project / "mlflow.db").is_file(), output  # the store `dvc repro`'s stages track to
    assert f"http://127.0.0.1:{port}/#/experiments/1" in output
    assert "DeprecationWarning" not in output and "will be removed" not in output, output
