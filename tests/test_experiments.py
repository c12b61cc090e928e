"""Experiments and collaboration on the real pipeline (a tiny CIFAR-10-layout archive, 1 epoch, two
seeds): diffs between commits, a queued parallel sweep, the tracking server, adding a method, review."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from scipy import stats

from conftest import PIPELINE_SEEDS
from helpers import BIN, commit_all, free_port, repro, set_param, sh, stage_record, state_kept, wait_for_http
from kdistill.control.registry import METHODS, TRAININGS, stage_param_keys

pytestmark = pytest.mark.e2e
SEEDS = PIPELINE_SEEDS
TRAINING_STAGES = list(TRAININGS)


def test_params_and_metrics_diff_between_two_commits(restored):
    project, env, _ = restored
    commit_all(project, env, "baseline results")  # the first run's, at the default T=2
    set_param(project, "distill_kd.T", 8)  # a temperature no other test uses: DVC's run-cache cannot restore it
    assert repro(project, env) == {"check_params", "distill_kd", "report"}
    commit_all(project, env, "T=8")
    params_diff = json.loads(sh(str(BIN / "dvc"), "params", "diff", "HEAD~1", "HEAD", "--json", cwd=project, env=env))
    changed = params_diff["params.yaml"]
    assert list(changed) == ["distill_kd.T"] and (changed["distill_kd.T"]["old"], changed["distill_kd.T"]["new"]) == (2, 8)
    metrics_diff = json.loads(sh(str(BIN / "dvc"), "metrics", "diff", "HEAD~1", "HEAD", "--all", "--json",
                                 cwd=project, env=env))
    kd = metrics_diff["metrics/distill_kd.json"]
    assert "test_accuracy" in kd and kd["test_accuracy"]["new"] == json.loads(
        (project / "metrics" / "distill_kd.json").read_text())["test_accuracy"]
    assert "metrics/train_teacher.json" not in metrics_diff or not any(
        "diff" in v and v["diff"] for v in metrics_diff["metrics/train_teacher.json"].values())


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


TOY_SPEC = '''"""KD whose temperature falls linearly from T_start to T_end over the first anneal_epochs (a toy)."""

from __future__ import annotations

from pydantic import Field

from kdistill.methods.method import Method, MethodParams, PositiveFloat, Weight


class Params(MethodParams):
    T_start: PositiveFloat = 8.0
    T_end: PositiveFloat = 2.0
    anneal_epochs: float = Field(default=1.0, gt=0)
    soft_target_loss_weight: Weight = 0.25
    ce_loss_weight: Weight = 0.75


METHOD = Method(name="distill_annealed", label="Student, CE + annealed KD",
                summary="LightNN with cross-entropy + KD at a temperature annealed from T_start to T_end",
                losses=f"{__package__}.losses", params=Params)
'''

TOY_LOSSES = '''"""The annealed KD's loss."""

from __future__ import annotations

from kdistill.core.objectives import Objective, Shapes, Term, cross_entropy
from kdistill.methods.kd.losses import SoftTargetLoss


class AnnealedSoftTargetLoss(SoftTargetLoss):
    def __init__(self, start: float, end: float, epochs: float) -> None:
        super().__init__(start)
        self.start, self.end, self.epochs = start, end, epochs

    def forward(self, student_logits, teacher_logits, progress):
        self.temperature = self.start + (self.end - self.start) * min(progress / self.epochs, 1.0)
        return super().forward(student_logits, teacher_logits)


def objective(params, shapes: Shapes) -> Objective:
    loss = AnnealedSoftTargetLoss(params.T_start, params.T_end, params.anneal_epochs)
    return Objective([Term("soft_target", params.soft_target_loss_weight, loss,
                           ("student_logits", "teacher_logits", "progress")),
                      cross_entropy(params.ce_loss_weight)])
