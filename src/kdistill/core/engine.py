"""The one training loop: any model, any objective, data resident on the device as one tensor.

It knows nothing of files, MLflow or DVC: the caller receives each epoch's result and each
checkpointable state through callbacks.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from kdistill.core.data import EVAL_BATCH_SIZE, DeviceImages, Teacher
from kdistill.core.networks import Network
from kdistill.core.objectives import TEACHER_PREFIX, Objective
from kdistill.core.recipe import CropFlip, Recipe
from kdistill.core.runtime import Runtime
from kdistill.entry import raise_if_interrupted
from kdistill.errors import TrainingError

LATENCY_BATCH = 128


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


def train_step(model: Network, objective: Objective, optimizer: torch.optim.Optimizer, runtime: Runtime,
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
             schedule: torch.optim.lr_scheduler.LRScheduler, batches: torch.Generator) -> list[EpochResult]:
    model.load_state_dict(state["model"])
    objective.load_state_dict(state["objective"])
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    batches.set_state(state["shuffle_rng"])
    torch.set_rng_state(state["torch_rng"])  # dropout masks continue exactly where they stopped
    if torch.cuda.is_available() and state.get("cuda_rng") is not None:
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return [EpochResult(**result) for result in state["history"]]


def _snapshot(model: nn.Module, objective: Objective, optimizer: torch.optim.Optimizer,
              schedule: torch.optim.lr_scheduler.LRScheduler, batches: torch.Generator,
              history: list[EpochResult]) -> dict:
    return {
        "epoch": len(history),
        "model": model.state_dict(),
        "objective": objective.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "shuffle_rng": batches.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "history": [vars(result) for result in history],
    }


def train(
    model: Network,
    objective: Objective,
    train_data: DeviceImages,
    test_data: DeviceImages,
    runtime: Runtime,
    *,
    stage: str,
    recipe: Recipe,
    seed: int,
    teacher: Teacher | None = None,
    on_epoch: Callable[[EpochResult], None] = lambda result: None,
    resume_from: dict | None = None,
    on_checkpoint: Callable[[dict], None] = lambda state: None,
) -> list[EpochResult]:
    """The recipe's optimizer on the model and the objective's own parameters (the hint regressor), epoch by epoch.

    After each epoch ``on_checkpoint`` gets everything needed to continue bit-for-bit (weights,
    optimizer, schedule, RNG states, history), then ``on_epoch`` the epoch's result;
    ``resume_from`` takes such a state back. ``teacher`` gives the teacher outputs the objective
    reads, for each batch as the student sees it (augmented or not).
    """
    optimizer = recipe.make_optimizer([*model.parameters(), *objective.parameters()])
    schedule = recipe.make_schedule(optimizer)
    # One generator draws each epoch's order and each batch's crops and flips: seeded, and checkpointed.
    batches = torch.Generator().manual_seed(seed)
    augment = CropFlip(train_data.black, batches) if recipe.augment == "crop_flip" else None
    history = _restore(resume_from, model, objective, optimizer, schedule, batches) if resume_from else []
    steps = -(-len(train_data) // recipe.batch_size)
    on_terminal = sys.stderr.isatty()
    for epoch in range(len(history) + 1, recipe.epochs + 1):
        started = time.perf_counter()
        model.train()
        objective.train()
        order = torch.randperm(len(train_data), generator=batches).to(train_data.labels.device)
        # Per-step losses stay on the device: reading one on the host (a NaN check per step) would
        # stall a GPU every step. They are checked once, at the end of the epoch.
        losses: list[torch.Tensor] = []
        bar = tqdm(range(steps), desc=f"{stage} epoch {epoch}/{recipe.epochs}", unit="batch", leave=False,
                   disable=not on_terminal)
        for step in bar:
            raise_if_interrupted()  # a Ctrl-C whose exception Python dropped (kdistill.entry) stops here
            index = order[step * recipe.batch_size:(step + 1) * recipe.batch_size]
            inputs = train_data.inputs(index)
            if augment is not None:
                inputs = augment(inputs)
            values = {"labels": train_data.labels[index], "progress": epoch - 1 + (step + 1) / steps,
                      **({f"{TEACHER_PREFIX}{name}": output for name, output in teacher.outputs(index, inputs).items()}
                         if teacher is not None else {})}
            total, terms = train_step(model, objective, optimizer, runtime, inputs, values)
            losses.append(torch.stack([total.float(), *(t.detach().float() for t in terms.values())]))
        schedule.step()
        per_step = torch.stack(losses).cpu()
        finite = torch.isfinite(per_step[:, 0])
        if not finite.all():
            first = int((~finite).nonzero()[0]) + 1
            raise TrainingError(f"{stage}: loss became {per_step[first - 1, 0].item()} at epoch {epoch}, batch "
                                f"{first}/{steps}; no model written (lower train.lr or check the loss weights)")
        total_mean, *term_means = per_step.mean(dim=0).tolist()
        accuracy = evaluate(model, test_data, runtime)
        result = EpochResult(epoch, total_mean, dict(zip(terms, term_means, strict=True)), accuracy,
                             time.perf_counter() - started)
        history.append(result)
        line = f"{stage} epoch {epoch}/{recipe.epochs}: train_loss {result.train_loss:.4f}, " \
               f"test_accuracy {accuracy:.2f}%, {result.seconds:.1f} s"
        if on_terminal:
            tqdm.write(line)
        else:
            print(line, flush=True)
        # The state is on disk before anyone is told of the epoch: a failure in on_epoch (a tracking
        # server gone) loses no trained epoch.
        on_checkpoint(_snapshot(model, objective, optimizer, schedule, batches, history))
        on_epoch(result)
    return history
