"""The seven stages, top to bottom. Each ``stages/<stage>.py`` script calls ``main("<stage>")``.

One name per concept: the stage name is the params section, the MLflow run name,
``models/<stage>.pt`` and ``metrics/<stage>.json``.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from kdistill import tracking
from kdistill.checkpoints import save_checkpoint
from kdistill.config import ConfigError, Params, load_params
from kdistill.data import DataError, ImageDataset, prepare
from kdistill.engine import (
    DeviceImages,
    EpochResult,
    TrainingError,
    keep_freed_memory,
    resolve_runtime,
    teacher_outputs,
    train,
)
from kdistill.files import atomic_path, write_json
from kdistill.models import build_model, count_parameters
from kdistill.objectives import build_objective

TEACHER = "train_teacher"
STUDENT_CE = "train_student_ce"
DISTILLATION_STAGES = ("distill_kd", "distill_cosine", "distill_regressor")
TRAINING_STAGES = (TEACHER, STUDENT_CE, *DISTILLATION_STAGES)
ARCHITECTURE = {TEACHER: "DeepNN", **{stage: "LightNN" for stage in TRAINING_STAGES[1:]}}

_TRAINING_KEYS = ["seed", "data.mean", "data.std", "train.epochs", "train.batch_size", "train.lr",
                  "train.precision", "train.device"]
# The params.yaml keys each stage reads; dvc.yaml lists exactly these (a test keeps them in step).
STAGE_PARAMS: dict[str, list[str]] = {
    "download": ["data.url", "data.md5", "data.format"],
    TEACHER: _TRAINING_KEYS,
    STUDENT_CE: _TRAINING_KEYS,
    "distill_kd": [*_TRAINING_KEYS, "distill_kd.T", "distill_kd.soft_target_loss_weight", "distill_kd.ce_loss_weight"],
    "distill_cosine": [*_TRAINING_KEYS, "distill_cosine.hidden_rep_loss_weight", "distill_cosine.ce_loss_weight"],
    "distill_regressor": [*_TRAINING_KEYS, "distill_regressor.feature_map_weight", "distill_regressor.ce_loss_weight"],
}


@dataclass(frozen=True)
class Layout:
    """Where every input and output of the pipeline lives, relative to the project root."""

    root: Path

    @property
    def raw_dir(self) -> Path:
        return self.root / "data" / "raw"

    @property
    def dataset(self) -> Path:
        return self.root / "data" / "dataset.pt"

    @property
    def teacher_outputs(self) -> Path:
        return self.root / "data" / "teacher_outputs.pt"

    def model(self, stage: str) -> Path:
        return self.root / "models" / f"{stage}.pt"

    def metrics(self, stage: str) -> Path:
        return self.root / "metrics" / f"{stage}.json"

    def history(self, stage: str) -> Path:
        return self.root / "metrics" / "history" / f"{stage}.csv"


def stage_params(stage: str, params: Params) -> dict[str, object]:
    flat = params.flat()
    return {key: flat[key] for key in STAGE_PARAMS[stage]}


def run_download(params: Params, layout: Layout) -> None:
    data = params.data
    dataset = prepare(data.url, data.md5, data.format, layout.raw_dir, layout.dataset)
    print(f"download: {len(dataset.train_labels)} train and {len(dataset.test_labels)} test images, "
          f"{len(dataset.classes)} classes -> {layout.dataset}")


def _load_teacher_outputs(layout: Layout, wanted: frozenset[str], device: torch.device) -> dict[str, torch.Tensor]:
    if not wanted:
        return {}
    if not layout.teacher_outputs.is_file():
        raise DataError(f"{layout.teacher_outputs}: missing; run the train_teacher stage first")
    outputs = torch.load(layout.teacher_outputs, map_location="cpu", weights_only=True)
    return {name: outputs[name].to(device) for name in wanted}


def run_training(stage: str, params: Params, layout: Layout) -> dict[str, float]:
    started = time.perf_counter()
    keep_freed_memory()
    runtime = resolve_runtime(params.train.device, params.train.precision)
    dataset = ImageDataset.load(layout.dataset)
    normalization = (params.data.mean, params.data.std)
    train_data = DeviceImages(dataset.train_images, dataset.train_labels, *normalization, runtime.device)
    test_data = DeviceImages(dataset.test_images, dataset.test_labels, *normalization, runtime.device)
    objective = build_objective(stage, params)
    teacher = _load_teacher_outputs(layout, objective.teacher_outputs, runtime.device)

    # Seeded right before the network is built, as in the tutorial: every student of every method
    # starts from the same weights, so their accuracies differ by the objective alone.
    torch.manual_seed(params.seed)
    model = build_model(ARCHITECTURE[stage], num_classes=len(dataset.classes))
    model = model.to(runtime.device, memory_format=torch.channels_last)
    objective = objective.to(runtime.device)
    parameters = count_parameters(model)

    with tracking.stage_run(stage, stage_params(stage, params), layout.root) as run:
        print(f"{stage}: {ARCHITECTURE[stage]} ({parameters:,} parameters) on {runtime.device}, {runtime.precision}")

        def record(result: EpochResult) -> None:
            tracking.log_metrics(result.metrics(), step=result.epoch)

        train_params = params.train
        history = train(model, objective, train_data, test_data, runtime, stage=stage, epochs=train_params.epochs,
                        batch_size=train_params.batch_size, lr=train_params.lr, seed=params.seed,
                        teacher=teacher, on_epoch=record)
        if stage == TEACHER:
            with atomic_path(layout.teacher_outputs) as partial:
                torch.save(teacher_outputs(model, train_data, runtime), partial)
        wall_time = time.perf_counter() - started
        metrics = {
            "test_accuracy": history[-1].test_accuracy,
            "train_loss": history[-1].train_loss,
            "parameters": parameters,
            "epochs": len(history),
            "wall_time_s": round(wall_time, 2),
        }
        tracking.log_metrics(metrics)
        save_checkpoint(layout.model(stage), model, stage=stage, params=stage_params(stage, params),
                        metrics=metrics, classes=dataset.classes, mlflow_run_id=run.info.run_id,
                        normalization={"mean": list(params.data.mean), "std": list(params.data.std)})
        with atomic_path(layout.history(stage)) as partial:
            pd.DataFrame([{"epoch": r.epoch, **r.metrics()} for r in history]).to_csv(partial, index=False)
        tracking.log_model(model, name=stage)
        write_json(layout.metrics(stage), {**metrics, "precision": runtime.precision, "mlflow_run_id": run.info.run_id})
    print(f"{stage}: test_accuracy {metrics['test_accuracy']:.2f}% in {wall_time:.0f} s")
    return metrics


def run_stage(stage: str, root: Path | None = None) -> None:
    layout = Layout(root or tracking.project_root())
    params = load_params(layout.root / "params.yaml")
    if stage == "download":
        run_download(params, layout)
    elif stage in TRAINING_STAGES:
        run_training(stage, params, layout)
    elif stage == "report":
        from kdistill.report import run_report

        run_report(params, layout)
    else:
        raise ConfigError(f"unknown stage {stage!r}")


def main(stage: str) -> None:
    """Entry point of the stage scripts: expected failures print one clear line, no traceback."""
    try:
        run_stage(stage)
    except (ConfigError, DataError, TrainingError, tracking.TrackingError, ValueError, FileNotFoundError) as error:
        print(f"error: {stage}: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"error: {stage}: interrupted", file=sys.stderr)
        sys.exit(130)
