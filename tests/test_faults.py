"""Faults provoked for real: a stage killed mid-training, code changed under a resume point, a
tracking server that is down from the start or dies mid-training."""

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

from conftest import ROOT
from fakedata import make_cifar10_archive
from helpers import BIN, free_port, stage_record, wait_for_http
from kdistill.data import prepare

pytestmark = pytest.mark.slow

STAGE = "train_teacher"


def make_project(path: Path, archive: Path, digest: str, epochs: int) -> Path:
    """What a training stage needs: its code, params.yaml, dvc.yaml and the prepared dataset."""
    path.mkdir()
    for name in ("dvc.yaml", "src", "stages"):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(ROOT / name, path / name, **({"ignore": shutil.ignore_patterns("__pycache__", "*.egg-info")}
                                          if (ROOT / name).is_dir() else {}))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(url=str(archive), md5=digest)
    params["train"]["epochs"] = epochs
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
    kill_when(project, after_epoch(1))
    assert not (project / "models" / f"{STAGE}.pt").exists(), "a killed stage must not leave a model"
    client, before = runs(project)
    assert [r.info.status for r in before] == ["RUNNING"]

    result = subprocess.run(stage_command(STAGE), cwd=project, env=stage_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "resuming seed 42 after epoch 1" in result.stdout
    assert "epoch 1/3" not in result.stdout, "epoch 1 was trained again"

    expected = stage_record(reference, STAGE)
    actual = stage_record(project, STAGE)
    assert actual["per_seed"] == expected["per_seed"] and actual["train_loss"] == pytest.approx(expected["train_loss"], rel=1e-6)
    assert _same_history(project, reference)
    import pandas as pd

    trained_here = pd.read_csv(project / "metrics" / "history" / f"{STAGE}.csv")["epoch_seconds"][1:].sum()
    assert actual["seconds"]["epochs"] == pytest.approx(trained_here, abs=0.05), "epoch 1 was another process's"
    assert actual["seconds"]["checkpoints and per-epoch logging"] >= 0
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


def after_epoch(n: int):
    return lambda saved: saved["state"] is not None and saved["state"]["epoch"] == n


def test_a_resume_point_made_by_other_code_is_not_used(tmp_path, slow_archive):
    archive, digest = slow_archive
    project = make_project(tmp_path / "p", archive, digest, epochs=2)
    kill_when(project, after_epoch(1))
    engine = project / "src" / "kdistill" / "engine.py"
    engine.write_text(engine.read_text() + "\n# an edit to the training code\n")
    result = subprocess.run(stage_command(STAGE), cwd=project, env=stage_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "not resuming seed 42 from epoch 1: its code changed since; starting over" in result.stdout
    assert "epoch 1/2" in result.stdout and "resuming" not in result.stdout.replace("not resuming", "")
    _, after = runs(project)
    assert sorted(r.info.status for r in after) == ["FAILED", "FINISHED"]


@pytest.mark.server
def test_a_tracking_server_dying_mid_training_loses_no_epoch(tmp_path, slow_archive):
    archive, digest = slow_archive
    project = make_project(tmp_path / "p", archive, digest, epochs=3)
    port, store = free_port(), tmp_path / "server"
    store.mkdir()
    uri = f"http://127.0.0.1:{port}"

    def server() -> subprocess.Popen:
        process = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
             "--artifacts-destination", str(store / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for_http(f"{uri}/health", process)
        return process

    first = server()
    stage = subprocess.Popen(stage_command(STAGE), cwd=project, env=stage_env(MLFLOW_TRACKING_URI=uri),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(project, stage, after_epoch(1))
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    died = time.monotonic()
    _, err = stage.communicate(timeout=120)
    assert stage.returncode == 2 and uri in err and "Traceback" not in err, err
    assert time.monotonic() - died < 60, "the stage must give up within a bounded time"
    kept = resume_state(project)["state"]["epoch"]  # on disk before the server was told of it
    assert kept >= 1

    second = server()
    try:
        result = subprocess.run(stage_command(STAGE), cwd=project, env=stage_env(MLFLOW_TRACKING_URI=uri),
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        assert f"resuming seed 42 after epoch {kept}" in result.stdout and "epoch 1/3" not in result.stdout
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        (run,) = client.search_runs([client.get_experiment_by_name("knowledge-distillation").experiment_id])
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "test_accuracy") if m.step]
        assert sorted(steps) == [1, 2, 3] and run.info.status == "FINISHED"
    finally:
        os.killpg(second.pid, signal.SIGKILL)
        second.wait()


def test_tracking_server_down_fails_fast_naming_the_uri(tmp_path, cifar_archive):
    archive, digest = cifar_archive
    project = make_project(tmp_path / "p", archive, digest, epochs=1)
    uri = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = subprocess.run(stage_command("train_student_ce"), cwd=project, env=stage_env(MLFLOW_TRACKING_URI=uri),
                            capture_output=True, text=True, timeout=120)
    assert time.monotonic() - started < 30
    assert result.returncode == 2 and uri in result.stderr and "Traceback" not in result.stderr
    assert "epoch" not in result.stdout and not (project / "models").exists()


def test_a_diverged_training_writes_no_model_and_no_metrics(tmp_path, cifar_archive):
    archive, digest = cifar_archive
    project = make_project(tmp_path / "p", archive, digest, epochs=1)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"]["std"] = [1e-45] * 3  # 1/(255 std) overflows fp32: inputs become inf and NaN, so does the loss
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    result = subprocess.run(stage_command("train_student_ce"), cwd=project, env=stage_env(), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2 and "loss became nan at epoch 1" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not (project / "models").exists() and not (project / "metrics").exists()
