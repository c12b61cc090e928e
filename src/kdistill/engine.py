"""The one training loop: any model, any objective, data resident on the device as one tensor."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from kdistill.errors import ConfigError, TrainingError
from kdistill.models import ConvClassifier
from kdistill.objectives import TEACHER_PREFIX, Objective

EVAL_BATCH_SIZE = 1000
LATENCY_BATCH = 128
NORMALIZE_CHUNK = 1000  # images normalized at a time: the fp32 intermediate stays small


# --------------------------------------------------------------------------------------------
# Where and how to compute


def cpu_has_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Native bf16 arithmetic (AVX-512 BF16 or AMX) on this CPU, from the kernel's flag list."""
    try:
        flags = set(cpuinfo.read_text().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    autocast_dtype: torch.dtype | None  # None: plain fp32

    @property
    def precision(self) -> str:
        return "bf16" if self.autocast_dtype == torch.bfloat16 else "fp32"

    @property
    def input_dtype(self) -> torch.dtype:
        """What the first convolution computes in: under autocast it rounds its fp32 input to this."""
        return self.autocast_dtype or torch.float32

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                              enabled=self.autocast_dtype is not None)


def resolve_runtime(device: str = "auto", precision: str = "auto") -> Runtime:
    """``auto`` picks CUDA, then MPS, then CPU; bf16 where the hardware computes it natively."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is 'cuda' but no CUDA device is available")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("train.device is 'mps' but MPS is not available")
    native_bf16 = {
        "cuda": lambda: torch.cuda.is_bf16_supported(),
        "cpu": cpu_has_bf16,
        "mps": lambda: False,
    }[device]()
    if precision == "auto":
        precision = "bf16" if native_bf16 else "fp32"
    return Runtime(torch.device(device), torch.bfloat16 if precision == "bf16" else None)


class DeviceImages:
    """A split's images, normalized once, and its labels, on the device: a batch is one gather.

    The images are kept as the first convolution reads them: normalized, ``channels_last`` (the
    convolutions' fast layout with oneDNN on CPUs and with tensor cores alike) and in the runtime's
    input dtype. Under bf16 autocast that convolution rounds its fp32 input to bf16 on every batch,
    so rounding once here hands it the same values, bit for bit (tests/test_engine.py checks), in
    half the memory of fp32 and without a normalization per batch, which cost 10% of a student's
    epoch here (docs/performance.md).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: tuple[float, ...],
                 std: tuple[float, ...], runtime: Runtime) -> None:
        device = runtime.device
        shape = (1, 3, 1, 1)
        scale = (1.0 / (255.0 * torch.tensor(std, device=device))).view(shape)
        shift = (torch.tensor(mean, device=device) / torch.tensor(std, device=device)).view(shape)
        self.images = torch.empty(images.shape, dtype=runtime.input_dtype, device=device,
                                  memory_format=torch.channels_last)
        for start in range(0, len(images), NORMALIZE_CHUNK):  # uint8 to the device: a quarter of fp32's bytes
            window = slice(start, start + NORMALIZE_CHUNK)
            self.images[window] = images[window].to(device).float().mul_(scale).sub_(shift)
        self.labels = labels.to(device)

    def __len__(self) -> int:
        return len(self.labels)

    def inputs(self, index: torch.Tensor | slice) -> torch.Tensor:
        return self.images[index]  # a gather keeps channels_last


# --------------------------------------------------------------------------------------------
# Inference


@torch.inference_mode()
def evaluate(model: nn.Module, data: DeviceImages, runtime: Runtime) -> float:
    """Test accuracy in percent."""
    model.eval()
    correct = 0
    for start in range(0, len(data), EVAL_BATCH_SIZE):
        window = slice(start, start + EVAL_BATCH_SIZE)
        with runtime.autocast():
            logits = model(data.inputs(window))
        correct += (logits.argmax(dim=1) == data.labels[window]).sum().item()
    return 100.0 * correct / len(data)


