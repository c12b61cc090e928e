"""Running a training stage as its own process, as DVC would, and watching its resume point."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from helpers import ROOT, shipped_params
from kdistill.sources.prepare import prepare

# The CE student: a training like any other (resume, tracking, outputs), a quarter of the teacher's work per image.
STAGE = "train_student_ce"


def make_project(path: Path, archive: Path, digest: str, epochs: int) -> Path:
    """What a training stage needs: its code, params.yaml, dvc.yaml and the prepared dataset."""
    path.mkdir()
    for name in ("dvc.yaml", "src", "stages"):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(ROOT / name, path / name, **({"ignore": shutil.ignore_patterns("__pycache__", "*.egg-info")}
                                          if (ROOT / name).is_dir() else {}))
    params = shipped_params()
    params["data"].update(url=str(archive), md5=digest, format="cifar10")
    params["train"]["epochs"] = epochs
    params["seeds"] = [42]
    (path / "params.yaml").write_text(yaml.safe_dump(params))
    prepare(str(archive), digest, "cifar10", path / "data" / "raw", path / "data" / "dataset.pt")
    return path


def stage_command(stage: str) -> list[str]:
    return [sys.executable, f"stages/{stage}.py"]


def stage_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "DVC_ROOT")}
    return {**env, "PYTHONPATH": "src", **extra}


def resume_state(project: Path) -> dict | None:
    path = project / ".resume" / f"{STAGE}-seed42.pt"
    if not path.is_file():
        return None
    return torch.load(path, weights_only=True)


def kill_when(project: Path, ready, timeout: float = 300) -> None:
    process = subprocess.Popen(stage_command(STAGE), cwd=project, env=stage_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(project, process, ready, timeout)
    process.send_signal(signal.SIGKILL)
    process.wait()


def wait_until(project: Path, process: subprocess.Popen, ready, timeout: float = 300) -> None:
    """Until the stage's resume file satisfies ``ready``; fails if the stage ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        saved = resume_state(project)
        if saved is not None and ready(saved):
            return
        time.sleep(0.02)
    process.kill()
    pytest.fail("the stage ended before the wanted point")


def runs(project: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("knowledge-distillation")
    return client, client.search_runs([experiment.experiment_id])


def after_epoch(n: int):
    return lambda saved: saved["state"] is not None and saved["state"]["epoch"] == n
