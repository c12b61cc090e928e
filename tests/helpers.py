"""Helpers the test modules share: editing params, running commands, waiting for a server."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]


def third_party_imports() -> set[str]:
    """The top-level names of every third-party package the project's source imports."""
    import ast

    found = set()
    for path in (ROOT / "src").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"kdistill", "__future__"}


def site_without(names: tuple[str, ...], root: Path) -> Path:
    """This environment's site-packages as links, less ``names`` (packages, modules and their metadata)."""
    import site

    root.mkdir(parents=True)
    for directory in map(Path, site.getsitepackages()):
        if not directory.is_dir():  # some Pythons list site directories that do not exist
            continue
        for entry in directory.iterdir():
            top = entry.name.split("-")[0].split(".")[0].lower()
            if top not in names and not (root / entry.name).exists():
                (root / entry.name).symlink_to(entry)
    return root


def run_without(names: tuple[str, ...], args: list[str], cwd: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """``python -S <args>`` (no site-packages of its own) on a copy of this environment less ``names``."""
    site = site_without(names, tmp_path / f"site-without-{'-'.join(names)}")
    return subprocess.run([sys.executable, "-S", *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
                               "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}:{site}",
                               "MLFLOW_DISABLE_TELEMETRY": "true", "DVC_NO_ANALYTICS": "true"})


def code_dep_files(deps: list[str]) -> set[str]:
    """A stage's deps from dvc.yaml with each directory dep replaced by the modules DVC hashes in it."""
    files = set()
    for dep in deps:
        if (ROOT / dep).is_dir():
            files |= {p.relative_to(ROOT).as_posix() for p in (ROOT / dep).rglob("*.py") if "__pycache__" not in p.parts}
        else:
            files.add(dep)
    return files


def committed_params_text() -> str:
    """params.yaml as committed, comments included (the working copy outside git): `make quick` and
    `dvc exp run -S` rewrite the working copy."""
    shown = subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=ROOT, capture_output=True, text=True,
                           check=False)
    return shown.stdout if shown.returncode == 0 else (ROOT / "params.yaml").read_text()


def committed_params() -> dict:
    return yaml.safe_load(committed_params_text())


def shipped_params() -> dict:
    """The params a fresh clone of this code runs with, whatever experiments did to the checkout.

    `dvc exp run -S` and the README's offline `make pipeline DATA=…` rewrite params.yaml: the tests
    start from the committed shared sections and from every registered training's declared
    defaults instead (a method being added, not committed yet, included).
    """
    from kdistill.control.registry import TRAININGS

    params = committed_params()
    for name, training in TRAININGS.items():
        if training.params is not None:
            params[name] = training.params().model_dump()
    return params


def copy_project(destination: Path) -> Path:
    """The project's code and configuration, without its results, with ``shipped_params()``."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if name in ("dvc.lock", "params.yaml") or name.startswith(("metrics/", "models/")) \
                or not (ROOT / name).is_file():
            continue  # start from nothing: the project's own results must not leak in
        (destination / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, destination / name)
    destination.mkdir(parents=True, exist_ok=True)
    (destination / "params.yaml").write_text(yaml.safe_dump(shipped_params(), sort_keys=False))
    return destination


# What a run of the pipeline changes in the project: kept aside and put back by ``state_kept``.
PIPELINE_STATE = ("params.yaml", "dvc.yaml", "dvc.lock", "data", "metrics", "models", "stages")


@contextmanager
def state_kept(project: Path) -> Iterator[None]:
    """The pipeline's params, lock, outputs and stages put back as they were, whatever the block did.

    A copy, not a second `dvc repro`: the metrics files are not in DVC's cache (git tracks them), so
    DVC would retrain every stage whose params the block changed to bring them back.
    """
    saved = project.parent / f"{project.name}.saved"
    shutil.rmtree(saved, ignore_errors=True)
    for name in PIPELINE_STATE:
        source = project / name
        if source.is_dir():
            shutil.copytree(source, saved / name)
        elif source.is_file():
            saved.mkdir(exist_ok=True)
            shutil.copy2(source, saved / name)
    try:
        yield
    finally:
        for name in PIPELINE_STATE:
            target = project / name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
            if (saved / name).is_dir():
                shutil.copytree(saved / name, target)
            elif (saved / name).is_file():
                shutil.copy2(saved / name, target)
        shutil.rmtree(saved)


def stage_record(project: Path, stage: str) -> dict:
    """A training stage's DVC metrics and its per-seed record (metrics/runs/<stage>.json), merged."""
    import json

    metrics = json.loads((project / "metrics" / f"{stage}.json").read_text())
    return {**metrics, **json.loads((project / "metrics" / "runs" / f"{stage}.json").read_text())}


def with_value(raw: dict, key: str, value: Any) -> dict:
    """``raw`` (a params mapping) with the dotted ``key`` set to ``value``, in place."""
    *sections, leaf = key.split(".")
    node = raw
    for section in sections:
        node = node[section]
    node[leaf] = value
    return raw


def set_param(project: Path, key: str, value: Any) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    (project / "params.yaml").write_text(yaml.safe_dump(with_value(params, key, value), sort_keys=False))


def sh(*args: str, cwd: Path, env: dict[str, str], timeout: float = 900) -> str:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_http(url: str, process: subprocess.Popen, timeout: float = 120) -> None:
    """Until ``url`` answers 200; fails if ``process`` (the server) exits or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        assert process.poll() is None, f"the server behind {url} exited with {process.returncode}"
        assert time.monotonic() < deadline, f"{url} did not answer within {timeout} s"
        time.sleep(0.3)


def repro(project: Path, env: dict[str, str]) -> set[str]:
    """The stages `dvc repro` ran, or restored from DVC's run-cache (they changed either way)."""
    output = sh(str(BIN / "dvc"), "repro", cwd=project, env=env)
    return {a or b for a, b in re.findall(r"Running stage '(\w+)'|Stage '(\w+)' is cached", output)}


def commit_all(project: Path, env: dict[str, str], message: str) -> None:
    sh("git", "add", "-A", cwd=project, env=env)
    sh("git", "commit", "-q", "--allow-empty", "-m", message, cwd=project, env=env)
