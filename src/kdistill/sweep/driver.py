"""``kdistill sweep``: the grid's experiments as Ray tasks, locally by default or on a cluster, and their table."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from kdistill.errors import ConfigError
from kdistill.sweep.plan import GIT_REMOTE, Plan, make_plan, tool
from kdistill.sweep.task import run_experiment

# A task whose node dies is run again elsewhere; an experiment that fails by itself is not.
SYSTEM_RETRIES = 3


def _ray() -> Any:
    try:
        import ray
    except ModuleNotFoundError:
        raise ConfigError("kdistill sweep needs Ray: pip install -e '.[ray]'") from None
    return ray


def run_sweep(root: Path, overrides: list[str], *, address: str | None = None, name: str | None = None,
              cpus: float = 1.0, gpus: float = 0.0) -> pd.DataFrame:
    address = address or os.environ.get("RAY_ADDRESS") or None
    plan = make_plan(root, overrides, name=name, cluster=address is not None)
    ray = _ray()
    threads = max(1, int(cpus))
    # The project's code and tools come from each node's own checkout and environment: only the
    # tracking credentials travel, in the tasks' environment, never written into the project.
    credentials = {key: os.environ[key] for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
                   if key in os.environ}
    # "local": a new Ray of this process's own, never a cluster that `ray start` left running here.
    ray.init(address=address or "local", runtime_env={"env_vars": credentials}, log_to_driver=False,
             include_dashboard=False if address is None else None)
    task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=SYSTEM_RETRIES, retry_exceptions=False)(run_experiment)
    print(f"sweep {plan.sweep}: {len(plan.experiments)} experiments from {plan.commit[:7]} on "
          f"{'Ray at ' + address if address else 'a local Ray'}, {cpus:g} CPU(s) and {gpus:g} GPU(s) each", flush=True)
    refs = {task.remote(plan, experiment, threads): experiment for experiment in plan.experiments}
    rows = []
    try:
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                rows.append(_outcome(ray, ref, refs[ref]))
                print(f"  {rows[-1]['experiment']}: {rows[-1]['status']}"
                      + (f" ({rows[-1]['error']})" if rows[-1].get("error") else ""), flush=True)
    except KeyboardInterrupt:
        print(f"sweep {plan.sweep}: interrupted; stopping its experiments", file=sys.stderr, flush=True)
        _cancel(ray, list(refs))
        print(f"sweep {plan.sweep}: interrupted; outstanding experiments cancelled", file=sys.stderr, flush=True)
        raise
    finally:
        ray.shutdown()
    table = _table(rows, plan)
    _fetch(root, plan, table)
    print(table.to_markdown(index=False, floatfmt=".2f"))
    return table


def _cancel(ray: Any, refs: list[Any], grace: float = 30.0) -> None:
    """Interrupt the running tasks, as Ctrl-C would (their stages end their MLflow runs FAILED and stop
    their processes), drop the queued ones; whatever has not stopped after ``grace`` seconds is killed."""
    for ref in refs:
        ray.cancel(ref, force=False)
    _, stuck = ray.wait(refs, num_returns=len(refs), timeout=grace)
    for ref in stuck:
        ray.cancel(ref, force=True)


def _outcome(ray: Any, ref: Any, experiment: Any) -> dict[str, Any]:
    try:
        return ray.get(ref)
    except Exception as error:  # noqa: BLE001 - retries exhausted, or cancelled: that experiment alone
        message = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        return {"experiment": experiment.name, "overrides": " ".join(experiment.overrides), "status": "failed",
                "error": message}


def _table(rows: list[dict[str, Any]], plan: Plan) -> pd.DataFrame:
    order = {experiment.name: index for index, experiment in enumerate(plan.experiments)}
    table = pd.DataFrame(rows).sort_values("experiment", key=lambda names: names.map(order))
    first = ["experiment", "overrides", "status"]
    return table[[*first, *(c for c in table.columns if c not in first)]].fillna("")


def _fetch(root: Path, plan: Plan, table: pd.DataFrame) -> None:
    """Experiments pushed to the team's remote come back here too, so `dvc exp show` lists them at once."""
    finished = list(table.loc[table["status"] == "done", "experiment"])
    if finished and plan.git_url != str(root):
        import subprocess

        subprocess.run([tool("dvc"), "exp", "pull", GIT_REMOTE, *finished], cwd=root, check=False, capture_output=True)
