"""The GPU check: does the core compute on a GPU what it computes on the CPU, repeatably, and how fast?

    PYTHONPATH=src python benchmarks/gpu_check.py [--device cuda] [--images 50000] [--output gpu.json]

Needs torch and PyYAML only (no MLflow, DVC or pydantic), so it runs on a borrowed GPU machine from
a copy of the project. It reads the shipped params.yaml for the methods' settings and trains on
synthetic images (CIFAR-10's shape, no download), and reports:

- the losses of the first steps of every training, on the CPU against the device, both in IEEE
  fp32 (``train.precision: fp32``; cuDNN's TF32 off);
- whether two runs on the device give the same losses and weights, bit for bit;
- an epoch of the teacher and of each student on the device, in its native precision;
- the device's name and the torch version.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from importlib import import_module
from pathlib import Path
from types import SimpleNamespace

import torch
import yaml

from kdistill.core.data import DeviceImages, teacher_outputs
from kdistill.core.engine import train_step
from kdistill.core.networks import DeepNN, LightNN
from kdistill.core.objectives import TEACHER_PREFIX, Objective, Shapes, cross_entropy
from kdistill.core.recipe import Recipe
from kdistill.core.runtime import Runtime, make_reproducible, resolve_runtime

ROOT = Path(__file__).resolve().parents[1]
SHAPES = Shapes(LightNN.feature_shape, DeepNN.feature_shape)
METHOD_PREFIX = "distill_"  # a method's section is distill_<folder>, its losses kdistill.methods.<folder>.losses


def trainings(params: dict) -> dict[str, tuple[type, object]]:
    """Every training of the pipeline: (network class, objective builder), from params.yaml's sections."""
    found: dict[str, tuple[type, object]] = {
        "train_teacher": (DeepNN, lambda: Objective([cross_entropy()])),
        "train_student_ce": (LightNN, lambda: Objective([cross_entropy()])),
    }
    for section, values in params.items():
        if section.startswith(METHOD_PREFIX):
            losses = import_module(f"kdistill.methods.{section.removeprefix(METHOD_PREFIX)}.losses")
            found[section] = (LightNN, lambda losses=losses, values=values:
                              losses.objective(SimpleNamespace(**values), SHAPES))
    return found


def synthetic(images: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (images, 3, 32, 32), dtype=torch.uint8, generator=generator),
            torch.arange(images) % 10)


def _sync(runtime: Runtime) -> None:
    if runtime.device.type == "cuda":
        torch.cuda.synchronize(runtime.device)


def first_steps(network: type, build: object, data: DeviceImages, teacher: dict[str, torch.Tensor],
                runtime: Runtime, steps: int, batch: int) -> tuple[list[float], torch.Tensor]:
    """The total loss of each of the first ``steps`` steps, and the weights after them (flattened, on the CPU)."""
    torch.manual_seed(42)
    model = network().to(runtime.device, memory_format=torch.channels_last)
    objective = build().to(runtime.device)
    optimizer = Recipe().make_optimizer([*model.parameters(), *objective.parameters()])
    model.train()
    losses = []
    for step in range(steps):
        index = torch.arange(step * batch, (step + 1) * batch, device=runtime.device) % len(data)
        values = {"labels": data.labels[index], "progress": (step + 1) / steps,
                  **{f"{TEACHER_PREFIX}{k}": v[index] for k, v in teacher.items()}}
        total, _ = train_step(model, objective, optimizer, runtime, data.inputs(index), values)
        losses.append(total)
    weights = torch.cat([p.detach().flatten() for p in model.parameters()]).cpu()
    return [float(loss) for loss in losses], weights


