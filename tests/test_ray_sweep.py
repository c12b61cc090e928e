"""`kdistill sweep` on a real Ray cluster on this machine (Ray's own multi-node test cluster: a head and two
worker nodes, one CPU each), with a bare git remote, a directory DVC remote and an authenticated MLflow
server, one node killed mid-sweep; and on a local Ray with no remote at all, interrupted too."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from conftest import PIPELINE_SEEDS as SEEDS
from helpers import BIN, sh
from test_team import TrackingServer, patched_env, set_up_team

pytestmark = [pytest.mark.e2e, pytest.mark.server]
DVC, KDISTILL = str(BIN / "dvc"), str(BIN / "kdistill")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "RAY_ADDRESS")}
    env.update(PATH=f"{BIN}{os.pathsep}{env['PATH']}", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.com", RAY_USAGE_STATS_ENABLED="0",
               # One cluster of this test's own, on this machine: no token between its processes.
               RAY_AUTH_MODE="disabled",
               # A dead node is noticed in seconds rather than half a minute.
               RAY_health_check_period_ms="1000", RAY_health_check_failure_threshold="3")
    return env


def _project(template: Path, destination: Path, env: dict[str, str]) -> Path:
    """The session's first run (every stage done), its results committed: experiments restore all they do not change."""
    project = destination / "project"
    shutil.copytree(template, project, symlinks=True)
    sh("git", "add", "-A", cwd=project, env=env)
    sh("git", "commit", "-qm", "base results", cwd=project, env=env)
    return project


def _experiments(project: Path, env: dict[str, str]) -> dict[str, dict]:
    shown = json.loads(sh(DVC, "exp", "show", "--json", cwd=project, env=env))
    return {exp["name"]: exp["revs"][0]["data"] for rev in shown for exp in (rev.get("experiments") or [])}


ADMIN, WRITER = ("admin", "admin-pw-3e81c2"), ("dana", "dana-pw-b7d2a4")


def _kd_runs(uri: str) -> dict[str, list]:
    import mlflow

    with patched_env(MLFLOW_TRACKING_USERNAME=ADMIN[0], MLFLOW_TRACKING_PASSWORD=ADMIN[1]):
        client = mlflow.tracking.MlflowClient(uri)
        experiment = client.get_experiment_by_name("knowledge-distillation")
        runs = client.search_runs([experiment.experiment_id], filter_string="attributes.run_name = 'distill_kd'")
    found: dict[str, list] = {}
    for run in runs:
        found.setdefault(run.data.tags.get("dvc.experiment"), []).append(run)
    return found


def test_a_local_sweep_needs_no_cluster_and_no_remote(tmp_path, first_run):
    env = _env()
    project = _project(first_run[0], tmp_path, env)
    result = subprocess.run([KDISTILL, "sweep", "-n", "local", "-S", "distill_kd.T=3,-1,5"], cwd=project, env=env,
                            capture_output=True, text=True, timeout=900)
    # T=-1 fails that experiment alone, with its one-line error in the sweep's table; the others go on.
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    table = {line.split("|")[1].strip(): line for line in result.stdout.splitlines() if line.startswith("| local-")}
    assert sorted(table) == ["local-1", "local-2", "local-3"]
    assert "| failed " in table["local-2"] and "distill_kd.T: Input should be greater than 0" in table["local-2"]
    assert "| done " in table["local-1"] and "| done " in table["local-3"]
    experiments = _experiments(project, env)
    assert {name: data["params"]["params.yaml"]["data"]["distill_kd"]["T"] for name, data in experiments.items()
            if name != "local-2"} == {"local-1": 3, "local-3": 5}
    runs = _kd_runs(f"sqlite:///{project / 'mlflow.db'}")  # the project's own store
    for name in ("local-1", "local-3"):
        assert [run.info.status for run in runs[name]] == ["FINISHED"] * len(SEEDS), name


class Cluster:
    """Ray's own multi-node test cluster: a head without CPUs (it schedules, it runs nothing) and worker nodes
    of one CPU each, each with its own ports (two `ray start` on one host race for the same free port)."""

    def __init__(self, env: dict[str, str]) -> None:
        from ray.cluster_utils import Cluster as RayCluster

        # Ray's sockets live under its temp dir, and an AF_UNIX path may not exceed 107 bytes.
        self.temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
        with patched_env(**{key: env[key] for key in env if key.startswith("RAY_")}):  # the nodes inherit them
            self.ray = RayCluster(initialize_head=True, head_node_args={
                "num_cpus": 0, "include_dashboard": False, "temp_dir": self.temp})
            self.nodes = {name: self.ray.add_node(num_cpus=1, resources={name: 1})
                          for name in ("node_a", "node_b")}
        self.address = self.ray.address

    def processes(self, name: str) -> list[psutil.Process]:
        """A node's own processes and everything they started: Ray's workers, their git, DVC and stages."""
        own = [psutil.Process(info.process.pid) for infos in self.nodes[name].all_processes.values() for info in infos
               if info.process.poll() is None]
        return own + [child for process in own for child in process.children(recursive=True)]

    def kill(self, name: str) -> None:
        """The node dies as a machine does: every process of it at once, no chance to clean up."""
        for process in self.processes(name):
            process.kill()
        self.ray.remove_node(self.nodes.pop(name), allow_graceful=False)

    def stop(self) -> None:
        self.ray.shutdown()
        shutil.rmtree(self.temp, ignore_errors=True)


