"""The real `dvc repro` in a temporary copy of the project, on a tiny CIFAR-10-layout archive served
over loopback HTTP: every output, the MLflow record, and which stages a params change reruns."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from helpers import BIN, copy_project, free_port, set_param, sh, stage_record, state_kept, wait_for_http
from kdistill.checkpoints import load_checkpoint
from kdistill.data import ImageDataset
from kdistill.registry import METHODS, STAGES, TRAININGS, stage_param_keys

pytestmark = pytest.mark.e2e
TRAINING_STAGES = list(TRAININGS)
SEEDS = [42, 7]


def repro(project: Path, env: dict[str, str]) -> set[str]:
    """The stages `dvc repro` ran, or restored from DVC's run-cache (they changed either way)."""
    output = sh(str(BIN / "dvc"), "repro", cwd=project, env=env)
    return {a or b for a, b in re.findall(r"Running stage '(\w+)'|Stage '(\w+)' is cached", output)}


@pytest.fixture
def restored(pipeline):
    """The pipeline, put back as it was after the test (params and outputs), whatever the test changed:
    tests that change params do not depend on each other or on their order."""
    project, env, _ = pipeline
    with state_kept(project):
        yield pipeline
    assert repro(project, env) == set(), "the project is back where the first run left it"


@dataclass(frozen=True)
class FirstRun:
    ran: set[str]  # the stages the first `dvc repro` ran
    commit: str  # the git commit it ran at
    outputs: Path  # a copy of its metrics/ and models/
    finished_ms: float  # MLflow runs that started before this are the first run's


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, cifar_archive):
    """A project copy that has run `dvc repro` once, 1 epoch, on data fetched over loopback HTTP."""
    import functools
    import http.server
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
    set_param(project, "seeds", SEEDS)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    env.pop("MLFLOW_TRACKING_URI", None)
    sh("git", "init", "-q", cwd=project, env=env)
    sh("git", "config", "user.name", "test", cwd=project, env=env)
    sh("git", "config", "user.email", "test@example.com", cwd=project, env=env)
    sh("git", "add", "-A", cwd=project, env=env)
    sh("git", "commit", "-qm", "tiny", cwd=project, env=env)
    ran = repro(project, env)
    # What the first run left, kept aside: other tests change the project, in any order.
    commit = sh("git", "rev-parse", "HEAD", cwd=project, env=env).strip()
    first = FirstRun(ran, commit, project.parent / "first-run", time.time() * 1000)
    for name in ("metrics", "models"):
        shutil.copytree(project / name, first.outputs / name)
    yield project, env, first
    server.shutdown()
    server.server_close()


def test_first_run_runs_every_stage(pipeline):
    _, _, first = pipeline
    assert first.ran == set(STAGES)


