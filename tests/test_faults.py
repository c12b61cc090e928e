"""Faults provoked for real: a training stage killed mid-training or before its first epoch, and
code changed under a resume point."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from helpers import stage_record
from stageprocess import STAGE, after_epoch, kill_when, make_project, runs, stage_command, stage_env

pytestmark = pytest.mark.slow


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
    assert [m.step for m in client.get_metric_history(after[0].info.run_id, "test_accuracy")] == [1, 2, 3]
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


def test_a_resume_point_made_by_other_code_is_not_used(tmp_path, slow_archive):
    archive, digest = slow_archive
    project = make_project(tmp_path / "p", archive, digest, epochs=2)
    kill_when(project, after_epoch(1))
    engine = project / "src" / "kdistill" / "core" / "engine.py"
    engine.write_text(engine.read_text() + "\n# an edit to the training code\n")
    result = subprocess.run(stage_command(STAGE), cwd=project, env=stage_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "not resuming seed 42 from epoch 1: its code changed since; starting over" in result.stdout
    assert "epoch 1/2" in result.stdout and "resuming" not in result.stdout.replace("not resuming", "")
    _, after = runs(project)
    assert sorted(r.info.status for r in after) == ["FAILED", "FINISHED"]