@pytest.fixture(scope="module")
def team(tmp_path_factory, first_run):
    base = tmp_path_factory.mktemp("ray-team")
    env = _env()
    server = TrackingServer(f"sqlite:///{base / 'tracking.db'}", base / "artifacts", env, auth=base / "auth",
                            admin_password=ADMIN[1])
    server.start()
    set_up_team(server, ADMIN[1], dict([WRITER]), {})
    # The driver's credentials reach the tasks through Ray's runtime environment, not a file.
    env_tracked = {**env, "MLFLOW_TRACKING_URI": server.uri, "MLFLOW_TRACKING_USERNAME": WRITER[0],
                   "MLFLOW_TRACKING_PASSWORD": WRITER[1]}
    origin, storage = base / "origin.git", base / "dvc-storage"
    sh("git", "init", "-q", "--bare", str(origin), cwd=base, env=env)
    project = _project(first_run[0], base, env)  # the teacher, trained once, shared through the run-cache
    sh(DVC, "remote", "add", "-d", "storage", str(storage), cwd=project, env=env)
    sh("git", "remote", "add", "origin", str(origin), cwd=project, env=env)
    sh("git", "commit", "-qam", "remotes", cwd=project, env=env)
    sh("git", "push", "-q", "origin", "HEAD", cwd=project, env=env)
    sh(DVC, "push", "--run-cache", cwd=project, env=env)
    cluster = Cluster(env)
    yield project, env_tracked, cluster, server, origin
    cluster.stop()
    server.stop()


def _training(processes: Callable[[], list[psutil.Process]], timeout: float = 600) -> str:
    """Until one of ``processes`` is a distill_kd stage at work; the experiment's name, from its `dvc exp run`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            lines = [process.cmdline() for process in processes()]
        except psutil.NoSuchProcess:
            continue
        if any("stages/distill_kd.py" in " ".join(line) for line in lines):
            return next(line[line.index("-n") + 1] for line in lines if {"exp", "run", "-n"} <= set(line))
        time.sleep(0.1)
    pytest.fail("no distill_kd stage started")


def _until_running(uri: str, name: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not any(run.info.status == "RUNNING" for run in _kd_runs(uri).get(name, [])):
        assert time.monotonic() < deadline, f"{name}'s distill_kd run never started"
        time.sleep(0.2)


def _fresh_clone(origin: Path, path: Path, env: dict[str, str], names: list[str]) -> dict[str, dict]:
    sh("git", "clone", "-q", str(origin), str(path), cwd=path.parent, env=env)
    for name in names:
        sh(DVC, "exp", "pull", "origin", name, cwd=path, env=env)
    return _experiments(path, env)


def test_a_sweep_on_the_cluster_lands_in_git_dvc_and_mlflow_though_a_node_dies(team, tmp_path):
    project, env, cluster, server, origin = team
    sweep = subprocess.Popen([KDISTILL, "sweep", "-n", "grid", "-S", "distill_kd.T=1,3,4", "--address", cluster.address],
                             cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = _training(lambda: cluster.processes("node_a"))
    _until_running(server.uri, killed)
    cluster.kill("node_a")  # mid-training: its MLflow run is RUNNING, its experiment not pushed
    stdout, stderr = sweep.communicate(timeout=1200)
    assert sweep.returncode == 0, stdout[-3000:] + stderr[-3000:]
    names = ["grid-1", "grid-2", "grid-3"]
    experiments = _fresh_clone(origin, tmp_path / "reviewer", env, names)
    t_of = {name: experiments[name]["params"]["params.yaml"]["data"]["distill_kd"]["T"] for name in names}
    assert t_of == {"grid-1": 1, "grid-2": 3, "grid-3": 4}  # 2, the base value, would train nothing
    assert all("test_accuracy" in experiments[name]["metrics"]["metrics/distill_kd.json"]["data"] for name in names)
    runs = _kd_runs(server.uri)
    # Each experiment finished exactly once; the dead attempt's runs were ended FAILED by the retry.
    statuses = {name: sorted(run.info.status for run in runs[name]) for name in names}
    assert all(statuses[name] == ["FINISHED"] * len(SEEDS) for name in names if name != killed), statuses
    assert statuses[killed].count("FINISHED") == len(SEEDS) and "RUNNING" not in statuses[killed], statuses
    assert statuses[killed].count("FAILED") >= 1, statuses
    assert len({run.data.tags["kdistill.attempt"] for run in runs[killed]}) == 2  # the dead attempt and the retry
    assert all(run.data.tags["kdistill.sweep"] for name in names for run in runs[name])
    leaked = [str(p) for p in project.rglob("*") if p.is_file() and not any(part in str(p) for part in (
              ".dvc/cache", "/tests/")) and WRITER[1].encode() in p.read_bytes()]
    assert not leaked and WRITER[1] not in stdout + stderr


def test_ctrl_c_cancels_the_sweep_and_stops_its_stages(tmp_path, first_run):
    env = _env()
    project = _project(first_run[0], tmp_path, env)
    sweep = psutil.Popen([KDISTILL, "sweep", "-n", "stopped", "-S", "distill_kd.T=6,7,8"], cwd=project, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    store = f"sqlite:///{project / 'mlflow.db'}"
    _until_running(store, _training(lambda: sweep.children(recursive=True)))
    started = sweep.children(recursive=True)  # Ray's processes, its workers, their DVC and stages
    sweep.send_signal(signal.SIGINT)
    _, stderr = sweep.communicate(timeout=120)
    assert sweep.returncode == 130, stderr[-3000:]
    assert "interrupted; outstanding experiments cancelled" in stderr
    psutil.wait_procs(started, timeout=30)
    assert not [process.cmdline() for process in started if process.is_running()
                and process.status() != psutil.STATUS_ZOMBIE]
    assert not [name for name in _experiments(project, env) if name.startswith("stopped-")]
    interrupted = [run.info.status for name, found in _kd_runs(store).items() if name and name.startswith("stopped-")
                   for run in found]
    assert "FAILED" in interrupted and "RUNNING" not in interrupted, interrupted  # a seed done before may stay FINISHED