def epoch_seconds(network: type, build: object, data: DeviceImages, teacher: dict[str, torch.Tensor],
                  runtime: Runtime, batch: int) -> float:
    torch.manual_seed(0)
    model = network().to(runtime.device, memory_format=torch.channels_last)
    objective = build().to(runtime.device)
    optimizer = Recipe().make_optimizer([*model.parameters(), *objective.parameters()])
    order = torch.randperm(len(data), device=runtime.device)
    batches = -(-len(data) // batch)

    def step(i: int) -> None:
        index = order[i * batch:(i + 1) * batch]
        values = {"labels": data.labels[index], "progress": 1.0,
                  **{f"{TEACHER_PREFIX}{k}": v[index] for k, v in teacher.items()}}
        train_step(model, objective, optimizer, runtime, data.inputs(index), values)

    for i in range(3):  # kernel selection and allocator warm-up are not the epoch's
        step(i)
    _sync(runtime)
    started = time.perf_counter()
    for i in range(batches):
        step(i)
    _sync(runtime)
    return time.perf_counter() - started


def check(device: str, images: int, steps: int, batch: int) -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    mean, std = params["data"]["mean"], params["data"]["std"]
    found = trainings(params)
    cpu = Runtime(torch.device("cpu"), None)
    exact = resolve_runtime(device, "fp32")
    make_reproducible(exact)
    native = resolve_runtime(device, "auto")
    pixels, labels = synthetic(max(images, steps * batch))
    short = slice(0, steps * batch)
    report = {"device": torch.cuda.get_device_name(exact.device) if exact.device.type == "cuda" else platform.processor(),
              "torch": torch.__version__, "python": platform.python_version(), "native_precision": native.precision,
              "steps": steps, "batch_size": batch, "images_per_epoch": images, "trainings": {}}
    on = {runtime: DeviceImages(pixels[short], labels[short], mean, std, runtime) for runtime in (cpu, exact)}
    torch.manual_seed(0)
    teacher = DeepNN().eval()
    cached = {runtime: {k: v.to(runtime.device) for k, v in
                        teacher_outputs(teacher.to(runtime.device, memory_format=torch.channels_last), data, runtime).items()}
              for runtime, data in on.items()}
    full = DeviceImages(pixels[:images], labels[:images], mean, std, native)
    full_teacher = {k: v.to(native.device) for k, v in teacher_outputs(
        teacher.to(native.device, memory_format=torch.channels_last), full, native).items()}
    for name, (network, build) in found.items():
        reads = build().teacher_outputs
        pick = lambda outputs, reads=reads: {k: v for k, v in outputs.items() if k in reads}  # noqa: E731
        reference, _ = first_steps(network, build, on[cpu], pick(cached[cpu]), cpu, steps, batch)
        first, weights = first_steps(network, build, on[exact], pick(cached[exact]), exact, steps, batch)
        again, weights_again = first_steps(network, build, on[exact], pick(cached[exact]), exact, steps, batch)
        relative = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(reference, first, strict=True))
        seconds = epoch_seconds(network, build, full, pick(full_teacher), native, batch)
        report["trainings"][name] = {
            "cpu_losses": reference, "device_losses": first, "max_relative_difference": relative,
            "deterministic": first == again and torch.equal(weights, weights_again),
            "epoch_seconds": round(seconds, 3), "images_per_second": round(images / seconds, 1),
        }
        print(f"{name}: max relative loss difference CPU vs {device} {relative:.2e}, deterministic "
              f"{report['trainings'][name]['deterministic']}, epoch {seconds:.2f} s ({native.precision})", flush=True)
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu", "mps"])
    parser.add_argument("--images", type=int, default=50_000, help="images of each timed epoch")
    parser.add_argument("--steps", type=int, default=10, help="steps compared against the CPU")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--output", type=Path, help="also write the report as JSON here")
    args = parser.parse_args(argv)
    if min(args.images, args.steps, args.batch_size) < 1:
        parser.error("--images, --steps and --batch-size must be >= 1")
    report = check(args.device, args.images, args.steps, args.batch_size)
    if args.output:
        args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"device: {report['device']}, torch {report['torch']}", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
