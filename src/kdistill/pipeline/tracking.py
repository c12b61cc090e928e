"""MLflow tracking: one experiment, one run per stage execution, named after the stage."""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import mlflow
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.http_dataset_source import HTTPDatasetSource
from mlflow.data.meta_dataset import MetaDataset

from kdistill.errors import TrackingError

EXPERIMENT = "knowledge-distillation"


def store_root(root: Path) -> Path:
    """Where the embedded store lives: the project root, also for queued DVC experiments.

    `dvc exp run --queue` and `--temp` run each experiment in a copy under
    <project>/.dvc/tmp/exps/; its runs belong in the project's store, not in a copy that DVC deletes.
    """
    parts = root.resolve().parts
    for i in range(len(parts) - 3):
        if parts[i:i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return root


def tracking_uri(root: Path) -> str:
    """MLFLOW_TRACKING_URI when set, else the embedded SQLite store at the project root."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(store_root(root) / 'mlflow.db').resolve()}"


def git_commit(root: Path) -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=False)
    except FileNotFoundError:  # no git on this machine: the run is still worth recording
        return None
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


def run_tags(stage: str, root: Path, seed: int | None) -> dict[str, str]:
    tags = {"stage": stage, "host": socket.gethostname()}
    if seed is not None:
        tags["seed"] = str(seed)
    if commit := git_commit(root):
        tags["mlflow.source.git.commit"] = commit
    if experiment := os.environ.get("DVC_EXP_NAME"):
        tags["dvc.experiment"] = experiment
    # Which sweep and which attempt of its task (kdistill.sweep): a retried task ends a dead attempt's runs.
    for variable, tag in (("KDISTILL_SWEEP", "kdistill.sweep"), ("KDISTILL_ATTEMPT", "kdistill.attempt")):
        if value := os.environ.get(variable):
            tags[tag] = value
    return tags


def connect(root: Path) -> str:
    uri = tracking_uri(root)
    if os.environ.get("MLFLOW_TRACKING_URI"):
        _connect(uri, None)
        return uri
    # Parallel experiments share the embedded store: whoever comes first creates its schema while
    # the others wait, avoiding MLflow's migration race on a fresh SQLite file (mlflow/mlflow#6490).
    # Artifacts live beside mlflow.db, wherever the stage was started from.
    store = store_root(root)
    with open(store / ".mlflow.db.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            _connect(uri, store / "mlruns")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return uri


@contextmanager
def stage_run(stage: str, params: dict[str, Any], root: Path, *, seed: int | None = None,
              run_id: str | None = None) -> Iterator[Any]:
    """An MLflow run for one stage execution (one seed); it ends FAILED if the stage fails or is interrupted.

    ``run_id`` continues an interrupted run, so a resumed training stays one coherent record. If
    the store itself fails, the run is left as it is (nothing can reach it) and continued later.
    """
    connect(root)
    try:
        with interrupts_held(), reporting("start a run in"):
            run = mlflow.start_run(run_id=run_id, run_name=None if run_id else stage,
                                   tags=run_tags(stage, root, seed))
            mlflow.log_params(params)
        yield run
    except TrackingError:
        raise
    except BaseException:
        with interrupts_held(), suppress(Exception):  # the original error is the one to report
            mlflow.end_run("FAILED")
        raise
    with interrupts_held(), reporting("finish the run in"):
        mlflow.end_run("FINISHED")


@contextmanager
def interrupts_held() -> Iterator[None]:
    """Ctrl-C waits for the end of the block, then takes effect as it would have.

    Starting or ending a run is several writes to the store. Interrupted between them, a run is
    left RUNNING for good (created, but not yet this process's active run, or no longer), or
    MLflow's exit hook ends it FINISHED. Only the main thread receives signals in Python.
    """
    # None: a handler set outside Python, which signal.signal could not put back.
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is None:
        yield
        return
    held: list[Any] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if held and callable(previous):
        previous(signal.SIGINT, held[0])
    elif held and previous == signal.SIG_DFL:
        raise KeyboardInterrupt


@contextmanager
def reporting(action: str) -> Iterator[None]:
    """Any failure of the store becomes one TrackingError naming the URI."""
    try:
        yield
    except TrackingError:
        raise
    except Exception as error:  # noqa: BLE001 - MLflow, requests and SQLAlchemy errors alike
        raise TrackingError(f"cannot {action} the MLflow tracking store at {mlflow.get_tracking_uri()}: "
                            f"{type(error).__name__}: {error}") from None


def mark_failed(run_id: str) -> None:
    """End a run that an interrupted process left RUNNING."""
    client = mlflow.tracking.MlflowClient()
    try:
        run = client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return
    if run.info.status == "RUNNING":
        client.set_terminated(run_id, status="FAILED")


def log_dataset(name: str, digest: str, source: str, context: str) -> None:
    """A split as an MLflow input: its name, where it came from (data.url) and a digest of its contents.

    Metadata only: the digest covers every image and label (``ImageDataset.digest``, computed once
    per stage), where MLflow's own numpy digest samples the first 10,000 values and copies the
    whole array to do so, for every seed.
    """
    with warnings.catch_warnings():
        # A local path matches two equivalent registered source types; MLflow warns and picks one.
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        resolved = HTTPDatasetSource(source) if source.startswith(("http://", "https://")) \
            else resolve_dataset_source(source)
    with reporting("log a dataset to"):
        mlflow.log_input(MetaDataset(resolved, name=name, digest=digest), context=context)


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    with reporting("log metrics to"):
        mlflow.log_metrics({name: float(value) for name, value in metrics.items()}, step=step)


def logged_steps(run_id: str, key: str) -> set[int]:
    """The steps of ``key`` the run already holds: a resumed training logs only the others."""
    with reporting("read metrics from"):
        return {m.step for m in mlflow.tracking.MlflowClient().get_metric_history(run_id, key)}


def has_model(run_id: str) -> bool:
    with reporting("search models in"):
        return bool(mlflow.search_logged_models(filter_string=f"source_run_id = '{run_id}'", output_format="list"))