def test_every_output_is_there_and_self_describing(pipeline):
    project, _, first = pipeline
    outputs = first.outputs
    for stage in TRAINING_STAGES:
        metrics = stage_record(outputs, stage)
        seeds = [42] if stage == "train_teacher" else SEEDS
        expected = 1_186_986 if stage == "train_teacher" else 267_738
        for seed in seeds:
            model, payload = load_checkpoint(outputs / "models" / f"{stage}.pt", seed=seed)
            assert metrics["parameters"] == expected == sum(p.numel() for p in model.parameters())
        assert payload["stage"] == stage and payload["params"]["train.epochs"] == 1 and payload["seeds"] == seeds
        assert list(metrics["per_seed"]) == [str(s) for s in seeds] and metrics["epochs"] == 1
        lean = json.loads((outputs / "metrics" / f"{stage}.json").read_text())
        assert set(lean) == {"test_accuracy", "test_accuracy_std", "seeds", "parameters"}, "DVC metrics stay lean"
        assert metrics["test_accuracy"] == pytest.approx(sum(metrics["per_seed"].values()) / len(seeds))
        history = pd.read_csv(outputs / "metrics" / "history" / f"{stage}.csv")
        assert list(history["epoch"]) == [1] and {"train_loss", "test_accuracy"} <= set(history.columns)
        seconds = metrics["seconds"]  # where the stage's time went
        assert seconds["epochs"] == pytest.approx(history["epoch_seconds"].sum() * len(seeds), abs=0.05)
        assert sum(v for k, v in seconds.items() if k != "total") == pytest.approx(seconds["total"], abs=0.1)
        assert min(seconds["start-up"], seconds["load"], seconds["tracking"], seconds["outputs"]) > 0
        assert (seconds["model export"] > 0) and (("teacher outputs cache" in seconds) == (stage == "train_teacher"))
    report = json.loads((outputs / "metrics" / "report.json").read_text())
    assert set(report["methods"]) == set(TRAINING_STAGES)
    rows = {row["stage"]: row for row in report["rows"]}
    kd, ce = rows["distill_kd"], rows["train_student_ce"]
    paired = stats.ttest_rel([kd["per_seed"][str(s)] for s in SEEDS], [ce["per_seed"][str(s)] for s in SEEDS])
    if np.isfinite(paired.statistic):  # two seeds that agree exactly have no spread to test
        low, high = paired.confidence_interval(0.95)
        assert (kd["diff_low"], kd["diff_high"]) == pytest.approx((low, high))
    assert kd["seeds"] == 2
    assert kd["mlflow_run_ids"].keys() == {"42", "7"} and kd["params"]["distill_kd.T"] == 2
    assert kd["model_kib"] > 0 and kd["latency_ms"] > 0
    markdown = (outputs / "metrics" / "report.md").read_text()
    for label in (t.label for t in TRAININGS.values()):
        assert f"| {label} " in markdown
    assert "95% CI" in markdown and "over 2 seeds" in markdown
    shared = next(line for line in markdown.splitlines() if line.startswith("Shared params:"))
    assert "`seeds=[42, 7]`" in shared and "`train.epochs=1`" in shared and "loss_weight" not in shared
    for picture in ("accuracy.png", "curves.png"):
        assert (outputs / "metrics" / "report" / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(project.rglob(".*.partial")) and not list((project / ".resume").glob("*"))


def test_dvc_sees_metrics_and_plots(pipeline):
    project, env, _ = pipeline
    shown = json.loads(sh(str(BIN / "dvc"), "metrics", "show", "--json", cwd=project, env=env))
    files = next(iter(shown.values()))["data"]
    assert "metrics/distill_kd.json" in files
    plots = sh(str(BIN / "dvc"), "plots", "show", "--json", cwd=project, env=env)
    assert "test_accuracy" in plots and "train_loss" in plots


def test_mlflow_has_one_run_per_stage_and_seed_with_params_metrics_and_model(pipeline):
    from mlflow.tracking import MlflowClient

    project, _, first = pipeline
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("knowledge-distillation")
    runs = [run for run in client.search_runs([experiment.experiment_id], max_results=1000)
            if run.info.start_time <= first.finished_ms]
    dataset = ImageDataset.load(project / "data" / "dataset.pt")
    digests = {split: dataset.digest(split) for split in ("train", "test")}
    by_stage: dict[str, list] = {}
    for run in runs:
        assert run.info.run_name == run.data.tags["stage"] and run.info.status == "FINISHED"
        by_stage.setdefault(run.info.run_name, []).append(run)
    assert {stage: len(r) for stage, r in by_stage.items()} == {
        "train_teacher": 1, **{stage: 2 for stage in TRAINING_STAGES[1:]}, "report": 1}
    assert by_stage["train_teacher"][0].data.tags["seed"] == "42"
    for stage in TRAINING_STAGES:
        metrics = stage_record(first.outputs, stage)
        for run in by_stage[stage]:
            seed = run.data.tags["seed"]
            assert run.data.params["seed"] == seed and metrics["mlflow_run_ids"][seed] == run.info.run_id
            neutral = {"method", "ce_loss_weight", "distill_loss_weight", *(["T"] if f"{stage}.T" in run.data.params else [])}
            assert set(run.data.params) == {*stage_param_keys(stage), "seed", *neutral}
            assert run.data.params["method"] == stage
            assert run.data.params["train.lr"] == "0.001"
            assert run.data.tags["mlflow.source.git.commit"] == first.commit
            assert run.data.metrics["parameters"] > 0
            assert run.data.metrics["test_accuracy"] == pytest.approx(metrics["per_seed"][seed])
            assert [m.step for m in client.get_metric_history(run.info.run_id, "test_accuracy") if m.step > 0] == [1]
            inputs = {d.dataset.name: d.dataset for d in run.inputs.dataset_inputs}
            assert {name: d.digest for name, d in inputs.items()} == digests
    assert float(by_stage["distill_kd"][0].data.params["distill_kd.T"]) == 2
    assert float(by_stage["distill_dkd"][0].data.params["distill_dkd.beta"]) == 8
    dkd = by_stage["distill_dkd"][0].data.params
    assert (float(dkd["ce_loss_weight"]), float(dkd["distill_loss_weight"]), float(dkd["T"])) == (1, 9, 4)
    assert float(by_stage["train_student_ce"][0].data.params["distill_loss_weight"]) == 0
    first_ids = {run.info.run_id for run in runs}
    models = [m for m in client.search_logged_models(experiment_ids=[experiment.experiment_id])
              if m.source_run_id in first_ids]
    assert sorted(m.name for m in models) == sorted(["train_teacher", *[s for s in TRAINING_STAGES[1:]] * 2])
    artifacts = {a.path for a in client.list_artifacts(by_stage["report"][0].info.run_id)}
    assert {"report.md", "report.json", "accuracy.png", "curves.png"} <= artifacts


def test_logged_model_loads_back_and_predicts(pipeline):
    import mlflow
    import torch

    project, _, first = pipeline
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    run_id = stage_record(first.outputs, "distill_kd")["mlflow_run_ids"]["7"]
    experiment = mlflow.get_experiment_by_name("knowledge-distillation")
    model_info = mlflow.search_logged_models(experiment_ids=[experiment.experiment_id], output_format="list",
                                             filter_string=f"source_run_id = '{run_id}'")[0]
    loaded = mlflow.pytorch.load_model(model_info.model_uri)
    reference, _ = load_checkpoint(first.outputs / "models" / "distill_kd.pt", seed=7)
    images = torch.randn(5, 3, 32, 32)
    assert torch.allclose(loaded(images), reference.eval()(images), atol=1e-5)
    signature = mlflow.models.get_model_info(model_info.model_uri).signature
    assert signature is not None and tuple(signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == (-1, 3, 32, 32)


STUDENTS = set(TRAINING_STAGES) - {"train_teacher"}


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        (None, None, set()),
        ("distill_kd.T", 4, {"check_params", "distill_kd", "report"}),
        ("distill_dkd.beta", 4.0, {"check_params", "distill_dkd", "report"}),
        ("distill_attention.beta", 500.0, {"check_params", "distill_attention", "report"}),
        ("distill_regressor.feature_map_weight", 0.5, {"check_params", "distill_regressor", "report"}),
        ("seeds", [42, 7, 3], {"check_params", *STUDENTS, "report"}),
    ],
)
def test_a_params_change_reruns_exactly_the_stages_that_read_it(restored, key, value, expected):
    project, env, _ = restored
    if key:
        set_param(project, key, value)
    assert repro(project, env) == expected
    assert repro(project, env) == set(), "a second repro with nothing changed must run nothing"


