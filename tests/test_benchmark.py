"""The benchmarks: the speed benchmark runs the engine's own step both ways, the GPU check runs anywhere torch does."""

from __future__ import annotations

import json

import pytest
import torch
from benchmarks import speed as benchmark

from conftest import ROOT
from helpers import run_without
from kdistill.control.registry import METHODS, TRAININGS
from kdistill.sources.cifar import read_cifar10

pytestmark = pytest.mark.slow


@pytest.fixture
def tiny(cifar_archive, tmp_path):
    archive, _ = cifar_archive
    path = tmp_path / "dataset.pt"
    read_cifar10(archive).save(path)
    return path


def test_step_benchmark_has_a_row_per_method_and_measures_both_ways(tiny, tmp_path):
    # Four copies of the tiny training split: the tutorial's DataLoader (2 worker processes) then
    # starts again every 6 batches rather than every 2, which would dominate this test's time.
    dataset = torch.load(tiny, weights_only=True)
    for key in ("train_images", "train_labels"):
        dataset[key] = dataset[key].repeat(4, *([1] * (dataset[key].dim() - 1)))
    torch.save(dataset, tiny)
    table = benchmark.main(["--dataset", str(tiny), "--batches", "3", "--output", str(tmp_path / "t.json")])
    assert {f"{name} epoch" for name in METHODS} | {"teacher training", "evaluation"} <= set(table.index)
    one_off = table.loc[[benchmark.NORMALIZATION, benchmark.TEACHER_CACHE]]
    assert one_off["tutorial's way img/s"].isna().all() and (one_off["project img/s"] > 0).all()
    measured = table.drop(index=one_off.index)
    assert (measured["tutorial's way img/s"] > 0).all() and (measured["project img/s"] > 0).all()
    assert (tmp_path / "t.json").stat().st_size > 0


def test_the_tutorials_notebook_trains_every_network_its_way(tiny, monkeypatch):
    calls = []
    original = benchmark.train_step
    monkeypatch.setattr(benchmark, "train_step", lambda *args: calls.append(args) or original(*args))
    dataset = torch.load(tiny, weights_only=True)
    steps = -(-len(dataset["train_labels"]) // benchmark.BATCH_SIZE)
    benchmark.main(["--dataset", str(tiny), "--tutorial-pipeline", "--epochs", "1"])
    assert len(calls) == steps * (2 + len(METHODS)), "teacher, CE student and every method, one epoch each"
    runtime, inputs = calls[-1][3], calls[-1][4]
    assert runtime.autocast_dtype is None and inputs.is_contiguous(), "the tutorial's way: fp32, NCHW"
    assert {"teacher_logits", "teacher_features"} <= set(calls[-1][5]), "a live teacher forward per batch"


def test_the_gpu_check_runs_without_mlflow_dvc_or_pydantic_and_compares_every_training(tmp_path):
    heavy = ("mlflow", "dvc", "pydantic", "pandas", "scipy", "matplotlib", "sqlalchemy")
    output = tmp_path / "gpu.json"
    result = run_without(heavy, [str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--images", "64",
                                 "--steps", "3", "--batch-size", "16", "--output", str(output)], ROOT, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    assert set(report["trainings"]) == set(TRAININGS) and report["torch"] == torch.__version__
    for name, row in report["trainings"].items():
        assert len(row["cpu_losses"]) == len(row["device_losses"]) == 3
        # CPU against CPU in fp32: the same kernels, so the same digits and a repeatable run.
        assert row["max_relative_difference"] == 0 and row["deterministic"], name
        assert row["epoch_seconds"] > 0 and row["images_per_second"] > 0
    assert "distill_kd: max relative loss difference CPU vs cpu" in result.stdout


def test_the_peak_benchmark_counts_each_networks_flops_against_the_matrix_products():
    from benchmarks import peak

    table = peak.main(["--size", "256", "--steps", "2", "--device", "cpu", "--networks", "LightNN", "resnet8"])
    steps = table[table.index.str.contains("training step")]
    assert list(steps.index.str.split().str[0]) == ["LightNN", "resnet8"]
    assert (steps["images/s"] > 0).all() and (steps["GFLOP/s"] > 0).all()
    assert (steps["fraction of the matrix-product limit"] > 0).all()
    assert table.index.str.contains("matrix product 256x256 \\(fp32\\)").any()


def test_the_literature_benchmark_trains_the_pair_both_ways_and_prints_the_ratio(tiny, capsys):
    from benchmarks import literature

    table = literature.main(["--dataset", str(tiny), "--params", str(ROOT / "params.yaml"), "--images", "128",
                             "--teacher", "resnet8", "--student", "resnet8"])
    ways = table.drop(index="speed-up")
    assert list(ways.index) == ["literature's way", "project"]
    assert (ways["seconds (epoch + test)"] > 0).all() and ways["test accuracy %"].between(0, 100).all()
    ratio = table.loc["speed-up", "seconds (epoch + test)"]
    assert ratio == pytest.approx(ways.loc["literature's way", "seconds (epoch + test)"] /
                                  ways.loc["project", "seconds (epoch + test)"])
    assert "one epoch of KD resnet8 -> resnet8 on 128 images" in capsys.readouterr().out