@torch.inference_mode()
def latency_ms(model: nn.Module, runtime: Runtime, repeats: int = 10) -> float:
    """Median milliseconds per forward pass of LATENCY_BATCH images, where and how the model trained."""
    model.eval()
    images = torch.randn(LATENCY_BATCH, 3, 32, 32, device=runtime.device).contiguous(memory_format=torch.channels_last)
    timings = []
    with runtime.autocast():
        for repeat in range(3 + repeats):
            started = time.perf_counter()
            model(images).float().cpu()  # to the host: on a GPU, the pass has finished when this returns
            if repeat >= 3:  # the first passes pay one-off kernel selection
                timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


@torch.inference_mode()
def teacher_outputs(teacher: ConvClassifier, data: DeviceImages, runtime: Runtime) -> dict[str, torch.Tensor]:
    """The teacher's logits and last feature map for every training image, computed once, stored in fp32.

    Without augmentation the frozen teacher (eval mode: dropout off) gives the same outputs on
    every epoch, so this replaces the tutorial's per-batch teacher forward. That forward runs in
    the training's precision, as the tutorial's does (fp32 there, and here with
    ``train.precision: fp32``); under bf16 autocast it is 3.8x faster on this project's CPU, and
    the soft targets are no coarser than the student's own bf16 logits they are compared with.
    """
    teacher.eval()
    logits, features = [], []
    for start in range(0, len(data), EVAL_BATCH_SIZE):
        with runtime.autocast():
            feature_map = teacher.forward_features(data.inputs(slice(start, start + EVAL_BATCH_SIZE)))
            logits.append(teacher.forward_head(feature_map).float().cpu())
        features.append(feature_map.float().contiguous().cpu())
    return {"logits": torch.cat(logits), "features": torch.cat(features)}


# --------------------------------------------------------------------------------------------
# Training


@dataclass
class EpochResult:
    epoch: int  # 1-based
    train_loss: float
    terms: dict[str, float]
    test_accuracy: float
    seconds: float

    def metrics(self) -> dict[str, float]:
        return {"train_loss": self.train_loss, "test_accuracy": self.test_accuracy, "epoch_seconds": self.seconds,
                **{f"train_loss.{name}": value for name, value in self.terms.items()}}


def adam(parameters: list[nn.Parameter], lr: float) -> torch.optim.Adam:
    """The tutorial's optimizer (Adam, default betas and eps), its update fused into one kernel per step.

    Unfused, Adam runs a handful of ops per parameter tensor: on a GPU dozens of kernel launches per
    step, on this project's CPU 6% of a student's epoch. Fused, the update rule is the same; it
    rounds differently in the last bit (up to 1e-8 in the weights after 50 steps), so a training's
    digits differ from the unfused loop's, by run-to-run noise (docs/performance.md).
    """
    return torch.optim.Adam(parameters, lr=lr, fused=True)


