"""The real `dvc repro` in a temporary copy of the project, on a tiny CIFAR-10-layout archive served
over loopback HTTP: every output, the MLflow record, and which stages a params change reruns."""

from __future__ import annotations

import io
import json
import re
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from scipy import stats

from conftest import PIPELINE_SEEDS as SEEDS
from helpers import BIN, repro, set_param, sh, stage_record
from kdistill.control.registry import STAGES, TRAININGS, stage_param_keys
from kdistill.pipeline.checkpoints import load_checkpoint
from kdistill.sources.dataset import ImageDataset

pytestmark = pytest.mark.e2e
TRAINING_STAGES = list(TRAININGS)


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
        # The phases cover the stage: what none of them timed is a rounding error, not a hidden cost.
        assert -0.05 <= seconds["other"] < 0.5 and seconds["total"] >= metrics["wall_time_s"] > seconds["start-up"]
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
    weights = io.BytesIO()
    torch.save(load_checkpoint(outputs / "models" / "distill_kd.pt")[0].state_dict(), weights)
    assert kd["model_kib"] == pytest.approx(weights.getbuffer().nbytes / 1024, rel=0.01) and kd["latency_ms"] > 0
    assert kd["params"] == load_checkpoint(outputs / "models" / "distill_kd.pt")[1]["params"]
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
    sh(str(BIN / "dvc"), "plots", "show", cwd=project, env=env)  # as the README shows it: HTML
    page = (project / "dvc_plots" / "index.html").read_text()
    assert "test_accuracy" in page and "train_loss" in page
    # A rendering, not a result: `git add -A && git commit` (docs/team.md) must not pick it up.
    assert "dvc_plots" not in sh("git", "status", "--porcelain", "--untracked-files=all", cwd=project, env=env)


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
            assert [m.step for m in client.get_metric_history(run.info.run_id, "test_accuracy")] == [1]
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


# Every stage's keys in dvc.yaml are checked against the registry for every stage (test_registry.py);
# here DVC really reruns on a change of a method's own key. A change of distill_kd.T is run for
# real by test_experiments.py's diff test, a change of `seeds` (every student's key, not the
# teacher's) by its review test.
@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        (None, None, set()),  # also: whatever other tests changed, `restored` put the project back exactly
        ("distill_regressor.feature_map_weight", 0.5, {"check_params", "distill_regressor", "report"}),
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
