"""A stage's MLflow run ends with what happened to the stage, wherever a Ctrl-C lands in its bookkeeping."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from kdistill.pipeline import tracking


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tracked")


@pytest.fixture
def store(root, monkeypatch) -> MlflowClient:
    """The embedded store at ``root``, and Ctrl-C as a stage process has it (pytest-xdist's workers ignore it)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri, handler = mlflow.get_tracking_uri(), signal.signal(signal.SIGINT, signal.default_int_handler)
    yield MlflowClient(tracking.tracking_uri(root))
    signal.signal(signal.SIGINT, handler)
    mlflow.set_tracking_uri(uri)


def ctrl_c_inside(monkeypatch, method: str) -> list[str]:
    """The first call of ``MlflowClient.<method>`` gets a Ctrl-C right after its write to the store,
    as a terminal would send it: a signal, taken whenever Python next checks for one."""
    real, calls = getattr(MlflowClient, method), []

    def interrupted(self, *args, **kwargs):
        result = real(self, *args, **kwargs)
        if not calls:
            calls.append(method)
            os.kill(os.getpid(), signal.SIGINT)
        return result

    monkeypatch.setattr(MlflowClient, method, interrupted)
    return calls


@pytest.mark.parametrize(("method", "stage", "ends"), [
    ("create_run", "created", "FAILED"),   # the run exists in the store; this process does not hold it yet
    ("log_batch", "params", "FAILED"),     # its params, before the stage's work starts
    ("set_terminated", "done", "FINISHED"),  # the stage's work is done: the run says so, then the stage stops
])
def test_a_ctrl_c_while_the_run_starts_or_ends_leaves_no_run_running(store, root, monkeypatch, method, stage, ends):
    calls = ctrl_c_inside(monkeypatch, method)
    with pytest.raises(KeyboardInterrupt), tracking.stage_run(stage, {"T": 2}, root, seed=42):
        pass
    assert calls == [method]
    (run,) = store.search_runs([store.get_experiment_by_name(tracking.EXPERIMENT).experiment_id],
                               filter_string=f"attributes.run_name = '{stage}'")
    assert run.info.status == ends
    assert mlflow.active_run() is None  # nothing left for MLflow's exit hook to end FINISHED


def test_a_ctrl_c_while_a_failed_stage_ends_its_run_still_ends_it_failed(store, root, monkeypatch):
    ctrl_c_inside(monkeypatch, "set_terminated")
    with pytest.raises(KeyboardInterrupt), tracking.stage_run("failing", {}, root):
        raise RuntimeError("the stage's own failure")
    (run,) = store.search_runs([store.get_experiment_by_name(tracking.EXPERIMENT).experiment_id],
                               filter_string="attributes.run_name = 'failing'")
    assert run.info.status == "FAILED"


def test_outside_the_bookkeeping_a_ctrl_c_takes_effect_at_once(store, root):
    with tracking.stage_run("interrupted", {}, root), pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):  # the signal is taken within the first few of these
            pass
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
