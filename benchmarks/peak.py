"""How close the training step comes to the hardware's limit: the step's FLOP/s against a large matrix product's.

    PYTHONPATH=src python -m benchmarks.peak [--size 4096] [--steps 20] [--networks resnet8 resnet20 ...]

The limit is what this machine reaches on the easiest work there is, a square matrix product, in
fp32 and in bf16. Each network's training step (batch 128, the engine's own ``train_step`` with
the literature's SGD, in the runtime's precision and layout, a 100-class head) is counted with
torch's FLOP counter (forward and backward) and timed; the table gives its GFLOP/s and the fraction
of the limit in the same precision.
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

from kdistill.core.catalog import NETWORKS
from kdistill.core.engine import train_step
from kdistill.core.networks import build_model
from kdistill.core.objectives import Objective, cross_entropy
from kdistill.core.recipe import Recipe
from kdistill.core.runtime import Runtime, resolve_runtime
from kdistill.entry import configure_process

BATCH = 128


def matmul_gflops(size: int, dtype: torch.dtype, device: torch.device, repeats: int = 5) -> float:
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b  # kernel selection
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        (a @ b).sum().item()
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


def step_gflops(network: str, runtime: Runtime, steps: int, num_classes: int) -> tuple[float, float]:
    """(images per second, GFLOP/s) of the training step."""
    torch.manual_seed(0)
    model = build_model(network, num_classes).to(runtime.device, memory_format=torch.channels_last)
    objective = Objective([cross_entropy()])
    optimizer = Recipe(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4).make_optimizer(model.parameters())
    images = torch.randn(BATCH, 3, 32, 32, device=runtime.device, dtype=runtime.input_dtype)
    images = images.contiguous(memory_format=torch.channels_last)
    values = {"labels": torch.randint(0, num_classes, (BATCH,), device=runtime.device)}
    counter = FlopCounterMode(display=False)
    with counter:
        train_step(model, objective, optimizer, runtime, images, values)
    flops = counter.get_total_flops()
    for _ in range(2):
        train_step(model, objective, optimizer, runtime, images, values)
    started = time.perf_counter()
    for _ in range(steps):
        total, _ = train_step(model, objective, optimizer, runtime, images, values)
    total.item()
    seconds = (time.perf_counter() - started) / steps
    return BATCH / seconds, flops / seconds / 1e9


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=4096, help="side of the square matrices")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per network")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS), metavar="NAME",
                        help="networks to time (default: every one in the catalog)")
    parser.add_argument("--classes", type=int, default=100, help="classes of the head (CIFAR-100: 100)")
    args = parser.parse_args(argv)
    configure_process()
    runtime = resolve_runtime(args.device, "auto")
    dtype = runtime.autocast_dtype or torch.float32
    peaks = {name: matmul_gflops(args.size, kind, runtime.device) for name, kind in
             (("fp32", torch.float32), ("bf16", torch.bfloat16)) if name == "fp32" or runtime.precision == "bf16"}
    rows = {}
    for network in args.networks:
        images, gflops = step_gflops(network, runtime, args.steps, args.classes)
        rows[f"{network} training step ({runtime.precision})"] = {
            "images/s": images, "GFLOP/s": gflops, "fraction of the matrix-product limit": gflops / peaks[runtime.precision]}
    for name, value in peaks.items():
        rows[f"matrix product {args.size}x{args.size} ({name})"] = {"GFLOP/s": value}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = f"on {runtime.device} ({dtype}), {torch.get_num_threads()} threads"
    print(table.astype(object).where(table.notna(), None).to_markdown(floatfmt=".2f", missingval=""))
    return table


if __name__ == "__main__":
    main()