def train_step(model: ConvClassifier, objective: Objective, optimizer: torch.optim.Optimizer, runtime: Runtime,
               inputs: torch.Tensor, values: dict[str, torch.Tensor | float]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimizer step on one batch; ``values`` holds what the objective reads besides the student's outputs.

    Returns the weighted total (detached) and the named terms, all still on the device.
    """
    with runtime.autocast():
        features = model.forward_features(inputs)
        total, terms = objective({**values, "student_features": features, "student_logits": model.forward_head(features)})
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()
    return total.detach(), terms


def _restore(state: dict, model: nn.Module, objective: Objective, optimizer: torch.optim.Optimizer,
             shuffle: torch.Generator) -> list[EpochResult]:
    model.load_state_dict(state["model"])
    objective.load_state_dict(state["objective"])
    optimizer.load_state_dict(state["optimizer"])
    shuffle.set_state(state["shuffle_rng"])
    torch.set_rng_state(state["torch_rng"])  # dropout masks continue exactly where they stopped
    if torch.cuda.is_available() and state.get("cuda_rng") is not None:
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return [EpochResult(**result) for result in state["history"]]


def _snapshot(model: nn.Module, objective: Objective, optimizer: torch.optim.Optimizer, shuffle: torch.Generator,
              history: list[EpochResult]) -> dict:
    return {
        "epoch": len(history),
        "model": model.state_dict(),
        "objective": objective.state_dict(),
        "optimizer": optimizer.state_dict(),
        "shuffle_rng": shuffle.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "history": [vars(result) for result in history],
    }


def train(
    model: ConvClassifier,
    objective: Objective,
    train_data: DeviceImages,
    test_data: DeviceImages,
    runtime: Runtime,
    *,
    stage: str,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    teacher: dict[str, torch.Tensor] | None = None,
    on_epoch: Callable[[EpochResult], None] = lambda result: None,
    resume_from: dict | None = None,
    on_checkpoint: Callable[[dict], None] = lambda state: None,
) -> list[EpochResult]:
    """Adam on the model and the objective's own parameters (the hint regressor), one epoch at a time.

    After each epoch ``on_checkpoint`` gets everything needed to continue bit-for-bit (weights,
    optimizer, RNG states, history), then ``on_epoch`` the epoch's result; ``resume_from`` takes
    such a state back. ``teacher`` holds the cached teacher outputs the objective reads.
    """
    parameters = [*model.parameters(), *objective.parameters()]
    optimizer = adam(parameters, lr)
    shuffle = torch.Generator().manual_seed(seed)
    history = _restore(resume_from, model, objective, optimizer, shuffle) if resume_from else []
    batches = -(-len(train_data) // batch_size)
    on_terminal = sys.stderr.isatty()
    for epoch in range(len(history) + 1, epochs + 1):
        started = time.perf_counter()
        model.train()
        objective.train()
        order = torch.randperm(len(train_data), generator=shuffle).to(train_data.labels.device)
        # Per-step losses stay on the device: reading one on the host (a NaN check per step) would
        # stall a GPU every step. They are checked once, at the end of the epoch.
        losses: list[torch.Tensor] = []
        bar = tqdm(range(batches), desc=f"{stage} epoch {epoch}/{epochs}", unit="batch", leave=False,
                   disable=not on_terminal)
        for step in bar:
            index = order[step * batch_size:(step + 1) * batch_size]
            values = {"labels": train_data.labels[index], "progress": epoch - 1 + (step + 1) / batches,
                      **{f"{TEACHER_PREFIX}{name}": output[index] for name, output in (teacher or {}).items()}}
            total, terms = train_step(model, objective, optimizer, runtime, train_data.inputs(index), values)
            losses.append(torch.stack([total.float(), *(t.detach().float() for t in terms.values())]))
        per_step = torch.stack(losses).cpu()
        finite = torch.isfinite(per_step[:, 0])
        if not finite.all():
            first = int((~finite).nonzero()[0]) + 1
            raise TrainingError(f"{stage}: loss became {per_step[first - 1, 0].item()} at epoch {epoch}, batch "
                                f"{first}/{batches}; no model written (lower train.lr or check the loss weights)")
        total_mean, *term_means = per_step.mean(dim=0).tolist()
        accuracy = evaluate(model, test_data, runtime)
        result = EpochResult(epoch, total_mean, dict(zip(terms, term_means, strict=True)), accuracy,
                             time.perf_counter() - started)
        history.append(result)
        line = f"{stage} epoch {epoch}/{epochs}: train_loss {result.train_loss:.4f}, " \
               f"test_accuracy {accuracy:.2f}%, {result.seconds:.1f} s"
        if on_terminal:
            tqdm.write(line)
        else:
            print(line, flush=True)
        # The state is on disk before anyone is told of the epoch: a failure in on_epoch (a tracking
        # server gone) loses no trained epoch.
        on_checkpoint(_snapshot(model, objective, optimizer, shuffle, history))
        on_epoch(result)
    return history
