"""Side by side: this project against the tutorial's way, per training step and for the whole pipeline.

    python -m benchmarks.speed [--dataset data/dataset.pt] [--batches 20] [--output table.json]
    python -m benchmarks.speed --pipeline [--images 10000] [--epochs 1]

(from the project root, with the project's environment active; ``make benchmark`` runs the first.)

Both paths run the engine's own ``train_step`` (the code the stages run) on the same prepared
images, networks, objectives and batch size, on the same device; only how the step is fed and
computed differs, as in the tutorial: there, per-image PIL conversion + ToTensor + Normalize, a
DataLoader with 2 workers, fp32 NCHW, the tutorial's layer order (ReLU, then max-pool), and the
teacher run forward on every distillation batch; here, one tensor on the device normalized once (in
the dtype the first convolution reads) and gathered per batch, bf16 autocast where native,
channels_last, pooling before the ReLU (the same function), Adam fused into one kernel, and the
teacher's outputs cached once. The ratios are what to read (absolute numbers move with whatever
else the machine does). Every distillation method of the registry gets a row. Not part of the test
suite: it measures, it asserts nothing.

``--pipeline`` times every training end to end, both ways, one after the other on the first
``--images`` training images (all test images): the tutorial's notebook (one process: teacher, CE
student, then each method with its per-batch teacher forward, each evaluated on the test set)
against `dvc repro` in a temporary copy of this project (a process per stage, params validation,
MLflow tracking, model export, the report), both starting from decoded images.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, Dataset

from kdistill.control.params import load_params
from kdistill.control.registry import CHECK_PARAMS, DOWNLOAD, METHODS, TRAININGS
from kdistill.core.data import DeviceImages, teacher_outputs
from kdistill.core.engine import evaluate, train_step
from kdistill.core.networks import DeepNN, LightNN, Network
from kdistill.core.objectives import TEACHER_PREFIX, Objective, Shapes, cross_entropy
from kdistill.core.recipe import Recipe
from kdistill.core.runtime import Runtime, resolve_runtime
from kdistill.entry import configure_process
from kdistill.sources.dataset import ImageDataset

BATCH_SIZE = 128
SHAPES = Shapes(LightNN.feature_shape, DeepNN.feature_shape)


class PILImages(Dataset):
    """What torchvision's CIFAR10 dataset does per item: array -> PIL image -> ToTensor -> Normalize."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: list[float], std: list[float]) -> None:
        from torchvision import transforms

        self.images = images.permute(0, 2, 3, 1).numpy()  # HWC, as CIFAR10 keeps them
        self.labels = labels.tolist()
        self.transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


# The project's one-off steps: rows with no counterpart in the tutorial's way.
NORMALIZATION = "images normalized (once per stage)"
TEACHER_CACHE = "teacher outputs cache (once per teacher)"


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(step: Callable[[], int], batches: int, device: torch.device, warmup: int = 2) -> float:
    """Images per second over ``batches`` calls of ``step`` (each returns its batch size)."""
    for _ in range(warmup):
        step()
    _synchronize(device)
    started = time.perf_counter()
    images = sum(step() for _ in range(batches))
    _synchronize(device)  # a GPU's queued work belongs to the measurement
    return images / (time.perf_counter() - started)


