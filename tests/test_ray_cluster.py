"""`kdistill sweep` on a real Ray cluster on this machine (Ray's own multi-node test cluster: a head and two
worker nodes, one CPU each), with a bare git remote, a directory DVC remote and an authenticated MLflow
server; one worker node dies mid-sweep."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import psutil
import pytest

from conftest import PIPELINE_SEEDS as SEEDS
from helpers import sh
from sweeps import (
    ADMIN,
    DVC,
    KDISTILL,
    WRITER,
    committed_copy,
    experiments,
    runs_by_experiment,
    sweep_env,
    training_experiment,
    until_running,
)
from test_team import TrackingServer, patched_env, set_up_team

pytestmark = [pytest.mark.e2e, pytest.mark.server]


class Cluster:
    """Ray's own multi-node test cluster: a head without CPUs (it schedules, it runs nothing) and worker nodes
    of one CPU each, each with its own ports (two `ray start` on one host race for the same free port)."""

    def __init__(self, env: dict[str, str]) -> None:
        from ray.cluster_utils import Cluster as RayCluster

        # Ray's sockets live under its temp dir, and an AF_UNIX path may not exceed 107 bytes.
        self.temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
        # The test cluster writes its address to $RAY_TMPDIR/ray/ray_current_cluster, by default under
        # /tmp/ray, which exists only once some Ray instance has run on the machine: on a fresh one the
        # cluster failed to start. Its own folder also keeps a user's /tmp/ray as it was.
        (Path(self.temp) / "ray").mkdir()
        # The nodes inherit this process's environment: Ray's settings, and the project's `python` on PATH.
        with patched_env(RAY_TMPDIR=self.temp,
                         **{key: env[key] for key in env if (key.startswith("RAY_") and key != "RAY_TMPDIR") or key == "PATH"}):
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
    env = sweep_env()
    server = TrackingServer(f"sqlite:///{base / 'tracking.db'}", base / "artifacts", env, auth=base / "auth",
                            admin_password=ADMIN[1])
    server.start()
    set_up_team(server, ADMIN[1], dict([WRITER]), {})
    # The driver's credentials reach the tasks through Ray's runtime environment, not a file.
    env_tracked = {**env, "MLFLOW_TRACKING_URI": server.uri, "MLFLOW_TRACKING_USERNAME": WRITER[0],
                   "MLFLOW_TRACKING_PASSWORD": WRITER[1]}
    origin, storage = base / "origin.git", base / "dvc-storage"
    sh("git", "init", "-q", "--bare", str(origin), cwd=base, env=env)
    project = committed_copy(first_run[0], base, env)  # the teacher, trained once, shared through the run-cache
    sh(DVC, "remote", "add", "-d", "storage", str(storage), cwd=project, env=env)
    sh("git", "remote", "add", "origin", str(origin), cwd=project, env=env)
    sh("git", "commit", "-qam", "remotes", cwd=project, env=env)
    sh("git", "push", "-q", "origin", "HEAD", cwd=project, env=env)
    sh(DVC, "push", "--run-cache", cwd=project, env=env)
    cluster = Cluster(env)
    yield project, env_tracked, cluster, server, origin
    cluster.stop()
    server.stop()


def _fresh_clone(origin: Path, path: Path, env: dict[str, str], names: list[str]) -> dict[str, dict]:
    sh("git", "clone", "-q", str(origin), str(path), cwd=path.parent, env=env)
    for name in names:
        sh(DVC, "exp", "pull", "origin", name, cwd=path, env=env)
    return experiments(path, env)


def test_a_sweep_on_the_cluster_lands_in_git_dvc_and_mlflow_though_a_node_dies(team, tmp_path):
    project, env, cluster, server, origin = team
    sweep = subprocess.Popen([KDISTILL, "sweep", "-n", "grid", "-S", "distill_kd.T=1,4", "--address", cluster.address],
                             cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = training_experiment(lambda: cluster.processes("node_a"), sweep)
    until_running(server.uri, killed)
    cluster.kill("node_a")  # mid-training: its MLflow run is RUNNING, its experiment not pushed
    stdout, stderr = sweep.communicate(timeout=1200)
    assert sweep.returncode == 0, stdout[-3000:] + stderr[-3000:]
    names = ["grid-1", "grid-2"]
    landed = _fresh_clone(origin, tmp_path / "reviewer", env, names)
    t_of = {name: landed[name]["params"]["params.yaml"]["data"]["distill_kd"]["T"] for name in names}
    assert t_of == {"grid-1": 1, "grid-2": 4}  # 2, the base value, would train nothing
    assert all("test_accuracy" in landed[name]["metrics"]["metrics/distill_kd.json"]["data"] for name in names)
    runs = runs_by_experiment(server.uri)
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
