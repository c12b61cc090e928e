"""The training stages, top to bottom: each ``stages/<training>.py`` calls ``train_stage(<its Method>, objective)``.

One name per concept: the stage name is the params section, the MLflow run name,
``models/<stage>.pt`` and ``metrics/<stage>.json``.
"""

from __future__ import annotations

import io
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

import kdistill
from kdistill.control.codedeps import SRC, closure
from kdistill.control.params import CoreParams, load_params, training_keys
from kdistill.core.data import CachedTeacher, DeviceImages, LiveTeacher, Teacher, teacher_outputs
from kdistill.core.engine import LATENCY_BATCH, EpochResult, evaluate, latency_ms, train
from kdistill.core.networks import Network, build_model, count_parameters, feature_shape
from kdistill.core.objectives import Objective, Shapes
from kdistill.core.recipe import Recipe
from kdistill.core.runtime import Runtime, make_reproducible, resolve_runtime
from kdistill.entry import main, raise_if_interrupted
from kdistill.errors import DataError
from kdistill.files import atomic_path, write_json
from kdistill.layout import Layout, project_root
from kdistill.methods.baselines.spec import TEACHER
from kdistill.methods.method import Method
from kdistill.pipeline import tracking
from kdistill.pipeline.checkpoints import load_checkpoint, load_published_teacher, save_checkpoint
from kdistill.pipeline.logged_models import log_network
from kdistill.pipeline.resume import ResumePoint
from kdistill.sources.dataset import ImageDataset

ObjectiveBuilder = Callable[[Any, Shapes], Objective]


# --------------------------------------------------------------------------------------------
# training


def train_stage(method: Method, objective: ObjectiveBuilder) -> None:
    main(method.name, lambda: run_training(method, objective, Layout(project_root())))


def stage_params(method: Method, layout: Layout) -> CoreParams:
    """The shared sections and the method's own, validated (check_params validates the rest)."""
    sections = {method.name: method.params} if method.params is not None else {}
    return load_params(layout.params, sections, only_known_sections=True)


def code_files(method: Method, layout: Layout) -> list[Path]:
    """The code this stage runs: its script's import closure (the same list dvc.yaml holds)."""
    entries = [Path(__file__), Path(sys.modules[method.losses].__file__)]
    if layout.script(method.name).is_file():
        entries.append(layout.script(method.name))
    return sorted({path.resolve() for entry in entries for path in closure(entry, SRC)})


