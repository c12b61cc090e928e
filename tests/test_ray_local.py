"""`kdistill sweep` with no address: a Ray of its own on this machine, no remote at all; a bad value fails one
experiment alone, and Ctrl-C stops the sweep and its stages."""

from __future__ import annotations

import signal
import subprocess

import psutil
import pytest

from conftest import PIPELINE_SEEDS as SEEDS
from sweeps import KDISTILL, committed_copy, experiments, runs_by_experiment, sweep_env, training_experiment, until_running

pytestmark = [pytest.mark.e2e, pytest.mark.server]


def test_a_local_sweep_needs_no_cluster_and_no_remote(tmp_path, first_run):
    env = sweep_env()
    project = committed_copy(first_run[0], tmp_path, env)
    result = subprocess.run([KDISTILL, "sweep", "-n", "local", "-S", "distill_kd.T=-1,3"], cwd=project, env=env,
                            capture_output=True, text=True, timeout=900)
    # T=-1 fails that experiment alone, with its one-line error in the sweep's table; the other goes on.
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    table = {line.split("|")[1].strip(): line for line in result.stdout.splitlines() if line.startswith("| local-")}
    assert sorted(table) == ["local-1", "local-2"]
    assert "| failed " in table["local-1"] and "distill_kd.T: Input should be greater than 0" in table["local-1"]
    assert "| done " in table["local-2"]
    landed = experiments(project, env)  # in this repository, as `dvc exp run --queue` leaves them
    assert {name: data["params"]["params.yaml"]["data"]["distill_kd"]["T"] for name, data in landed.items()} == {
        "local-2": 3}
    runs = runs_by_experiment(f"sqlite:///{project / 'mlflow.db'}")  # the project's own store
    assert [run.info.status for run in runs["local-2"]] == ["FINISHED"] * len(SEEDS)
    assert "local-1" not in runs  # it failed in check_params, before anything trained


def test_ctrl_c_cancels_the_sweep_and_stops_its_stages(tmp_path, first_run):
    env = sweep_env()
    project = committed_copy(first_run[0], tmp_path, env)
    # Five seeds: the stage is still at work when Ctrl-C reaches it.
    # As from a terminal: pytest-xdist's workers ignore SIGINT, and their children would inherit that.
    sweep = psutil.Popen([KDISTILL, "sweep", "-n", "stopped", "-S", "distill_kd.T=6,7", "-S", "seeds=[42,7,1,2,3]"],
                         cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    store = f"sqlite:///{project / 'mlflow.db'}"
    name = training_experiment(lambda: sweep.children(recursive=True), sweep)
    at_work = until_running(store, name)  # its stage on its first seed, four more to go
    started = sweep.children(recursive=True)  # Ray's processes, its workers, their DVC and stages
    sweep.send_signal(signal.SIGINT)
    try:
        _, stderr = sweep.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        sweep.kill()
        pytest.fail(f"the sweep did not stop:\n{sweep.communicate()[1][-5000:]}")
    assert sweep.returncode == 130, stderr[-3000:]
    assert "interrupted; outstanding experiments cancelled" in stderr
    psutil.wait_procs(started, timeout=30)
    assert not [process.cmdline() for process in started if process.is_running()
                and process.status() != psutil.STATUS_ZOMBIE]
    assert not [exp for exp in experiments(project, env) if exp.startswith("stopped-")]
    # The stages got the Ctrl-C: no run is left RUNNING (a stage that never saw it would be killed
    # after a grace period, its run left RUNNING), and the stage at work stopped before its last seed.
    # The other experiment may have finished a whole stage before the Ctrl-C: that is no failure.
    runs = {exp: found for exp, found in runs_by_experiment(store, None).items() if exp and exp.startswith("stopped-")}
    assert name in runs
    for exp, found in runs.items():
        statuses = [run.info.status for run in found]
        assert "RUNNING" not in statuses, (exp, statuses)
    for stage in at_work:
        finished = [run for run in runs[name] if run.info.run_name == stage and run.info.status == "FINISHED"]
        assert len(finished) < 5, (name, stage)