def test_a_misspelled_key_fails_dvc_repro_naming_it_though_no_stage_reads_it(restored):
    project, env, _ = restored
    good = (project / "params.yaml").read_text()
    params = yaml.safe_load(good)
    params["distill_kd"]["temp"] = 4
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = subprocess.run([str(BIN / "dvc"), "repro"], cwd=project, env=env, capture_output=True, text=True)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "distill_kd.temp: unknown key" in output and "Traceback" not in output
    assert set(re.findall(r"Running stage '(\w+)'", output)) == {"check_params"}, "nothing may train first"
    (project / "params.yaml").write_text(good)
    assert repro(project, env) <= {"check_params"}


def test_bad_params_fail_fast_and_restoring_them_brings_results_back_without_training(restored):
    project, env, _ = restored
    params = yaml.safe_load((project / "params.yaml").read_text())
    good_t = params["distill_kd"]["T"]
    before = (project / "metrics" / "distill_kd.json").read_text()
    set_param(project, "distill_kd.T", -1)
    result = subprocess.run([str(BIN / "dvc"), "repro"], cwd=project, env=env, capture_output=True, text=True)
    assert result.returncode != 0
    assert "distill_kd.T: Input should be greater than 0 (got -1)" in result.stdout + result.stderr
    assert set(re.findall(r"Running stage '(\w+)'", result.stdout)) == {"check_params"}
    assert "Traceback" not in result.stdout + result.stderr
    set_param(project, "distill_kd.T", good_t)
    assert repro(project, env) <= {"check_params"}, "restoring the value must not train again"
    assert (project / "metrics" / "distill_kd.json").read_text() == before
    assert (project / "models" / "distill_kd.pt").is_file()


