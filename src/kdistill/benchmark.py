"""Side-by-side throughput: this project's training path against a tutorial-style baseline.

    python -m kdistill.benchmark [--dataset data/dataset.pt] [--batches 20]

Both paths run in this one process, on the same prepared images, networks and batch size; the
ratios are what to read (absolute numbers move with whatever else the machine is doing). The
baseline is the tutorial's code path, re-implemented here: torchvision-style per-image PIL
conversion + ToTensor + Normalize, a DataLoader with 2 workers, fp32 NCHW, and the teacher run
forward on every distillation batch. Not part of the test suite: it measures, it asserts nothing.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from kdistill.config import Params, load_params
from kdistill.data import ImageDataset
from kdistill.engine import DeviceImages, Runtime, evaluate, keep_freed_memory, resolve_runtime, teacher_outputs
from kdistill.models import ConvClassifier, DeepNN, LightNN
from kdistill.objectives import Batch, Objective, StudentOutput, build_objective

BATCH_SIZE = 128
METHODS = ("distill_kd", "distill_cosine", "distill_regressor")


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


def _timed(step: Callable[[], int], batches: int, warmup: int = 2) -> float:
    """Images per second over ``batches`` calls of ``step`` (each returns its batch size)."""
    for _ in range(warmup):
        step()
    started = time.perf_counter()
    images = sum(step() for _ in range(batches))
    return images / (time.perf_counter() - started)


def _loader_batches(dataset: Dataset, shuffle: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    while True:
        yield from DataLoader(dataset, batch_size=BATCH_SIZE, shuffle=shuffle, num_workers=2)


def _student_step(model: ConvClassifier, objective: Objective, optimizer: torch.optim.Optimizer,
                  inputs: torch.Tensor, batch: Batch, runtime: Runtime) -> int:
    with runtime.autocast():
        features = model.forward_features(inputs)
        total, _ = objective(StudentOutput(model.forward_head(features), features), batch)
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()
    return len(inputs)


def _setup(stage: str, params: Params, architecture: type[ConvClassifier], channels_last: bool):
    torch.manual_seed(0)
    model = architecture()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    objective = build_objective(stage, params)
    optimizer = torch.optim.Adam([*model.parameters(), *objective.parameters()], lr=params.train.lr)
    return model.train(), objective.train(), optimizer


def baseline(dataset: ImageDataset, params: Params, batches: int, teacher: DeepNN) -> dict[str, float]:
    fp32 = Runtime(torch.device("cpu"), None)
    train_set = PILImages(dataset.train_images, dataset.train_labels, params.data.mean, params.data.std)
    test_set = PILImages(dataset.test_images, dataset.test_labels, params.data.mean, params.data.std)
    results = {}
    loader = _loader_batches(train_set, shuffle=True)
    model, objective, optimizer = _setup("train_teacher", params, DeepNN, channels_last=False)

    def teacher_step() -> int:
        inputs, labels = next(loader)
        return _student_step(model, objective, optimizer, inputs, Batch(labels), fp32)

    results["teacher training"] = _timed(teacher_step, max(batches // 2, 3))
    teacher.eval()
    for stage in METHODS:
        student, objective, optimizer = _setup(stage, params, LightNN, channels_last=False)

        def distill_step() -> int:
            inputs, labels = next(loader)
            with torch.no_grad():  # the tutorial's teacher forward on every batch
                feature_map = teacher.forward_features(inputs)
                logits = teacher.forward_head(feature_map)
            return _student_step(student, objective, optimizer, inputs, Batch(labels, logits, feature_map), fp32)

        results[f"{stage} epoch"] = _timed(distill_step, batches)
    test_loader = _loader_batches(test_set, shuffle=False)
    model.eval()

    @torch.no_grad()
    def eval_step() -> int:
        inputs, labels = next(test_loader)
        (model(inputs).argmax(1) == labels).sum().item()
        return len(inputs)

    results["evaluation"] = _timed(eval_step, batches)
    return results


def project(dataset: ImageDataset, params: Params, batches: int, teacher: DeepNN, runtime: Runtime) -> dict[str, float]:
    keep_freed_memory()
    train_data = DeviceImages(dataset.train_images, dataset.train_labels, params.data.mean, params.data.std,
                              runtime.device)
    test_data = DeviceImages(dataset.test_images, dataset.test_labels, params.data.mean, params.data.std,
                             runtime.device)
    generator = torch.Generator().manual_seed(0)
    results = {}

    def next_index() -> torch.Tensor:
        return torch.randint(0, len(train_data), (BATCH_SIZE,), generator=generator).to(runtime.device)

    model, objective, optimizer = _setup("train_teacher", params, DeepNN, channels_last=True)
    model.to(runtime.device)

    def teacher_step() -> int:
        index = next_index()
        return _student_step(model, objective, optimizer, train_data.inputs(index), Batch(train_data.labels[index]),
                             runtime)

    results["teacher training"] = _timed(teacher_step, max(batches // 2, 3))
    # The cache the train_teacher stage writes once; its cost is reported, not hidden.
    subset = DeviceImages(dataset.train_images[: BATCH_SIZE * batches], dataset.train_labels[: BATCH_SIZE * batches],
                          params.data.mean, params.data.std, runtime.device)
    teacher = teacher.to(runtime.device, memory_format=torch.channels_last)
    started = time.perf_counter()
    cached = teacher_outputs(teacher, subset, runtime)
    results["teacher outputs cache (once per teacher)"] = len(subset) / (time.perf_counter() - started)
    cached = {name: value.to(runtime.device) for name, value in cached.items()}
    for stage in METHODS:
        student, objective, optimizer = _setup(stage, params, LightNN, channels_last=True)
        student.to(runtime.device)
        objective.to(runtime.device)

        def distill_step() -> int:
            index = torch.randint(0, len(subset), (BATCH_SIZE,), generator=generator).to(runtime.device)
            batch = Batch(subset.labels[index], cached["logits"][index], cached["features"][index])
            return _student_step(student, objective, optimizer, subset.inputs(index), batch, runtime)

        results[f"{stage} epoch"] = _timed(distill_step, batches)
    started = time.perf_counter()
    evaluate(model, test_data, runtime)
    results["evaluation"] = len(test_data) / (time.perf_counter() - started)
    return results


TARGETS = {"teacher training": 2.5, "distill_kd epoch": 10, "distill_cosine epoch": 10, "distill_regressor epoch": 10}


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, default=Path("data/dataset.pt"),
                        help="prepared images (written by `dvc repro download`)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--batches", type=int, default=20, help="timed batches per measurement (>= 3)")
    parser.add_argument("--output", type=Path, help="also write the table as JSON here")
    args = parser.parse_args(argv)
    if args.batches < 3:
        parser.error(f"--batches must be >= 3, got {args.batches}")
    params = load_params(args.params)
    dataset = ImageDataset.load(args.dataset)
    runtime = resolve_runtime(params.train.device, params.train.precision)
    torch.manual_seed(0)
    teacher = DeepNN().eval()
    print(f"benchmark: {args.batches} batches of {BATCH_SIZE} per measurement; project path on {runtime.device}, "
          f"{runtime.precision}; baseline on cpu, fp32, DataLoader(num_workers=2); torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads", flush=True)
    slow = baseline(dataset, params, args.batches, teacher)
    fast = project(dataset, params, args.batches, teacher, runtime)
    order = list(dict.fromkeys([*slow, *fast]))
    table = pd.DataFrame({"baseline img/s": pd.Series(slow), "project img/s": pd.Series(fast)}).reindex(order)
    table["speed-up"] = table["project img/s"] / table["baseline img/s"]
    table["target"] = pd.Series({k: f">= {v:g}x" for k, v in TARGETS.items()}).reindex(order).fillna("")
    table.index.name = "measurement"
    print(table.to_markdown(floatfmt=".1f", missingval=""))
    if args.output:
        table.reset_index().to_json(args.output, orient="records", indent=2)
    return table


if __name__ == "__main__":
    main()
