"""The field's benchmark end to end on tiny data: a CIFAR-100-layout archive over loopback HTTP, a CRD pair
(a published resnet20 teacher, resnet8 students), SGD with a multi-step schedule, crop plus flip, every
method, under the real `dvc repro`; then which stages the new keys rerun. The students train one seed
(7, not the teacher's 42): the same code's statistics over several seeds run on the first run (test_pipeline.py)."""

from __future__ import annotations

import json
import re

import pytest
import torch

from conftest import _git_env, serving
from fakedata import make_cifar100_archive, md5
from helpers import BIN, copy_project, repro, set_param, sh, stage_record
from kdistill.control.registry import METHODS, STAGES, TRAININGS
from kdistill.core.engine import evaluate
from kdistill.core.networks import build_model
from kdistill.core.runtime import resolve_runtime
from kdistill.pipeline.checkpoints import load_checkpoint

pytestmark = pytest.mark.e2e
SEEDS = [7]
RECIPE = {"networks.teacher": "resnet20", "networks.student": "resnet8", "train.optimizer": "sgd", "train.lr": 0.05,
          "train.momentum": 0.9, "train.weight_decay": 5e-4, "train.schedule": "multistep", "train.milestones": [1],
          "train.epochs": 2, "train.batch_size": 32, "train.augment": "crop_flip", "train.precision": "fp32",
          "seeds": SEEDS, "data.format": "cifar100", "distill_dkd.warmup_epochs": 1.0}


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory):
    base = tmp_path_factory.mktemp("benchmark")
    archive = base / "served" / "cifar-100-python.tar.gz"
    archive.parent.mkdir()
    digest = make_cifar100_archive(archive, train=160, test=100)
    torch.manual_seed(3)
    teacher = build_model("resnet20", num_classes=100)
    published = base / "ckpt_epoch_240.pth"
    # RepDistiller's layout: the state dict under "model", beside the training's own record.
    torch.save({"epoch": 240, "model": teacher.state_dict(), "accuracy": 69.06}, published)
    env = _git_env()
    project = copy_project(base / "project")
    with serving(archive.parent) as url:
        for key, value in {**RECIPE, "data.url": f"{url}/{archive.name}",
                           "data.md5": digest, "train_teacher.checkpoint": str(published),
                           "train_teacher.checkpoint_md5": md5(published)}.items():
            set_param(project, key, value)
        for args in (("init", "-q"), ("config", "user.name", "t"), ("config", "user.email", "t@example.com"),
                     ("add", "-A"), ("commit", "-qm", "benchmark")):
            sh("git", *args, cwd=project, env=env)
        ran = repro(project, env)
    return project, env, ran, teacher


def test_every_stage_runs_and_every_method_reports_its_seeds(benchmark):
    project, _, ran, _ = benchmark
    assert ran == set(STAGES)
    for stage in TRAININGS:
        record = stage_record(project, stage)
        seeds = [str(s) for s in SEEDS] if TRAININGS[stage].role == "student" else ["42"]
        assert sorted(record["per_seed"]) == sorted(seeds), stage
        assert all(0 <= value <= 100 for value in record["per_seed"].values())
        assert record["params"]["train.augment"] == "crop_flip" and record["params"]["train.optimizer"] == "sgd"
    report = json.loads((project / "metrics" / "report.json").read_text())
    assert set(report["methods"]) == set(TRAININGS)
    assert "| Student, CE + DKD " in (project / "metrics" / "report.md").read_text()


def test_the_published_teacher_is_evaluated_and_cached_not_trained(benchmark):
    project, _, _, teacher = benchmark
    record = stage_record(project, "train_teacher")
    assert record["train_loss"] is None  # no epoch was trained here
    loaded, payload = load_checkpoint(project / "models" / "train_teacher.pt")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), teacher.state_dict().values(),
                                                 strict=True))
    assert payload["model"] == {"name": "resnet20", "num_classes": 100}
    from kdistill.core.data import DeviceImages
    from kdistill.sources.dataset import ImageDataset

    dataset = ImageDataset.load(project / "data" / "dataset.pt")
    runtime = resolve_runtime("cpu", "fp32")
    params = record["params"]
    test = DeviceImages(dataset.test_images, dataset.test_labels, params["data.mean"], params["data.std"], runtime)
    assert record["per_seed"]["42"] == pytest.approx(evaluate(teacher.to(memory_format=torch.channels_last), test,
                                                              runtime))


def test_the_students_are_the_chosen_network_for_the_datasets_classes(benchmark):
    project, _, _, _ = benchmark
    for stage in ["train_student_ce", *METHODS]:
        _, payload = load_checkpoint(project / "models" / f"{stage}.pt", seed=7)
        assert payload["model"] == {"name": "resnet8", "num_classes": 100} and payload["seeds"] == SEEDS


def _would_run(project, env, key, value) -> set[str]:
    set_param(project, key, value)
    try:
        output = sh(str(BIN / "dvc"), "repro", "--dry", cwd=project, env=env)
    finally:
        sh("git", "checkout", "params.yaml", cwd=project, env=env)
    return set(re.findall(r"Running stage '(\w+)'", output))


STUDENTS = {"train_student_ce", *METHODS}


# `dvc repro --dry` lists the stages whose own params or deps change; `dvc repro` then also runs
# what depends on their outputs (the methods read the teacher's, the report every training's).
# The cross-entropy student reads nothing of the teacher: a new teacher leaves it alone.
@pytest.mark.parametrize(("key", "value", "expected"), [
    ("networks.student", "resnet20", {"check_params", *STUDENTS}),
    ("networks.teacher", "resnet32", {"check_params", "train_teacher", *METHODS}),
    ("train.lr_decay", 0.2, {"check_params", "train_teacher", *STUDENTS}),
    ("train.augment", "none", {"check_params", "train_teacher", *STUDENTS}),
    ("train_teacher.checkpoint_md5", "0" * 32, {"check_params", "download", "train_teacher"}),
    ("distill_dkd.beta", 2.0, {"check_params", "distill_dkd"}),
])
def test_the_new_keys_rerun_exactly_the_stages_that_read_them(benchmark, key, value, expected):
    project, env, _, _ = benchmark
    assert _would_run(project, env, key, value) == expected
