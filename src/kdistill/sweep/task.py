"""One experiment of a sweep, on whichever node Ray places it: a scratch clone, `dvc exp run`, then push.

Idempotent, so that Ray may run it again on another node when one dies: the experiment has a fixed
name and is pushed with ``--force``, and runs that a dead attempt left in MLflow are ended as
FAILED before the new attempt starts. A failure of the experiment itself (a bad param value, a
diverged loss) is returned, not raised: it ends that experiment alone, with its one-line error.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any

from kdistill.sweep.plan import Experiment, Plan, tool

SWEEP_TAG, ATTEMPT_TAG = "kdistill.sweep", "kdistill.attempt"


class StepError(Exception):
    """A command of the experiment failed; its message is the command's last error line."""


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    # A process group of its own: a cancelled task (Ctrl-C on the sweep) stops the stage processes
    # that DVC started too, not only DVC, which would leave them training as orphans. Ray's worker
    # blocks SIGINT, and a child inherits the signal mask of the thread that starts it: unblock it
    # for the start (a preexec_fn would not be safe in Ray's threaded worker), or Ctrl-C would never
    # reach them.
    mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    try:
        process = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   start_new_session=True)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    try:
        stdout, stderr = process.communicate()
    except BaseException:
        _stop_group(process)
        raise
    if process.returncode:
        raise StepError(_one_line(stderr + stdout) or f"{args[0]} exited with {process.returncode}")
    return stdout


def _stop_group(process: subprocess.Popen, grace: float = 10.0) -> None:
    """Ctrl-C to the command's whole process group (a stage ends its MLflow run FAILED), then SIGKILL."""
    for sig in (signal.SIGINT, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def _one_line(output: str) -> str:
    """The stage's own error (``error: <stage>: ...`` and the problems listed under it), else DVC's last."""
    lines = [line.rstrip() for line in output.splitlines() if line.strip()]
    for index, line in enumerate(lines):
        if line.startswith("error:"):
            details = [item.strip().removeprefix("- ") for item in lines[index + 1:] if item.lstrip().startswith("- ")]
            return "; ".join([line.removeprefix("error: "), *details])
    errors = [line for line in lines if line.startswith("ERROR:")]
    return (errors or lines or [""])[-1]


def end_dead_attempts(plan: Plan, experiment: Experiment, attempt: str) -> int:
    """Runs of this experiment from an earlier attempt of this sweep end FAILED: only one attempt counts."""
    import mlflow

    client = mlflow.tracking.MlflowClient(plan.tracking_uri)
    found = client.get_experiment_by_name("knowledge-distillation")
    if found is None:
        return 0
    runs = client.search_runs([found.experiment_id], filter_string=(
        f"tags.`{SWEEP_TAG}` = '{plan.sweep}' and tags.`dvc.experiment` = '{experiment.name}'"))
    dead = [run for run in runs if run.data.tags.get(ATTEMPT_TAG) != attempt and run.info.status != "FAILED"]
    for run in dead:
        client.set_terminated(run.info.run_id, status="FAILED")
    return len(dead)


def _metrics(clone: Path) -> dict[str, float]:
    found = {}
    for path in sorted((clone / "metrics").glob("*.json")):
        if path.stem != "report":
            found[path.stem] = json.loads(path.read_text()).get("test_accuracy")
    return found


def run_experiment(plan: Plan, experiment: Experiment, threads: int) -> dict[str, Any]:
    """Clone, restore what DVC has, run, push; the experiment's row of the sweep's table."""
    attempt = uuid.uuid4().hex[:8]
    env = {**os.environ, "MLFLOW_TRACKING_URI": plan.tracking_uri, "OMP_NUM_THREADS": str(threads),
           "KDISTILL_SWEEP": plan.sweep, "KDISTILL_ATTEMPT": attempt, "DVC_NO_ANALYTICS": "true"}
    dvc, git = tool("dvc"), "git"
    scratch = Path(tempfile.mkdtemp(prefix=f"kdistill-{experiment.name}-"))
    row: dict[str, Any] = {"experiment": experiment.name, "overrides": " ".join(experiment.overrides)}
    try:
        clone = scratch / "project"
        _run([git, "clone", "-q", plan.git_url, str(clone)], scratch, env)
        _run([git, "checkout", "-q", plan.commit], clone, env)
        for key, value in (("user.name", "kdistill sweep"), ("user.email", "sweep@kdistill")):
            _run([git, "config", key, value], clone, env)
        if plan.shared_cache:  # one machine, no DVC remote: outputs and run-cache go straight to the project's cache
            _run([dvc, "cache", "dir", "--local", plan.shared_cache], clone, env)
        else:  # a teacher trained once, anywhere, is restored rather than retrained
            _run([dvc, "pull", "--run-cache", "--allow-missing"], clone, env)
        end_dead_attempts(plan, experiment, attempt)
        sets = [arg for value in experiment.overrides for arg in ("-S", value)]
        _run([dvc, "exp", "run", "-n", experiment.name, *sets], clone, env)
        row.update(_metrics(clone))
        push = [dvc, "exp", "push", "--force", plan.git_url, experiment.name]
        _run(push + (["--no-cache"] if plan.shared_cache else []), clone, env)
        if plan.dvc_remote:
            _run([dvc, "push", "--run-cache"], clone, env)
        row["status"] = "done"
    except StepError as error:
        row.update(status="failed", error=str(error))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return row
