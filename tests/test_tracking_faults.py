"""The tracking store failing for real: a server that is down from the start or dies mid-training;
and a training that diverges."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
import yaml

from helpers import BIN, free_port, wait_for_http
from stageprocess import STAGE, after_epoch, make_project, resume_state, stage_command, stage_env, wait_until

pytestmark = pytest.mark.slow


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
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "test_accuracy")]
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
