"""MLflow tracking: one experiment, one run per stage execution, named after the stage."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch

EXPERIMENT = "knowledge-distillation"


class TrackingError(RuntimeError):
    """The tracking server or store cannot be used; the message names the URI."""


def project_root() -> Path:
    """The directory holding dvc.yaml: DVC sets DVC_ROOT for its stages; otherwise search upwards."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    here = Path.cwd().resolve()
    for candidate in (here, *here.parents):
        if (candidate / "dvc.yaml").is_file():
            return candidate
    return here


def tracking_uri(root: Path) -> str:
    """MLFLOW_TRACKING_URI when set, else the embedded SQLite store at the project root."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root / 'mlflow.db').resolve()}"


def git_commit(root: Path) -> str | None:
    result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=False)
    return result.stdout.strip() or None if result.returncode == 0 else None


def _connect(uri: str, artifacts: Path | None) -> None:
    """Fail fast, naming the URI, when the store cannot be reached (instead of retrying for minutes)."""
    # Bounded retries: a server that is down must fail the stage within seconds, before training.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    mlflow.set_tracking_uri(uri)
    try:
        if artifacts is not None and mlflow.get_experiment_by_name(EXPERIMENT) is None:
            mlflow.create_experiment(EXPERIMENT, artifact_location=artifacts.resolve().as_uri())
        mlflow.set_experiment(EXPERIMENT)
    except Exception as error:  # noqa: BLE001 - any failure here means the store is unusable
        raise TrackingError(f"cannot use the MLflow tracking store at {uri}: {error}") from None


def run_tags(stage: str, root: Path) -> dict[str, str]:
    tags = {"stage": stage, "host": socket.gethostname()}
    if commit := git_commit(root):
        tags["mlflow.source.git.commit"] = commit
    if experiment := os.environ.get("DVC_EXP_NAME"):
        tags["dvc.experiment"] = experiment
    return tags


@contextmanager
def stage_run(stage: str, params: dict[str, Any], root: Path) -> Iterator[Any]:
    """An MLflow run for one stage execution; it ends FAILED if the stage raises."""
    uri = tracking_uri(root)
    # The embedded store keeps artifacts beside mlflow.db, wherever the stage was started from.
    _connect(uri, None if os.environ.get("MLFLOW_TRACKING_URI") else root / "mlruns")
    with mlflow.start_run(run_name=stage, tags=run_tags(stage, root)) as run:
        mlflow.log_params(params)
        yield run


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    mlflow.log_metrics({name: float(value) for name, value in metrics.items()}, step=step)


def log_model(model: Any, name: str) -> None:
    """Log the trained network with a signature and input example, so it loads back anywhere."""
    # Two images, not one: torch.export would otherwise specialize the batch dimension to 1.
    example = np.zeros((2, 3, 32, 32), dtype=np.float32)
    mlflow.pytorch.log_model(
        model.cpu().eval(),
        name=name,
        input_example=example,
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
    )
