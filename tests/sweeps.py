"""What the sweep tests share: a project to sweep, the environment Ray runs in, and what DVC and MLflow hold."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from helpers import BIN, sh
from test_team import patched_env

DVC, KDISTILL = str(BIN / "dvc"), str(BIN / "kdistill")


def sweep_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "RAY_ADDRESS")}
    env.update(PATH=f"{BIN}{os.pathsep}{env['PATH']}", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.com", RAY_USAGE_STATS_ENABLED="0",
               # One cluster of this test's own, on this machine: no token between its processes.
               RAY_AUTH_MODE="disabled",
               # A dead node is noticed in seconds rather than half a minute.
               RAY_health_check_period_ms="1000", RAY_health_check_failure_threshold="3")
    return env


def committed_copy(template: Path, destination: Path, env: dict[str, str]) -> Path:
    """The session's first run (every stage done), its results committed: experiments restore all they do not change."""
    project = destination / "project"
    shutil.copytree(template, project, symlinks=True)
    sh("git", "add", "-A", cwd=project, env=env)
    sh("git", "commit", "-qm", "base results", cwd=project, env=env)
    return project


def experiments(project: Path, env: dict[str, str]) -> dict[str, dict]:
    shown = json.loads(sh(DVC, "exp", "show", "--json", cwd=project, env=env))
    return {exp["name"]: exp["revs"][0]["data"] for rev in shown for exp in (rev.get("experiments") or [])}


ADMIN, WRITER = ("admin", "admin-pw-3e81c2"), ("dana", "dana-pw-b7d2a4")


def runs_by_experiment(uri: str, stage: str | None = "distill_kd") -> dict[str, list]:
    """The store's runs of ``stage`` (None: of every stage), by DVC experiment."""
    import mlflow

    with patched_env(MLFLOW_TRACKING_USERNAME=ADMIN[0], MLFLOW_TRACKING_PASSWORD=ADMIN[1]):
        client = mlflow.tracking.MlflowClient(uri)
        experiment = client.get_experiment_by_name("knowledge-distillation")
        runs = client.search_runs([experiment.experiment_id],
                                  filter_string=f"attributes.run_name = '{stage}'" if stage else "")
    found: dict[str, list] = {}
    for run in runs:
        found.setdefault(run.data.tags.get("dvc.experiment"), []).append(run)
    return found


TRAININGS = ("stages/train_", "stages/distill_")


def training_experiment(processes: Callable[[], list[psutil.Process]], sweep: subprocess.Popen,
                        timeout: float = 600) -> str:
    """Until one of ``processes`` is a training stage at work; its experiment's name, from `dvc exp run -n`.
    Fails with the sweep's output if the sweep ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sweep.poll() is not None:
            stdout, stderr = sweep.communicate()
            pytest.fail(f"the sweep ended (exit {sweep.returncode}) before a training started:\n{stdout}\n{stderr}")
        try:
            lines = [process.cmdline() for process in processes()]
        except psutil.NoSuchProcess:
            continue
        if any(marker in " ".join(line) for line in lines for marker in TRAININGS):
            return next(line[line.index("-n") + 1] for line in lines if {"exp", "run", "-n"} <= set(line))
        time.sleep(0.1)
    pytest.fail("no training stage started")


def until_running(uri: str, name: str, timeout: float = 60) -> set[str]:
    """Until experiment ``name`` has a run in progress in the store; the stages whose runs are in progress."""
    deadline = time.monotonic() + timeout
    while not (running := {run.info.run_name for run in runs_by_experiment(uri, None).get(name, [])
                           if run.info.status == "RUNNING"}):
        assert time.monotonic() < deadline, f"{name} started no run"
        time.sleep(0.2)
    return running