class Stopwatch:
    """Seconds per phase of a stage, summed over seeds, so that its record says where each second went.

    Phases nest exclusively: the seconds of a phase timed inside another count for the inner one only.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._open: list[str] = []
        self._since = self.started = time.perf_counter()

    def _charge(self) -> None:
        now = time.perf_counter()
        if self._open:
            self.seconds[self._open[-1]] += now - self._since
        self._since = now

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        self._charge()
        self._open.append(phase)
        try:
            yield
        finally:
            self._charge()
            self._open.pop()

    def profile(self, epochs: float) -> dict[str, float]:
        """Start-up (imports), each phase, the epochs within training, and what no phase covered."""
        total = time.perf_counter() - kdistill.LOADING_SINCE
        phases = {"start-up": self.started - kdistill.LOADING_SINCE, **self.seconds}
        training = phases.pop("training", 0.0)
        phases |= {"epochs": epochs, "checkpoints and per-epoch logging": training - epochs}
        phases |= {"other": total - sum(phases.values()), "total": total}
        return {name: round(value, 2) for name, value in phases.items()}


@dataclass
class SeedResult:
    seed: int
    model: Network
    history: list[EpochResult]
    run_id: str
    trained_seconds: float  # the epochs this process trained (a resumed seed's earlier ones excluded)


@dataclass
class TrainingContext:
    """What every seed of one stage shares."""

    method: Method
    params: CoreParams
    layout: Layout
    runtime: Runtime
    dataset: ImageDataset
    train_data: DeviceImages
    test_data: DeviceImages
    teacher: Teacher | None
    network: str  # the name of the network this stage trains
    recipe: Recipe
    shapes: Shapes
    code: list[Path]
    neutral: dict[str, object]  # method-neutral names: method, ce_loss_weight, distill_loss_weight, T
    digests: dict[str, str]  # per split, for MLflow's dataset inputs
    clock: Stopwatch
    build_objective: ObjectiveBuilder

    @property
    def run_params(self) -> dict[str, object]:
        flat = self.params.flat()
        return {**self.neutral, **{key: flat[key] for key in training_keys(self.method)}}


def seeded_start(network: str, build_objective: ObjectiveBuilder, section: Any, shapes: Shapes, num_classes: int,
                 seed: int) -> tuple[Network, Objective]:
    """The network and objective a seed starts from.

    Seeded right before the network is built, as in the tutorial, and the objective built after
    it (the hint's regressor draws its own initial weights): for a given seed every student of
    every method starts from the same weights, so the methods differ by their objective alone.
    """
    torch.manual_seed(seed)
    model = build_model(network, num_classes=num_classes)
    return model, build_objective(section, shapes)


def _train_seed(ctx: TrainingContext, seed: int) -> SeedResult:
    raise_if_interrupted()  # no new MLflow run after a Ctrl-C that Python dropped during the previous seed
    method, layout = ctx.method, ctx.layout
    inputs = [layout.dataset] + ([layout.teacher_outputs, layout.model(TEACHER.name)] if ctx.teacher else [])
    resume = ResumePoint(layout, method.name, seed, ctx.run_params, inputs, ctx.code)
    saved = resume.load()
    section = ctx.params.section(method.name) if method.params is not None else None
    model, objective = seeded_start(ctx.network, ctx.build_objective, section, ctx.shapes, len(ctx.dataset.classes),
                                    seed)
    model = model.to(ctx.runtime.device, memory_format=torch.channels_last)
    objective = objective.to(ctx.runtime.device)
    clock = ctx.clock
    with clock("tracking"), tracking.stage_run(method.name, {**ctx.run_params, "seed": seed}, layout.root, seed=seed,
                                               run_id=saved and saved["run_id"]) as run:
        run_id = run.info.run_id
        if saved:
            print(f"{method.name}: resuming seed {seed} after epoch {saved['state']['epoch']} (MLflow run {run_id})")
            logged = tracking.logged_steps(run_id, "test_accuracy")
            for result in saved["state"]["history"]:  # epochs trained while the store was down
                if result["epoch"] not in logged:
                    tracking.log_metrics(EpochResult(**result).metrics(), step=result["epoch"])
        else:
            resume.save(run_id, None)
            for split, context in (("train", "training"), ("test", "evaluation")):
                tracking.log_dataset(split, ctx.digests[split], ctx.params.data.url, context)
        with clock("training"):
            history = train(model, objective, ctx.train_data, ctx.test_data, ctx.runtime, stage=method.name,
                            recipe=ctx.recipe, seed=seed, teacher=ctx.teacher,
                            on_epoch=lambda result: tracking.log_metrics(result.metrics(), step=result.epoch),
                            resume_from=saved and saved["state"],
                            on_checkpoint=lambda state: resume.save(run_id, state))
        # The final accuracy and loss are the last epoch's, already logged at its step; logged again
        # without a step they would land at step 0 and draw each curve from its end back to its start.
        tracking.log_metrics({"parameters": count_parameters(model)})
        if not (saved and tracking.has_model(run_id)):
            with clock("model export"):
                log_network(model, name=method.name)
    resume.clear()
    resumed_epochs = len(saved["state"]["history"]) if saved else 0
    return SeedResult(seed, model.cpu(), history, run_id, sum(e.seconds for e in history[resumed_epochs:]))


def _published_teacher(ctx: TrainingContext) -> SeedResult:
    """A teacher trained elsewhere: evaluated, tracked and cached like a trained one, without an epoch."""
    section = ctx.params.section(TEACHER.name)
    model = load_published_teacher(ctx.layout.published_teacher(section.checkpoint_md5), section.checkpoint_md5,
                                   ctx.network, len(ctx.dataset.classes))
    model = model.to(ctx.runtime.device, memory_format=torch.channels_last)
    accuracy = evaluate(model, ctx.test_data, ctx.runtime)
    print(f"{TEACHER.name}: published teacher {section.checkpoint}: test_accuracy {accuracy:.2f}% (not trained here)")
    with ctx.clock("tracking"), tracking.stage_run(TEACHER.name, {**ctx.run_params, "seed": section.seed},
                                                   ctx.layout.root, seed=section.seed) as run:
        tracking.log_metrics({"test_accuracy": accuracy, "parameters": count_parameters(model)})
        with ctx.clock("model export"):
            log_network(model, name=TEACHER.name)
    result = EpochResult(epoch=0, train_loss=float("nan"), terms={}, test_accuracy=accuracy, seconds=0.0)
    return SeedResult(section.seed, model.cpu(), [result], run.info.run_id, 0.0)


def _history_table(results: list[SeedResult]) -> pd.DataFrame:
    """Per-epoch metrics averaged over seeds (per-seed curves are in MLflow)."""
    rows = [{"seed": r.seed, "epoch": e.epoch, **e.metrics()} for r in results for e in r.history]
    return pd.DataFrame(rows).drop(columns="seed").groupby("epoch", as_index=False).mean()


def _teacher(layout: Layout, wanted: frozenset[str], recipe: Recipe, runtime: Runtime) -> Teacher | None:
    """The cached outputs where they are exact; with augmentation, the teacher itself, run per batch."""
    if not wanted:
        return None
    for path in (layout.teacher_outputs, layout.model(TEACHER.name)):
        if not path.is_file():
            raise DataError(f"{path}: missing; run the {TEACHER.name} stage first")
    if recipe.augment != "none":
        network, _ = load_checkpoint(layout.model(TEACHER.name), device=runtime.device)
        return LiveTeacher(network.to(memory_format=torch.channels_last), wanted, runtime)
    # Memory-mapped: only the outputs this objective reads leave the disk (KD needs the 2 MB of
    # logits, not the 400 MB of feature maps beside them).
    outputs = torch.load(layout.teacher_outputs, map_location="cpu", weights_only=True, mmap=True)
    return CachedTeacher({name: outputs[name].to(runtime.device) for name in sorted(wanted)})


def run_training(method: Method, build_objective: ObjectiveBuilder, layout: Layout) -> dict[str, object]:
    clock = Stopwatch()
    with clock("load"):
        ctx = _context(method, build_objective, layout, clock)
    seeds = [ctx.params.section(method.name).seed] if method.role == "teacher" else ctx.params.seeds
    with clock("tracking"):
        tracking.connect(layout.root)  # fail fast, before any training, if the store is unusable
    print(f"{method.name}: {ctx.network} on {ctx.runtime.device}, {ctx.runtime.precision}, seeds {seeds}")

    if method.role == "teacher" and ctx.params.section(TEACHER.name).checkpoint:
        results = [_published_teacher(ctx)]
    else:
        results = [_train_seed(ctx, seed) for seed in seeds]
    if method.role == "teacher":
        with clock("teacher outputs cache"):
            teacher_model = results[0].model.to(ctx.runtime.device, memory_format=torch.channels_last)
            with atomic_path(layout.teacher_outputs) as partial:
                torch.save(teacher_outputs(teacher_model, ctx.train_data, ctx.runtime), partial)
    with clock("outputs"):
        metrics, runs = _stage_metrics(results, ctx)
        save_checkpoint(layout.model(method.name), {r.seed: r.model for r in results}, stage=method.name,
                        params=ctx.run_params, metrics={**metrics, **runs}, classes=ctx.dataset.classes,
                        normalization={"mean": list(ctx.params.data.mean), "std": list(ctx.params.data.std)})
        with atomic_path(layout.history(method.name)) as partial:
            _history_table(results).to_csv(partial, index=False)
        write_json(layout.metrics(method.name), metrics)
    runs["seconds"] = clock.profile(epochs=sum(r.trained_seconds for r in results))
    write_json(layout.runs(method.name), runs)
    print(f"{method.name}: test_accuracy {metrics['test_accuracy']:.2f}% over {len(seeds)} seed(s) in "
          f"{runs['seconds']['total']:.1f} s: " + ", ".join(f"{k} {v:.1f}" for k, v in runs["seconds"].items()))
    return {**metrics, **runs}


def _context(method: Method, build_objective: ObjectiveBuilder, layout: Layout, clock: Stopwatch) -> TrainingContext:
    params = stage_params(method, layout)
    runtime = resolve_runtime(params.train.device, params.train.precision)
    make_reproducible(runtime)
    shapes = Shapes(student=feature_shape(params.networks.student), teacher=feature_shape(params.networks.teacher))
    network = params.networks.teacher if method.role == "teacher" else params.networks.student
    recipe = Recipe(**params.train.model_dump(exclude={"precision", "device"}) | {
        "milestones": tuple(params.train.milestones)})
    section = params.section(method.name) if method.params is not None else None
    objective = build_objective(section, shapes)
    neutral = {"method": method.name, **objective.neutral_params(),
               **({"T": section.T} if hasattr(section, "T") else {})}
    dataset = ImageDataset.load(layout.dataset)
    normalization = (params.data.mean, params.data.std)
    return TrainingContext(
        method, params, layout, runtime, dataset,
        DeviceImages(dataset.train_images, dataset.train_labels, *normalization, runtime),
        DeviceImages(dataset.test_images, dataset.test_labels, *normalization, runtime),
        _teacher(layout, objective.teacher_outputs, recipe, runtime), network, recipe, shapes, code_files(method, layout),
        neutral, dataset.digests, clock, build_objective,
    )


def _stage_metrics(results: list[SeedResult], ctx: TrainingContext) -> tuple[dict, dict]:
    """(DVC metrics: what a reviewer compares, kept lean for `dvc exp show`; the per-seed record)."""
    accuracies = [r.history[-1].test_accuracy for r in results]
    metrics = {
        "test_accuracy": float(np.mean(accuracies)),
        "test_accuracy_std": float(np.std(accuracies, ddof=1)) if len(accuracies) > 1 else 0.0,
        "seeds": len(results),
        "parameters": count_parameters(results[0].model),
    }
    losses = [r.history[-1].train_loss for r in results if r.history[-1].epoch]  # epoch 0: not trained here
    weights = io.BytesIO()
    torch.save(results[0].model.state_dict(), weights)
    runs = {
        "per_seed": {str(r.seed): r.history[-1].test_accuracy for r in results},
        "mlflow_run_ids": {str(r.seed): r.run_id for r in results},
        "train_loss": float(np.mean(losses)) if losses else None,  # None: a published teacher trained elsewhere
        "epochs": ctx.params.train.epochs,
        "wall_time_s": round(time.perf_counter() - kdistill.LOADING_SINCE, 2),
        "precision": ctx.runtime.precision,
        "device": str(ctx.runtime.device),
        # What the report shows beside the accuracy: one seed's weights as saved by torch, and its speed.
        "model_bytes": weights.getbuffer().nbytes,
        "latency_batch": LATENCY_BATCH,
        "latency_ms": round(latency_ms(results[0].model.to(ctx.runtime.device, memory_format=torch.channels_last),
                                       ctx.runtime), 3),
        "params": ctx.run_params,
    }
    return metrics, runs
