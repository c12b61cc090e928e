"""Sweeps and the tracking server on the real pipeline: a queued parallel sweep into the project's one
store, and every stage's runs served over REST."""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest

from conftest import PIPELINE_SEEDS
from helpers import BIN, commit_all, free_port, sh, stage_record, wait_for_http
from kdistill.control.registry import TRAININGS, stage_param_keys

pytestmark = pytest.mark.e2e
SEEDS = PIPELINE_SEEDS
TRAINING_STAGES = list(TRAININGS)


def test_queued_sweep_runs_in_parallel_into_the_projects_one_store(restored):
    from mlflow.tracking import MlflowClient

    project, env, _ = restored
    commit_all(project, env, "before sweep")
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment_id = client.get_experiment_by_name("knowledge-distillation").experiment_id
    runs_before = len(client.search_runs([experiment_id], max_results=1000))
    started_ms = time.time() * 1000
    # Temperatures no other test uses: DVC's run-cache would otherwise restore them without running.
    sh(str(BIN / "dvc"), "exp", "run", "--queue", "-S", "distill_kd.T=1,3", cwd=project, env=env)
    # One thread each, as the README says: two experiments of two threads each on two cores busy-wait.
    sh(str(BIN / "dvc"), "queue", "start", "-j", "2", cwd=project, env={**env, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status = sh(str(BIN / "dvc"), "queue", "status", cwd=project, env=env)
        if not re.search(r"\b(Queued|Running)\b", status):
            break
        time.sleep(5)  # each poll is a `dvc` process: polling often would slow the experiments it waits for
    assert status.count("Success") == 2, status
    shown = json.loads(sh(str(BIN / "dvc"), "exp", "show", "--json", cwd=project, env=env))
    experiments = {exp["name"]: exp for rev in shown for exp in (rev.get("experiments") or [])}
    assert len(experiments) == 2
    temperatures = set()
    for name, exp in experiments.items():
        data = exp["revs"][0]["data"]
        temperatures.add(data["params"]["params.yaml"]["data"]["distill_kd"]["T"])
        assert "test_accuracy" in data["metrics"]["metrics/distill_kd.json"]["data"]
        logs = sh(str(BIN / "dvc"), "queue", "logs", name, cwd=project, env=env)
        assert "database is locked" not in logs
    assert temperatures == {1, 3}
    runs = client.search_runs([experiment_id], max_results=1000)
    # each experiment: distill_kd (one run per seed) and report, all in the project's store
    assert len(runs) - runs_before == 2 * (len(SEEDS) + 1)
    tagged = {run.data.tags.get("dvc.experiment") for run in runs if run.info.start_time >= started_ms}
    assert tagged == set(experiments)
    assert not list((project / ".dvc" / "tmp").rglob("mlflow.db"))


@pytest.mark.server
def test_mlflow_server_on_loopback_serves_every_stages_runs_over_rest(pipeline, tmp_path):
    import urllib.request

    project, env, _ = pipeline
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{project / 'mlflow.db'}",
         "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_http(f"{base}/health", server)

        def call(path: str, body: dict | None = None) -> dict:
            data = json.dumps(body).encode() if body is not None else None
            request = urllib.request.Request(f"{base}/api/2.0/mlflow/{path}", data=data,
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())

        experiment = call("experiments/get-by-name?experiment_name=knowledge-distillation")["experiment"]
        runs = call("runs/search", {"experiment_ids": [experiment["experiment_id"]], "max_results": 1000})["runs"]
        for stage in TRAINING_STAGES:
            metrics = stage_record(project, stage)
            served = {run["info"]["run_id"]: run for run in runs}
            for seed, run_id in metrics["mlflow_run_ids"].items():
                run = served[run_id]
                params = {p["key"]: p["value"] for p in run["data"]["params"]}
                values = {m["key"]: m["value"] for m in run["data"]["metrics"]}
                assert run["info"]["run_name"] == stage and params["seed"] == seed
                assert {*stage_param_keys(stage), "seed", "method", "ce_loss_weight"} <= set(params)
                assert values["test_accuracy"] == pytest.approx(metrics["per_seed"][seed])
    finally:
        server.terminate()
        server.wait(timeout=30)
