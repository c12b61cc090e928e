"""`kdistill sweep` on a real Ray cluster on loopback (a head and two worker nodes, one CPU each), with a bare
git remote, a directory DVC remote and an MLflow server; and on a local Ray with no remote at all."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import PIPELINE_SEEDS as SEEDS
from helpers import BIN, free_port, sh
from test_team import TrackingServer, patched_env, set_up_team

pytestmark = [pytest.mark.e2e, pytest.mark.server]
DVC, KDISTILL, RAY = str(BIN / "dvc"), str(BIN / "kdistill"), str(BIN / "ray")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "RAY_ADDRESS")}
    env.update(PATH=f"{BIN}{os.pathsep}{env['PATH']}", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.com", RAY_USAGE_STATS_ENABLED="0",
               # One loopback cluster of this test's own: no token between its processes.
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
    """`ray start`: a head without CPUs (it schedules, it runs nothing) and worker nodes of one CPU each."""

    def __init__(self, env: dict[str, str], base: Path) -> None:
        self.env, self.port, self.base = env, free_port(), base
        self.address = f"127.0.0.1:{self.port}"
        self.workers: dict[str, subprocess.Popen] = {}
        sh(RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={self.port}", "--num-cpus=0",
           "--include-dashboard=false",
           f"--temp-dir={base / 'ray'}", cwd=base, env=env)

    def add_worker(self, name: str) -> None:
        self.workers[name] = subprocess.Popen(
            [RAY, "start", f"--address={self.address}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
             f"--resources={json.dumps({name: 1})}", "--block"],
            env=self.env, stdout=(self.base / f"{name}.log").open("a"), stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        for process in self.workers.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        subprocess.run([RAY, "stop", "--force"], env=self.env, capture_output=True, check=False)


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
    cluster = Cluster(env, base)
    cluster.add_worker("node_a")
    cluster.add_worker("node_b")
    yield project, env_tracked, cluster, server, origin
    cluster.stop()
    server.stop()


def _fresh_clone(origin: Path, path: Path, env: dict[str, str], names: list[str]) -> dict[str, dict]:
    sh("git", "clone", "-q", str(origin), str(path), cwd=path.parent, env=env)
    for name in names:
        sh(DVC, "exp", "pull", "origin", name, cwd=path, env=env)
    return _experiments(path, env)


def test_a_sweep_on_the_cluster_lands_in_git_dvc_and_mlflow(team, tmp_path):
    project, env, cluster, server, origin = team
    result = subprocess.run([KDISTILL, "sweep", "-n", "grid", "-S", "distill_kd.T=1,3,4", "--address",
                             cluster.address], cwd=project, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    names = ["grid-1", "grid-2", "grid-3"]
    experiments = _fresh_clone(origin, tmp_path / "reviewer", env, names)
    t_of = {name: experiments[name]["params"]["params.yaml"]["data"]["distill_kd"]["T"] for name in names}
    assert t_of == {"grid-1": 1, "grid-2": 3, "grid-3": 4}  # 2, the base value, would train nothing
    assert all("test_accuracy" in experiments[name]["metrics"]["metrics/distill_kd.json"]["data"] for name in names)
    runs = _kd_runs(server.uri)
    assert all([run.info.status for run in runs[name]] == ["FINISHED"] * len(SEEDS) for name in names), runs
    assert all(run.data.tags["kdistill.sweep"] for name in names for run in runs[name])
    leaked = [str(p) for p in project.rglob("*") if p.is_file() and not any(part in str(p) for part in (
              ".dvc/cache", "/tests/")) and WRITER[1].encode() in p.read_bytes()]
    assert not leaked and WRITER[1] not in result.stdout + result.stderr
