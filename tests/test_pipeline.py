"""The real `dvc repro` in a temporary copy of the project, on a tiny CIFAR-10-layout archive served
over loopback HTTP: every output, the MLflow record, and which stages a params change reruns."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import ROOT
from kdistill.checkpoints import load_checkpoint
from kdistill.pipeline import STAGE_PARAMS, TRAINING_STAGES

ALL_STAGES = ["download", *TRAINING_STAGES, "report"]
BIN = Path(sys.executable).parent


def copy_project(destination: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if name == "dvc.lock" or name.startswith(("metrics/", "models/")) or not (ROOT / name).is_file():
            continue  # start from nothing: the project's own results must not leak in
        (destination / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, destination / name)
    return destination


def sh(*args: str, cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def set_param(project: Path, key: str, value: object) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    section, leaf = key.split(".")
    params[section][leaf] = value
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def repro(project: Path, env: dict[str, str]) -> set[str]:
    output = sh(str(BIN / "dvc"), "repro", cwd=project, env=env)
    return set(re.findall(r"Running stage '(\w+)'", output))


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, cifar_archive):
    """A project copy that has run `dvc repro` once, 1 epoch, on data fetched over loopback HTTP."""
    import http.server
    import functools
    import threading

    archive, digest = cifar_archive
    project = copy_project(tmp_path_factory.mktemp("project"))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(archive.parent))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    set_param(project, "data.url", f"http://127.0.0.1:{server.server_address[1]}/{archive.name}")
    set_param(project, "data.md5", digest)
    set_param(project, "train.epochs", 1)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    env.pop("MLFLOW_TRACKING_URI", None)
    sh("git", "init", "-q", cwd=project, env=env)
    sh("git", "add", "-A", cwd=project, env=env)
    sh("git", "commit", "-qm", "tiny", cwd=project, env=env)
    ran = repro(project, env)
    yield project, env, ran
    server.shutdown()
    server.server_close()


def test_first_run_runs_all_seven_stages(pipeline):
    _, _, ran = pipeline
    assert ran == set(ALL_STAGES)


def test_every_output_is_there_and_self_describing(pipeline):
    project, _, _ = pipeline
    for stage in TRAINING_STAGES:
        metrics = json.loads((project / "metrics" / f"{stage}.json").read_text())
        model, payload = load_checkpoint(project / "models" / f"{stage}.pt")
        expected = 1_186_986 if stage == "train_teacher" else 267_738
        assert metrics["parameters"] == expected == sum(p.numel() for p in model.parameters())
        assert 0 <= metrics["test_accuracy"] <= 100 and metrics["epochs"] == 1
        assert payload["stage"] == stage and payload["params"]["train.epochs"] == 1
        history = pd.read_csv(project / "metrics" / "history" / f"{stage}.csv")
        assert list(history["epoch"]) == [1] and {"train_loss", "test_accuracy"} <= set(history.columns)
    report = json.loads((project / "metrics" / "report.json").read_text())
    assert set(report["methods"]) == set(TRAINING_STAGES)
    markdown = (project / "metrics" / "report.md").read_text()
    for method in ("Teacher", "CE + KD", "CE + cosine", "CE + regressor"):
        assert method in markdown
    assert not list(project.rglob(".*.partial"))


def test_dvc_sees_metrics_and_plots(pipeline):
    project, env, _ = pipeline
    shown = json.loads(sh(str(BIN / "dvc"), "metrics", "show", "--json", cwd=project, env=env))
    files = next(iter(shown.values()))["data"]
    assert "metrics/distill_kd.json" in files
    plots = sh(str(BIN / "dvc"), "plots", "show", "--json", cwd=project, env=env)
    assert "test_accuracy" in plots and "train_loss" in plots


def test_mlflow_has_one_run_per_stage_with_params_metrics_and_model(pipeline):
    from mlflow.tracking import MlflowClient

    project, _, _ = pipeline
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("knowledge-distillation")
    runs = client.search_runs([experiment.experiment_id])
    by_name = {run.info.run_name: run for run in runs}
    assert len(runs) == 6 and set(by_name) == {*TRAINING_STAGES, "report"}
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True).stdout.strip()
    for stage in TRAINING_STAGES:
        run = by_name[stage]
        assert run.info.status == "FINISHED"
        assert set(run.data.params) == set(STAGE_PARAMS[stage])
        assert run.data.params["train.lr"] == "0.001"
        assert run.data.tags["mlflow.source.git.commit"] == commit and run.data.tags["stage"] == stage
        assert run.data.metrics["parameters"] > 0
        metrics = json.loads((project / "metrics" / f"{stage}.json").read_text())
        assert run.data.metrics["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
        assert metrics["mlflow_run_id"] == run.info.run_id
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "test_accuracy") if m.step > 0]
        assert steps == [1]
    assert float(by_name["distill_kd"].data.params["distill_kd.T"]) == 2
    models = client.search_logged_models(experiment_ids=[experiment.experiment_id])
    assert {m.name for m in models} == set(TRAINING_STAGES)
    artifacts = {a.path for a in client.list_artifacts(by_name["report"].info.run_id)}
    assert {"report.md", "report.json"} <= artifacts


def test_logged_model_loads_back_and_predicts(pipeline):
    import mlflow
    import torch

    project, _, _ = pipeline
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    run_id = json.loads((project / "metrics" / "distill_kd.json").read_text())["mlflow_run_id"]
    experiment = mlflow.get_experiment_by_name("knowledge-distillation")
    model_info = mlflow.search_logged_models(experiment_ids=[experiment.experiment_id], output_format="list",
                                             filter_string=f"source_run_id = '{run_id}'")[0]
    loaded = mlflow.pytorch.load_model(model_info.model_uri)
    reference, _ = load_checkpoint(project / "models" / "distill_kd.pt")
    images = torch.randn(5, 3, 32, 32)
    assert torch.allclose(loaded(images), reference.eval()(images), atol=1e-5)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        (None, None, set()),
        ("distill_kd.T", 4, {"distill_kd", "report"}),
        ("distill_kd.ce_loss_weight", 0.5, {"distill_kd", "report"}),
        ("distill_cosine.hidden_rep_loss_weight", 0.5, {"distill_cosine", "report"}),
        ("distill_regressor.feature_map_weight", 0.5, {"distill_regressor", "report"}),
        ("train.lr", 0.002, {*TRAINING_STAGES, "report"}),
    ],
)
def test_a_params_change_reruns_exactly_the_stages_that_read_it(pipeline, key, value, expected):
    project, env, _ = pipeline
    if key:
        set_param(project, key, value)
    assert repro(project, env) == expected
    assert repro(project, env) == set(), "a second repro with nothing changed must run nothing"
