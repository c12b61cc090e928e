from __future__ import annotations

import fcntl
import functools
import http.server
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fakedata import make_cifar10_archive
from helpers import BIN, copy_project, repro, set_param, sh, state_kept
from kdistill.entry import configure_process

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "true")
ROOT = Path(__file__).resolve().parents[1]
configure_process()  # the same process settings as every stage (kdistill.entry.main)


# Tiers: `make test-fast` deselects these (see pyproject.toml's markers).
FIXTURE_MARKERS = {"file_server": "server", "pipeline": "e2e", "restored": "e2e", "toy_method_added": "e2e"}


# `make test` hands whole files to its three workers (xdist --dist loadfile). By default xdist
# starts with the files that have the most tests, so a one-test file that runs whole pipelines
# would start last and keep a worker busy after the others had finished. Instead, the files that
# run stage processes go first, longest first. test_experiments.py builds the session's first run
# (``first_run``), which the other end-to-end files copy: they come after files that need none, so
# that no worker waits for it. The rest follow in pytest-randomly's order, which also orders
# each file's tests.
LONGEST_FIRST = ("test_team.py", "test_experiments.py", "test_benchmark_recipe.py", "test_ray_cluster.py",
                 "test_ray_local.py", "test_faults.py", "test_tracking_faults.py",
                 "test_benchmark.py", "test_logged_models.py", "test_sweep.py", "test_add_method.py",
                 "test_pipeline.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for fixture, marker in FIXTURE_MARKERS.items():
            if fixture in item.fixturenames:
                item.add_marker(getattr(pytest.mark, marker))
    # A stable sort on top of pytest-randomly's shuffle (it reorders before this hook runs).
    rank = {name: index for index, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FIRST)))


@dataclass
class FileServer:
    """A loopback HTTP server over a directory, counting the requests it answers."""

    directory: Path
    port: int = 0
    requests: list[str] = field(default_factory=list)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[FileServer]:
    served = tmp_path / "served"
    served.mkdir()
    server_state = FileServer(served)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            server_state.requests.append(self.path)
            super().do_GET()

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(served)))
    server_state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield server_state
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="session")
def cifar_archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A tiny archive in cifar-10-python.tar.gz's exact layout, and its md5."""
    path = tmp_path_factory.mktemp("cifar") / "cifar-10-python.tar.gz"
    return path, make_cifar10_archive(path)


@pytest.fixture(scope="session")
def slow_archive(tmp_path_factory) -> tuple[Path, str]:
    """Enough images that a teacher epoch takes a moment, so the kill lands mid-training."""
    path = tmp_path_factory.mktemp("slow") / "cifar-10-python.tar.gz"
    return path, make_cifar10_archive(path, per_batch=300, test=100, seed=5)


PIPELINE_SEEDS = [42, 7]


@dataclass(frozen=True)
class FirstRun:
    ran: set[str]  # the stages the first `dvc repro` ran
    commit: str  # the git commit it ran at
    outputs: Path  # a copy of its metrics/ and models/
    finished_ms: float  # MLflow runs that started before this are the first run's


def _git_env() -> dict[str, str]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


@contextmanager
def serving(directory: Path) -> Iterator[str]:
    """A loopback HTTP server of ``directory`` while the block runs; yields its base URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _first_run(base: Path, archive: Path, digest: str) -> FirstRun:
    """`dvc repro` once, 1 epoch, two seeds, on data fetched over loopback HTTP, in ``base/project``."""
    env = _git_env()
    project = copy_project(base / "project")
    with serving(archive.parent) as url:
        set_param(project, "data.url", f"{url}/{archive.name}")
        set_param(project, "data.md5", digest)
        # All three keys of the source: the checkout's params.yaml may point elsewhere (the README's
        # offline `make pipeline DATA=… DATA_FORMAT=imagefolder` writes them).
        set_param(project, "data.format", "cifar10")
        set_param(project, "train.epochs", 1)
        set_param(project, "seeds", PIPELINE_SEEDS)
        sh("git", "init", "-q", cwd=project, env=env)
        sh("git", "config", "user.name", "test", cwd=project, env=env)
        sh("git", "config", "user.email", "test@example.com", cwd=project, env=env)
        sh("git", "add", "-A", cwd=project, env=env)
        sh("git", "commit", "-qm", "tiny", cwd=project, env=env)
        ran = repro(project, env)
    # What the first run left, kept aside: other tests change the project, in any order.
    commit = sh("git", "rev-parse", "HEAD", cwd=project, env=env).strip()
    first = FirstRun(ran, commit, base / "first-run", time.time() * 1000)
    for name in ("metrics", "models"):
        shutil.copytree(project / name, first.outputs / name)
    return first


@pytest.fixture(scope="session")
def first_run(tmp_path_factory, cifar_archive) -> tuple[Path, FirstRun]:
    """One first run for the whole session, whichever worker asks first: every module copies it.

    Its MLflow store keeps its artifacts where the first run put them (under this project), so the
    copies' new runs also land there, each under its own run id.
    """
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the directory all workers of this session share
    record = shared / "first-run.json"
    with open(shared / "first-run.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not record.is_file():
            first = _first_run(shared / "first", *cifar_archive)
            record.write_text(json.dumps({"ran": sorted(first.ran), "commit": first.commit,
                                          "outputs": str(first.outputs), "finished_ms": first.finished_ms}))
    saved = json.loads(record.read_text())
    return shared / "first" / "project", FirstRun(set(saved["ran"]), saved["commit"], Path(saved["outputs"]),
                                                  saved["finished_ms"])


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, first_run):
    """A project copy that has run `dvc repro` once (``first_run``), one per test module.

    `make test` runs the modules in parallel, each with its own copy.
    """
    template, first = first_run
    project = tmp_path_factory.mktemp("project") / "project"
    shutil.copytree(template, project, symlinks=True)
    yield project, _git_env(), first


@pytest.fixture
def restored(pipeline):
    """The pipeline, put back as it was after the test (params and outputs), whatever the test changed:
    tests that change params do not depend on each other or on their order."""
    project, _, _ = pipeline
    with state_kept(project):
        yield pipeline