def commit_all(project: Path, env: dict[str, str], message: str) -> None:
    sh("git", "add", "-A", cwd=project, env=env)
    sh("git", "commit", "-q", "--allow-empty", "-m", message, cwd=project, env=env)


def test_params_and_metrics_diff_between_two_commits(restored):
    project, env, _ = restored
    # Temperatures no other test uses: each test's changes are its own.
    commit_all(project, env, "baseline results")
    set_param(project, "distill_kd.T", 8)
    repro(project, env)
    commit_all(project, env, "T=8")
    set_param(project, "distill_kd.T", 16)
    assert repro(project, env) == {"check_params", "distill_kd", "report"}
    commit_all(project, env, "T=16")
    params_diff = json.loads(sh(str(BIN / "dvc"), "params", "diff", "HEAD~1", "HEAD", "--json", cwd=project, env=env))
    changed = params_diff["params.yaml"]
    assert list(changed) == ["distill_kd.T"] and (changed["distill_kd.T"]["old"], changed["distill_kd.T"]["new"]) == (8, 16)
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
    sh(str(BIN / "dvc"), "exp", "run", "--queue", "-S", "distill_kd.T=1,3,5,6", cwd=project, env=env)
    # One thread each, as the README says: two experiments of two threads each on two cores busy-wait.
    sh(str(BIN / "dvc"), "queue", "start", "-j", "2", cwd=project, env={**env, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status = sh(str(BIN / "dvc"), "queue", "status", cwd=project, env=env)
        if not re.search(r"\b(Queued|Running)\b", status):
            break
        time.sleep(2)
    assert status.count("Success") == 4, status
    shown = json.loads(sh(str(BIN / "dvc"), "exp", "show", "--json", cwd=project, env=env))
    experiments = {exp["name"]: exp for rev in shown for exp in (rev.get("experiments") or [])}
    assert len(experiments) == 4
    temperatures = set()
    for name, exp in experiments.items():
        data = exp["revs"][0]["data"]
        temperatures.add(data["params"]["params.yaml"]["data"]["distill_kd"]["T"])
        assert "test_accuracy" in data["metrics"]["metrics/distill_kd.json"]["data"]
        logs = sh(str(BIN / "dvc"), "queue", "logs", name, cwd=project, env=env)
        assert "database is locked" not in logs
    assert temperatures == {1, 3, 5, 6}
    runs = client.search_runs([experiment_id], max_results=1000)
    # each experiment: distill_kd (one run per seed) and report, all in the project's store
    assert len(runs) - runs_before == 4 * (len(SEEDS) + 1)
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


TOY_METHOD = '''"""KD whose temperature falls linearly from T_start to T_end over the first anneal_epochs (a toy)."""

from __future__ import annotations

from pydantic import Field

from kdistill.config import PositiveFloat, Weight
from kdistill.methods import Method, MethodParams
from kdistill.methods.kd import SoftTargetLoss
from kdistill.objectives import Objective, Shapes, Term, cross_entropy


class AnnealedSoftTargetLoss(SoftTargetLoss):
    def __init__(self, start: float, end: float, epochs: float) -> None:
        super().__init__(start)
        self.start, self.end, self.epochs = start, end, epochs

    def forward(self, student_logits, teacher_logits, progress):
        self.temperature = self.start + (self.end - self.start) * min(progress / self.epochs, 1.0)
        return super().forward(student_logits, teacher_logits)


class Params(MethodParams):
    T_start: PositiveFloat = 8.0
    T_end: PositiveFloat = 2.0
    anneal_epochs: float = Field(default=1.0, gt=0)
    soft_target_loss_weight: Weight = 0.25
    ce_loss_weight: Weight = 0.75


def objective(params: Params, shapes: Shapes) -> Objective:
    loss = AnnealedSoftTargetLoss(params.T_start, params.T_end, params.anneal_epochs)
    return Objective([Term("soft_target", params.soft_target_loss_weight, loss,
                           ("student_logits", "teacher_logits", "progress")),
                      cross_entropy(params.ce_loss_weight)])


METHOD = Method(name="distill_annealed", label="Student, CE + annealed KD",
                summary="LightNN with cross-entropy + KD at a temperature annealed from T_start to T_end",
                params=Params, objective=objective)
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
        (project / "src" / "kdistill" / "methods" / "annealed.py").unlink(missing_ok=True)  # a failed test may leave it
    assert repro(project, env) == set(), "the project is back where the first run left it"


def test_adding_a_method_is_one_module_one_params_section_and_a_regenerated_dvc_yaml(toy_method_added):
    from mlflow.tracking import MlflowClient

    project, env = toy_method_added
    # 1. the method's module; 2. its params.yaml section; 3. `kdistill dvc-yaml` (run from this copy)
    (project / "src" / "kdistill" / "methods" / "annealed.py").write_text(TOY_METHOD)
    with open(project / "params.yaml", "a") as params:
        params.write(TOY_PARAMS)
    sh(sys.executable, "-m", "kdistill.cli", "dvc-yaml", cwd=project, env={**env, "PYTHONPATH": "src"})
    status = sh("git", "status", "--porcelain", "--untracked-files=all", cwd=project, env=env).splitlines()
    assert sorted(line[3:] for line in status) == [
        "dvc.yaml", "params.yaml", "src/kdistill/methods/annealed.py", "stages/distill_annealed.py"]
    # 4. dvc repro runs the new stage (and the checks and report that read every method), nothing else
    assert repro(project, env) == {"check_params", "distill_annealed", "report"}
    metrics = stage_record(project, "distill_annealed")
    assert list(metrics["per_seed"]) == [str(s) for s in SEEDS]
    rows = {row["stage"]: row for row in json.loads((project / "metrics" / "report.json").read_text())["rows"]}
    assert rows["distill_annealed"]["method"] == "Student, CE + annealed KD" and rows["distill_annealed"]["seeds"] == 2
    assert "Student, CE + annealed KD " in (project / "metrics" / "report.md").read_text()
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("knowledge-distillation").experiment_id
    runs = client.search_runs([experiment], "attributes.run_name = 'distill_annealed'")
    assert sorted(r.data.tags["seed"] for r in runs) == sorted(str(s) for s in SEEDS)
    assert {r.data.params["distill_annealed.T_start"] for r in runs} == {"8.0"}
    terms = [m.key for m in client.get_metric_history(runs[0].info.run_id, "train_loss.soft_target")]
    assert terms, "the new method's loss terms are logged by name"

    # Removing it again (module, section, regenerated files) reruns the report: no stale row stays.
    (project / "src" / "kdistill" / "methods" / "annealed.py").unlink()
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
        sh(str(BIN / "dvc"), "exp", "run", "-n", name, "-S", "seeds=[42,7,3]", "-S", f"distill_kd.T={temperature}",
           "distill_kd", cwd=project, env=env)
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