'''

TOY_PARAMS = """
distill_annealed:  # a toy: KD with an annealed temperature
  T_start: 8.0
  T_end: 2.0
  anneal_epochs: 1.0
  soft_target_loss_weight: 0.25
  ce_loss_weight: 0.75
"""


@pytest.fixture
def toy_method_added(pipeline):
    """README's "Add a method" steps in the pipeline's project, undone afterwards."""
    project, env, _ = pipeline
    commit_all(project, env, "before the toy method")
    with state_kept(project):
        yield project, env
        shutil.rmtree(project / "src" / "kdistill" / "methods" / "annealed", ignore_errors=True)  # a failed test may leave it


def test_adding_a_method_is_one_folder_one_params_section_and_a_regenerated_dvc_yaml(toy_method_added):
    from mlflow.tracking import MlflowClient

    project, env = toy_method_added
    # 1. the method's folder (spec, losses); 2. its params.yaml section; 3. `kdistill dvc-yaml` (run from this copy)
    folder = project / "src" / "kdistill" / "methods" / "annealed"
    folder.mkdir()
    (folder / "spec.py").write_text(TOY_SPEC)
    (folder / "losses.py").write_text(TOY_LOSSES)
    with open(project / "params.yaml", "a") as params:
        params.write(TOY_PARAMS)
    sh(sys.executable, "-m", "kdistill.cli", "dvc-yaml", cwd=project, env={**env, "PYTHONPATH": "src"})
    status = sh("git", "status", "--porcelain", "--untracked-files=all", cwd=project, env=env).splitlines()
    assert sorted(line[3:] for line in status) == [
        "dvc.yaml", "params.yaml", "src/kdistill/methods/annealed/losses.py", "src/kdistill/methods/annealed/spec.py",
        "stages/distill_annealed.py"]
    # 4. dvc repro runs the new stage (and the checks and report that read every method), nothing else
    assert repro(project, env) == {"check_params", "distill_annealed", "report"}
    metrics = stage_record(project, "distill_annealed")
    assert list(metrics["per_seed"]) == [str(s) for s in SEEDS]
    rows = {row["stage"]: row for row in json.loads((project / "metrics" / "report.json").read_text())["rows"]}
    assert rows["distill_annealed"]["method"] == "Student, CE + annealed KD" and rows["distill_annealed"]["seeds"] == len(SEEDS)
    assert "Student, CE + annealed KD " in (project / "metrics" / "report.md").read_text()
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("knowledge-distillation").experiment_id
    runs = client.search_runs([experiment], "attributes.run_name = 'distill_annealed'")
    assert sorted(r.data.tags["seed"] for r in runs) == sorted(str(s) for s in SEEDS)
    assert {r.data.params["distill_annealed.T_start"] for r in runs} == {"8.0"}
    terms = [m.key for m in client.get_metric_history(runs[0].info.run_id, "train_loss.soft_target")]
    assert terms, "the new method's loss terms are logged by name"

    # Removing it again (folder, section, regenerated files) reruns the report: no stale row stays.
    shutil.rmtree(folder)
    (project / "params.yaml").write_text((project / "params.yaml").read_text().replace(TOY_PARAMS, ""))
    sh(sys.executable, "-m", "kdistill.cli", "dvc-yaml", cwd=project, env={**env, "PYTHONPATH": "src"})
    assert not (project / "stages" / "distill_annealed.py").exists(), "the generator removes the scripts it made"
    assert repro(project, env) == {"check_params", "report"}
    rows = json.loads((project / "metrics" / "report.json").read_text())["methods"]
    assert set(rows) == set(TRAINING_STAGES)


def test_review_compares_two_experiments_over_three_seeds(restored):
    import dvc.api

    project, env, _ = restored
    commit_all(project, env, "before the review")
    # Only distill_kd (and what it depends on) runs: the other methods keep their two seeds on both sides.
    for name, temperature in (("kd-t2", 2), ("kd-t4", 4)):
        output = sh(str(BIN / "dvc"), "exp", "run", "-n", name, "-S", "seeds=[42,7,3]", "-S",
                    f"distill_kd.T={temperature}", "distill_kd", cwd=project, env=env)
        # The teacher is upstream of distill_kd: a change of the students' seeds must not retrain it.
        assert set(re.findall(r"Running stage '(\w+)'", output)) == {"check_params", "distill_kd"}, output
    review = [sys.executable, "-m", "kdistill.cli", "review", "--baseline", "kd-t2", "--candidate", "kd-t4"]
    result = subprocess.run([*review, "--fail-on-regression"], cwd=project, capture_output=True, text=True,
                            env={**env, "PYTHONPATH": "src"}, timeout=300)
    text = result.stdout
    assert "| `distill_kd.T` | 2 | 4 |" in text and "`seeds`" not in text, text

    def per_seed(rev: str) -> dict[str, float]:
        return json.loads(dvc.api.read("metrics/runs/distill_kd.json", repo=str(project), rev=rev))["per_seed"]

    old, new = per_seed("kd-t2"), per_seed("kd-t4")
    assert sorted(old) == sorted(new) == ["3", "42", "7"]
    seeds = sorted(old)
    paired = stats.ttest_rel([new[s] for s in seeds], [old[s] for s in seeds])
    kd_row = next(line for line in text.splitlines() if line.startswith("| Student, CE + KD |"))
    cells = [cell.strip() for cell in kd_row.strip("|").split("|")]
    assert cells[1:4] == [f"{np.mean(list(old.values())):.2f} (n=3)", f"{np.mean(list(new.values())):.2f} (n=3)", "3"]
    if np.isfinite(paired.statistic):
        low, high = paired.confidence_interval(0.95)
        assert cells[4] == f"{np.mean([new[s] - old[s] for s in seeds]):.2f} [{low:.2f}, {high:.2f}]"
        worse = high < 0
    else:
        worse = np.mean([new[s] - old[s] for s in seeds]) < 0
    assert result.returncode == (1 if worse else 0), result.stderr
    for label in (m.label for name, m in METHODS.items() if name != "distill_kd"):
        assert f"| {label} |" in text and "unchanged" in next(line for line in text.splitlines()
                                                             if line.startswith(f"| {label} |"))
    unknown = subprocess.run([*review[:-1], "no-such-experiment"], cwd=project, capture_output=True, text=True,
                             env={**env, "PYTHONPATH": "src"}, timeout=300)
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr
    assert "'no-such-experiment' is neither a git revision nor a DVC experiment" in unknown.stderr
