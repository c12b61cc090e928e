"""Faults provoked for real: a stage killed mid-training, a tracking server that is down."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import ROOT
from fakedata import make_cifar10_archive
from kdistill.data import prepare

STAGE = "train_teacher"


def make_project(path: Path, archive: Path, digest: str, epochs: int) -> Path:
    """Just what a training stage needs: params.yaml, dvc.yaml and the prepared dataset."""
    path.mkdir()
    (path / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(url=str(archive), md5=digest)
    params["train"]["epochs"] = epochs
    (path / "params.yaml").write_text(yaml.safe_dump(params))
    prepare(str(archive), digest, "cifar10", path / "data" / "raw", path / "data" / "dataset.pt")
    return path


def stage_command(stage: str) -> list[str]:
    return [sys.executable, str(ROOT / "stages" / f"{stage}.py")]


def stage_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "DVC_ROOT")}
    return {**env, "PYTHONPATH": str(ROOT / "src"), **extra}


def resume_state(project: Path) -> dict | None:
    path = project / ".resume" / f"{STAGE}-seed42.pt"
    if not path.is_file():
        return None
    return torch.load(path, weights_only=True)


def kill_when(project: Path, ready, timeout: float = 300) -> None:
    process = subprocess.Popen(stage_command(STAGE), cwd=project, env=stage_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        saved = resume_state(project)
        if saved is not None and ready(saved):
            process.send_signal(signal.SIGKILL)
            process.wait()
            return
        time.sleep(0.02)
    process.kill()
    pytest.fail("the stage ended before it could be killed at the wanted point")


def runs(project: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("knowledge-distillation")
    return client, client.search_runs([experiment.experiment_id])


@pytest.fixture(scope="module")
def slow_archive(tmp_path_factory) -> tuple[Path, str]:
    """Enough images that a teacher epoch takes a moment, so the kill lands mid-training."""
    path = tmp_path_factory.mktemp("slow") / "cifar-10-python.tar.gz"
    return path, make_cifar10_archive(path, per_batch=300, test=100, seed=5)


def test_killed_training_resumes_from_its_last_epoch_with_identical_results(tmp_path, slow_archive):
    archive, digest = slow_archive
    reference = make_project(tmp_path / "reference", archive, digest, epochs=3)
    subprocess.run(stage_command(STAGE), cwd=reference, env=stage_env(), check=True, capture_output=True)

    project = make_project(tmp_path / "killed", archive, digest, epochs=3)
    kill_when(project, lambda saved: saved["state"] is not None and saved["state"]["epoch"] == 1)
    assert not (project / "models" / f"{STAGE}.pt").exists(), "a killed stage must not leave a model"
    client, before = runs(project)
    assert [r.info.status for r in before] == ["RUNNING"]

    result = subprocess.run(stage_command(STAGE), cwd=project, env=stage_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "resuming seed 42 after epoch 1" in result.stdout
    assert "epoch 1/3" not in result.stdout, "epoch 1 was trained again"

    expected = json.loads((reference / "metrics" / f"{STAGE}.json").read_text())
    actual = json.loads((project / "metrics" / f"{STAGE}.json").read_text())
    assert actual["per_seed"] == expected["per_seed"] and actual["train_loss"] == pytest.approx(expected["train_loss"], rel=1e-6)
    assert _same_history(project, reference)
    client, after = runs(project)
    assert len(after) == 1 and after[0].info.run_id == before[0].info.run_id and after[0].info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(after[0].info.run_id, "test_accuracy") if m.step] == [1, 2, 3]
    assert not (project / ".resume" / f"{STAGE}-seed42.pt").exists()


def _same_history(project: Path, reference: Path) -> bool:
    """Every per-epoch loss and accuracy equal (the epochs' durations differ, of course)."""
    import pandas as pd

    a = pd.read_csv(project / "metrics" / "history" / f"{STAGE}.csv").drop(columns="epoch_seconds")
    b = pd.read_csv(reference / "metrics" / "history" / f"{STAGE}.csv").drop(columns="epoch_seconds")
    return bool(((a - b).abs() < 1e-6).all().all())


def test_a_run_killed_before_its_first_epoch_is_marked_failed(tmp_path, slow_archive):
    archive, digest = slow_archive
    project = make_project(tmp_path / "early", archive, digest, epochs=1)
    kill_when(project, lambda saved: saved["state"] is None)
    subprocess.run(stage_command(STAGE), cwd=project, env=stage_env(), check=True, capture_output=True)
    _, after = runs(project)
    assert sorted(r.info.status for r in after) == ["FAILED", "FINISHED"]


def test_tracking_server_down_fails_fast_naming_the_uri(tmp_path, cifar_archive):
    archive, digest = cifar_archive
    project = make_project(tmp_path / "p", archive, digest, epochs=1)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{probe.getsockname()[1]}"
    started = time.monotonic()
    result = subprocess.run(stage_command("train_student_ce"), cwd=project, env=stage_env(MLFLOW_TRACKING_URI=uri),
                            capture_output=True, text=True, timeout=120)
    assert time.monotonic() - started < 30
    assert result.returncode == 2 and uri in result.stderr and "Traceback" not in result.stderr
    assert "epoch" not in result.stdout and not (project / "models").exists()
