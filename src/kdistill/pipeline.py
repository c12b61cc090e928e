"""The seven stages, top to bottom. Each ``stages/<stage>.py`` script calls ``main("<stage>")``.

One name per concept: the stage name is the params section, the MLflow run name,
``models/<stage>.pt`` and ``metrics/<stage>.json``.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from kdistill import tracking
from kdistill.checkpoints import save_checkpoint
from kdistill.config import ConfigError, Params, load_params
from kdistill.data import DataError, ImageDataset, prepare
from kdistill.engine import (
    DeviceImages,
    EpochResult,
    Runtime,
    TrainingError,
    keep_freed_memory,
    resolve_runtime,
    teacher_outputs,
    train,
)
from kdistill.files import atomic_path, write_json
from kdistill.models import ConvClassifier, build_model, count_parameters
from kdistill.objectives import build_objective

TEACHER = "train_teacher"
STUDENT_CE = "train_student_ce"
DISTILLATION_STAGES = ("distill_kd", "distill_cosine", "distill_regressor")
TRAINING_STAGES = (TEACHER, STUDENT_CE, *DISTILLATION_STAGES)
ARCHITECTURE = {TEACHER: "DeepNN", **{stage: "LightNN" for stage in TRAINING_STAGES[1:]}}

_TRAINING_KEYS = ["seeds", "data.mean", "data.std", "train.epochs", "train.batch_size", "train.lr",
                  "train.precision", "train.device"]
# The params.yaml keys each stage reads; dvc.yaml lists exactly these (a test keeps them in step).
STAGE_PARAMS: dict[str, list[str]] = {
    "download": ["data.url", "data.md5", "data.format"],
    TEACHER: _TRAINING_KEYS,
    STUDENT_CE: _TRAINING_KEYS,
    "distill_kd": [*_TRAINING_KEYS, "distill_kd.T", "distill_kd.soft_target_loss_weight", "distill_kd.ce_loss_weight"],
    "distill_cosine": [*_TRAINING_KEYS, "distill_cosine.hidden_rep_loss_weight", "distill_cosine.ce_loss_weight"],
    "distill_regressor": [*_TRAINING_KEYS, "distill_regressor.feature_map_weight", "distill_regressor.ce_loss_weight"],
    "report": ["train.precision", "train.device"],  # the latency it measures depends on them
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


class ResumePoint:
    """A training's last completed epoch on disk, so a killed stage continues instead of restarting.

    Kept outside DVC's outputs (DVC deletes those before rerunning a stage) and valid only for the
    same params and inputs: the fingerprint covers the stage's params, its seed and its input files.
    """

    def __init__(self, layout: Layout, stage: str, seed: int, params: dict[str, object], inputs: list[Path]) -> None:
        self.path = layout.root / ".resume" / f"{stage}-seed{seed}.pt"
        stats = [(str(p.relative_to(layout.root)), p.stat().st_size, p.stat().st_mtime_ns) for p in inputs]
        blob = json.dumps({"params": params, "seed": seed, "inputs": stats}, sort_keys=True, default=str)
        self.fingerprint = hashlib.sha256(blob.encode()).hexdigest()

    def load(self) -> dict | None:
        """The saved record ({run_id, state}), or None; a record for other inputs ends its run as FAILED."""
        if not self.path.is_file():
            return None
        try:
            saved = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - a damaged resume file only costs the resume
            self.clear()
            return None
        if saved.get("fingerprint") != self.fingerprint or saved.get("state") is None:
            tracking.mark_failed(saved["run_id"])
            self.clear()
            return None
        return saved

    def save(self, run_id: str, state: dict | None) -> None:
        with atomic_path(self.path) as partial:
            torch.save({"fingerprint": self.fingerprint, "run_id": run_id, "state": state}, partial)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


@dataclass
class SeedResult:
    seed: int
    model: ConvClassifier
    history: list[EpochResult]
    run_id: str


def _train_seed(stage: str, seed: int, params: Params, layout: Layout, runtime: Runtime, dataset: ImageDataset,
                train_data: DeviceImages, test_data: DeviceImages, teacher: dict[str, torch.Tensor]) -> SeedResult:
    inputs = [layout.dataset] + ([layout.teacher_outputs] if teacher else [])
    resume = ResumePoint(layout, stage, seed, stage_params(stage, params), inputs)
    saved = resume.load()
    # Seeded right before the network is built, as in the tutorial: for a given seed, every
    # student of every method starts from the same weights, so they differ by the objective alone.
    torch.manual_seed(seed)
    model = build_model(ARCHITECTURE[stage], num_classes=len(dataset.classes))
    model = model.to(runtime.device, memory_format=torch.channels_last)
    objective = build_objective(stage, params).to(runtime.device)
    train_params = params.train
    run_params = {**stage_params(stage, params), "seed": seed}
    with tracking.stage_run(stage, run_params, layout.root, seed=seed, run_id=saved and saved["run_id"]) as run:
        run_id = run.info.run_id
        if saved:
            print(f"{stage}: resuming seed {seed} after epoch {saved['state']['epoch']} (MLflow run {run_id})")
        else:
            resume.save(run_id, None)
            tracking.log_dataset(dataset.train_images.numpy(), dataset.train_labels.numpy(), "train",
                                 params.data.url, "training")
            tracking.log_dataset(dataset.test_images.numpy(), dataset.test_labels.numpy(), "test",
                                 params.data.url, "evaluation")
        history = train(model, objective, train_data, test_data, runtime, stage=stage, epochs=train_params.epochs,
                        batch_size=train_params.batch_size, lr=train_params.lr, seed=seed, teacher=teacher,
                        on_epoch=lambda result: tracking.log_metrics(result.metrics(), step=result.epoch),
                        resume_from=saved and saved["state"], on_checkpoint=lambda state: resume.save(run_id, state))
        final = history[-1]
        tracking.log_metrics({"test_accuracy": final.test_accuracy, "train_loss": final.train_loss,
                              "parameters": count_parameters(model)})
        tracking.log_model(model, name=stage)
    resume.clear()
    return SeedResult(seed, model.cpu(), history, run_id)


def _history_table(results: list[SeedResult]) -> pd.DataFrame:
    """Per-epoch metrics averaged over seeds (per-seed curves are in MLflow)."""
    rows = [{"seed": r.seed, "epoch": e.epoch, **e.metrics()} for r in results for e in r.history]
    return pd.DataFrame(rows).drop(columns="seed").groupby("epoch", as_index=False).mean()


def run_training(stage: str, params: Params, layout: Layout) -> dict[str, object]:
    started = time.perf_counter()
    keep_freed_memory()
    runtime = resolve_runtime(params.train.device, params.train.precision)
    dataset = ImageDataset.load(layout.dataset)
    normalization = (params.data.mean, params.data.std)
    train_data = DeviceImages(dataset.train_images, dataset.train_labels, *normalization, runtime.device)
    test_data = DeviceImages(dataset.test_images, dataset.test_labels, *normalization, runtime.device)
    teacher = _load_teacher_outputs(layout, build_objective(stage, params).teacher_outputs, runtime.device)
    seeds = params.seeds[:1] if stage == TEACHER else params.seeds
    tracking.connect(layout.root)  # fail fast, before any training, if the store is unusable
    print(f"{stage}: {ARCHITECTURE[stage]} on {runtime.device}, {runtime.precision}, seeds {seeds}")

    results = [_train_seed(stage, seed, params, layout, runtime, dataset, train_data, test_data, teacher)
               for seed in seeds]
    if stage == TEACHER:
        teacher_model = results[0].model.to(runtime.device, memory_format=torch.channels_last)
        with atomic_path(layout.teacher_outputs) as partial:
            torch.save(teacher_outputs(teacher_model, train_data, runtime), partial)
    accuracies = [r.history[-1].test_accuracy for r in results]
    metrics = {
        "test_accuracy": float(np.mean(accuracies)),
        "test_accuracy_std": float(np.std(accuracies, ddof=1)) if len(accuracies) > 1 else 0.0,
        "per_seed": {str(r.seed): r.history[-1].test_accuracy for r in results},
        "train_loss": float(np.mean([r.history[-1].train_loss for r in results])),
        "parameters": count_parameters(results[0].model),
        "epochs": params.train.epochs,
        "wall_time_s": round(time.perf_counter() - started, 2),
        "precision": runtime.precision,
        "mlflow_run_ids": {str(r.seed): r.run_id for r in results},
    }
    save_checkpoint(layout.model(stage), {r.seed: r.model for r in results}, stage=stage,
                    params=stage_params(stage, params), metrics=metrics, classes=dataset.classes,
                    normalization={"mean": list(params.data.mean), "std": list(params.data.std)})
    with atomic_path(layout.history(stage)) as partial:
        _history_table(results).to_csv(partial, index=False)
    write_json(layout.metrics(stage), metrics)
    print(f"{stage}: test_accuracy {metrics['test_accuracy']:.2f}% over {len(seeds)} seed(s) "
          f"in {metrics['wall_time_s']:.0f} s")
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