def _loader_batches(dataset: Dataset, shuffle: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    while True:
        yield from DataLoader(dataset, batch_size=BATCH_SIZE, shuffle=shuffle, num_workers=2)


def in_tutorial_order(model: Network) -> Network:
    """``model`` with the tutorial's layer order, ReLU before each max-pool, in place.

    kdistill.core.networks pools first: the same function and gradients, computed faster. The tutorial's
    way runs the layers as the tutorial writes them.
    """
    layers = list(model.features)
    for i in range(len(layers) - 1):
        if isinstance(layers[i], nn.MaxPool2d) and isinstance(layers[i + 1], nn.ReLU):
            layers[i], layers[i + 1] = layers[i + 1], layers[i]
    model.features = nn.Sequential(*layers)
    return model


def _student(architecture: type[Network], objective: Objective, device: torch.device, lr: float, *,
             tutorials: bool) -> tuple[Network, Objective, torch.optim.Optimizer]:
    """The tutorial's layer order in NCHW with its Adam, or this project's network in channels_last with its fused Adam."""
    torch.manual_seed(0)
    model = architecture()
    model = in_tutorial_order(model).to(device) if tutorials else model.to(device, memory_format=torch.channels_last)
    objective = objective.to(device)
    parameters = [*model.parameters(), *objective.parameters()]
    optimizer = torch.optim.Adam(parameters, lr=lr) if tutorials else Recipe(lr=lr).make_optimizer(parameters)
    return model.train(), objective.train(), optimizer


def tutorial_way(dataset: ImageDataset, mean: list[float], std: list[float], lr: float, batches: int,
                 teacher: DeepNN, device: torch.device) -> dict[str, float]:
    fp32 = Runtime(device, None)
    loader = _loader_batches(PILImages(dataset.train_images, dataset.train_labels, mean, std), shuffle=True)
    results = {}
    model, objective, optimizer = _student(DeepNN, Objective([cross_entropy()]), device, lr, tutorials=True)

    def teacher_step() -> int:
        inputs, labels = (t.to(device) for t in next(loader))
        train_step(model, objective, optimizer, fp32, inputs, {"labels": labels})
        return len(inputs)

    results["teacher training"] = _timed(teacher_step, max(batches // 2, 3), device)
    teacher = in_tutorial_order(copy.deepcopy(teacher)).to(device).eval()
    for name, method in METHODS.items():
        student, objective, optimizer = _student(LightNN, method.build_objective(method.params(), SHAPES), device, lr,
                                                 tutorials=True)

        def distill_step(student=student, objective=objective, optimizer=optimizer) -> int:
            inputs, labels = (t.to(device) for t in next(loader))
            with torch.no_grad():  # the tutorial's teacher forward on every batch
                features = teacher.forward_features(inputs)
                logits = teacher.forward_head(features)
            values = {"labels": labels, "teacher_logits": logits, "teacher_features": features, "progress": 5.0}
            train_step(student, objective, optimizer, fp32, inputs, values)
            return len(inputs)

        results[f"{name} epoch"] = _timed(distill_step, batches, device)
    # Timed as the project's evaluation is: one pass over the whole test set, the tutorial's `test()`.
    test = DataLoader(PILImages(dataset.test_images, dataset.test_labels, mean, std), batch_size=BATCH_SIZE,
                      num_workers=2)
    _synchronize(device)
    started = time.perf_counter()
    _test_the_tutorials_way(model, test, device)
    _synchronize(device)
    results["evaluation"] = len(dataset.test_labels) / (time.perf_counter() - started)
    return results


@torch.no_grad()
def _test_the_tutorials_way(model: Network, test: DataLoader, device: torch.device) -> None:
    model.eval()
    for inputs, labels in test:
        (model(inputs.to(device)).argmax(1) == labels.to(device)).sum().item()


def project_way(dataset: ImageDataset, mean: list[float], std: list[float], lr: float, batches: int,
                teacher: DeepNN, runtime: Runtime) -> dict[str, float]:
    device = runtime.device
    results = {}
    # Once per stage, in place of the tutorial's transforms per image: its cost is reported, not hidden.
    _synchronize(device)
    started = time.perf_counter()
    train_data = DeviceImages(dataset.train_images, dataset.train_labels, mean, std, runtime)
    _synchronize(device)
    results[NORMALIZATION] = len(train_data) / (time.perf_counter() - started)
    test_data = DeviceImages(dataset.test_images, dataset.test_labels, mean, std, runtime)
    generator = torch.Generator().manual_seed(0)

    def batch_index(size: int) -> torch.Tensor:
        return torch.randint(0, size, (BATCH_SIZE,), generator=generator).to(device)

    model, objective, optimizer = _student(DeepNN, Objective([cross_entropy()]), device, lr, tutorials=False)

    def teacher_step() -> int:
        index = batch_index(len(train_data))
        train_step(model, objective, optimizer, runtime, train_data.inputs(index), {"labels": train_data.labels[index]})
        return BATCH_SIZE

    results["teacher training"] = _timed(teacher_step, max(batches // 2, 3), device)
    # The cache the train_teacher stage writes once; its cost is reported, not hidden.
    subset = DeviceImages(dataset.train_images[: BATCH_SIZE * batches], dataset.train_labels[: BATCH_SIZE * batches],
                          mean, std, runtime)
    teacher = teacher.to(device, memory_format=torch.channels_last)
    _synchronize(device)
    started = time.perf_counter()
    cached = {f"{TEACHER_PREFIX}{k}": v.to(device) for k, v in teacher_outputs(teacher, subset, runtime).items()}
    _synchronize(device)
    results[TEACHER_CACHE] = len(subset) / (time.perf_counter() - started)
    for name, method in METHODS.items():
        student, objective, optimizer = _student(LightNN, method.build_objective(method.params(), SHAPES), device, lr,
                                                 tutorials=False)

        def distill_step(student=student, objective=objective, optimizer=optimizer) -> int:
            index = batch_index(len(subset))
            values = {"labels": subset.labels[index], "progress": 5.0, **{k: v[index] for k, v in cached.items()}}
            train_step(student, objective, optimizer, runtime, subset.inputs(index), values)
            return BATCH_SIZE

        results[f"{name} epoch"] = _timed(distill_step, batches, device)
    _synchronize(device)
    started = time.perf_counter()
    evaluate(model, test_data, runtime)
    results["evaluation"] = len(test_data) / (time.perf_counter() - started)
    return results


def _train_and_test_the_tutorials_way(student: Network, objective: Objective, train: DataLoader,
                                      test: DataLoader, epochs: int, lr: float, device: torch.device,
                                      teacher: Network | None = None) -> None:
    fp32 = Runtime(device, None)
    optimizer = torch.optim.Adam([*student.parameters(), *objective.parameters()], lr=lr)
    student.train()
    for epoch in range(epochs):
        for inputs, labels in train:
            inputs, labels = inputs.to(device), labels.to(device)
            values: dict[str, torch.Tensor | float] = {"labels": labels, "progress": epoch + 1.0}
            if teacher is not None:
                with torch.no_grad():
                    features = teacher.forward_features(inputs)
                    values.update(teacher_features=features, teacher_logits=teacher.forward_head(features))
            total, _ = train_step(student, objective, optimizer, fp32, inputs, values)
            total.item()  # the tutorial's `running_loss += loss.item()`: a host sync per step
    _test_the_tutorials_way(student, test, device)


def tutorial_pipeline(dataset: ImageDataset, mean: list[float], std: list[float], lr: float, epochs: int,
                      device: torch.device) -> None:
    """The tutorial's notebook on ``dataset``: every training and test, its way (see the module's doc)."""
    train = DataLoader(PILImages(dataset.train_images, dataset.train_labels, mean, std), batch_size=BATCH_SIZE,
                       shuffle=True, num_workers=2)
    test = DataLoader(PILImages(dataset.test_images, dataset.test_labels, mean, std), batch_size=BATCH_SIZE,
                      num_workers=2)
    torch.manual_seed(42)
    teacher = in_tutorial_order(DeepNN()).to(device)
    _train_and_test_the_tutorials_way(teacher, Objective([cross_entropy()]), train, test, epochs, lr, device)
    for method in [None, *METHODS.values()]:
        torch.manual_seed(42)
        objective = Objective([cross_entropy()]) if method is None else method.build_objective(method.params(), SHAPES)
        student = in_tutorial_order(LightNN()).to(device)
        _train_and_test_the_tutorials_way(student, objective.to(device), train, test, epochs, lr, device,
                                          None if method is None else teacher)


_NOT_COPIED = (".git", ".venv", "data", "models", "metrics", "mlflow.db", "mlruns", ".resume", "dvc.lock", "tmp",
               "cache", "__pycache__", "*.egg-info")


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> float:
    """Seconds ``args`` took; its output goes to a log beside the project copy, shown if it fails."""
    log = cwd.parent / "commands.log"
    started = time.perf_counter()
    with log.open("a") as out:
        result = subprocess.run(args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
    if result.returncode:
        raise SystemExit(f"benchmark: {' '.join(args)} failed:\n{log.read_text()[-4000:]}")
    return time.perf_counter() - started


def pipeline_benchmark(dataset: ImageDataset, images: int, epochs: int, root: Path) -> pd.DataFrame:
    subset = ImageDataset(dataset.train_images[:images], dataset.train_labels[:images], dataset.test_images,
                          dataset.test_labels, dataset.classes)
    with tempfile.TemporaryDirectory(prefix="kdistill-benchmark-") as tmp:
        subset.save(Path(tmp) / "subset.pt")
        project = Path(tmp) / "project"
        shutil.copytree(root, project, ignore=shutil.ignore_patterns(*_NOT_COPIED))
        # The project's tools first on PATH (the stages run `python`); the copy's own MLflow store.
        env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
        for command in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "benchmark"],
                        ["dvc", "repro", CHECK_PARAMS]):
            _run(command, project, env)
        # Both ways start from decoded images: the download stage is recorded as done, not timed.
        shutil.copy(Path(tmp) / "subset.pt", project / "data" / "dataset.pt")
        _run(["dvc", "commit", "-f", DOWNLOAD], project, env)
        # Then the benchmark's params: the timed `dvc repro` validates them first, as after any edit.
        params = yaml.safe_load((project / "params.yaml").read_text())
        params["train"]["epochs"], params["seeds"] = epochs, [42]
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        print(f"benchmark: the tutorial's way, {images} images, {epochs} epoch(s) ...", flush=True)
        tutorial = _run([sys.executable, "-m", "benchmarks.speed", "--tutorial-pipeline", "--dataset",
                         str(Path(tmp) / "subset.pt"), "--epochs", str(epochs), "--params", str(project / "params.yaml")],
                        project, env)
        print(f"benchmark: the tutorial's way took {tutorial:.1f} s; now `dvc repro` ...", flush=True)
        ours = _run(["dvc", "repro"], project, env)
        stages = {stage: json.loads((project / "metrics" / "runs" / f"{stage}.json").read_text()) for stage in TRAININGS}
    rows = {"whole pipeline (s)": (tutorial, ours)}
    table = pd.DataFrame.from_dict(rows, orient="index", columns=["tutorial's way", "project"])
    table["speed-up"] = table["tutorial's way"] / table["project"]
    per_stage = pd.DataFrame({stage: record["seconds"] for stage, record in stages.items()}).T
    per_stage.index.name = "stage (s)"
    print(table.to_markdown(floatfmt=".1f"))
    print(per_stage.to_markdown(floatfmt=".1f"))
    return table


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, default=Path("data/dataset.pt"),
                        help="prepared images (written by `dvc repro download`)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--batches", type=int, default=20, help="timed batches per measurement (>= 3)")
    parser.add_argument("--output", type=Path, help="also write the table as JSON here")
    parser.add_argument("--pipeline", action="store_true", help="time the whole pipeline both ways instead")
    parser.add_argument("--images", type=int, default=10_000, help="with --pipeline: training images used")
    parser.add_argument("--epochs", type=int, default=1, help="with --pipeline: epochs of every training")
    parser.add_argument("--tutorial-pipeline", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.batches < 3:
        parser.error(f"--batches must be >= 3, got {args.batches}")
    if args.images < 1 or args.epochs < 1:
        parser.error(f"--images and --epochs must be >= 1, got {args.images} and {args.epochs}")
    configure_process()
    params = load_params(args.params, only_known_sections=True)
    dataset = ImageDataset.load(args.dataset)
    runtime = resolve_runtime(params.train.device, params.train.precision)
    if args.tutorial_pipeline:
        tutorial_pipeline(dataset, params.data.mean, params.data.std, params.train.lr, args.epochs, runtime.device)
        return pd.DataFrame()
    if args.pipeline:
        return pipeline_benchmark(dataset, args.images, args.epochs, args.params.resolve().parent)
    mean, std, lr = params.data.mean, params.data.std, params.train.lr
    torch.manual_seed(0)
    teacher = DeepNN().eval()
    name = torch.cuda.get_device_name(runtime.device) if runtime.device.type == "cuda" else "cpu"
    print(f"benchmark: {args.batches} batches of {BATCH_SIZE} per measurement on {runtime.device} ({name}); "
          f"tutorial's way fp32 NCHW, DataLoader(num_workers=2); project's way {runtime.precision}, channels_last, fused Adam; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    slow = tutorial_way(dataset, mean, std, lr, args.batches, teacher, runtime.device)
    fast = project_way(dataset, mean, std, lr, args.batches, teacher, runtime)
    order = list(dict.fromkeys([*slow, *fast]))
    table = pd.DataFrame({"tutorial's way img/s": pd.Series(slow), "project img/s": pd.Series(fast)}).reindex(order)
    table["speed-up"] = table["project img/s"] / table["tutorial's way img/s"]
    table.index.name = "measurement"
    print(table.to_markdown(floatfmt=".1f", missingval=""))
    if args.output:
        table.reset_index().to_json(args.output, orient="records", indent=2)
    return table


if __name__ == "__main__":
    main()
