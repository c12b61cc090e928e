"""Stages handed to a preloaded process: they must behave exactly as their own processes would."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from helpers import ROOT
from kdistill import preload
from stageprocess import STAGE, make_project, stage_command, stage_env

pytestmark = pytest.mark.server

# `preloaded` is read before anything is imported: true only in a fork of the preload server.
SCRIPT = """\
import sys
preloaded, at_start = "torch" in sys.modules, set(sys.modules)
from kdistill.preload import hand_off

if __name__ == "__main__":
    hand_off(__file__)

import json, os, signal, time
import kdistill
from kdistill import preload

if __name__ == "__main__":
    action = sys.argv[1]
    if action == "report":
        from mlflow.utils import requirements_utils

        print(json.dumps({"preloaded": preloaded, "cwd": os.getcwd(), "argv": sys.argv, "pid": os.getpid(),
                          "color": os.environ.get("COLOR"), "switch": os.environ.get("KDISTILL_PRELOAD"),
                          "stdin": sys.stdin.readline().strip(), "kdistill": kdistill.__file__,
                          "not preloaded": [name for name in preload.PRELOADED if name not in at_start],
                          "package map": requirements_utils._MODULES_TO_PACKAGES is not None}), flush=True)
        sys.exit(int(sys.argv[2]))
    if action == "raise":
        raise ValueError("boom")
    if action == "terminate":
        os.kill(os.getpid(), signal.SIGTERM)
    with open(sys.argv[2], "w") as pid_file:
        pid_file.write(str(os.getpid()))
    try:
        time.sleep(60)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(130)
"""


@pytest.fixture(scope="module")
def runtime() -> Path:
    """A runtime directory of this module's own (short: socket paths are limited to 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="kd"))
    yield path
    for proc in Path("/proc").iterdir():  # the servers started here, still waiting for work
        try:
            if str(path).encode() in (proc / "cmdline").read_bytes():
                os.kill(int(proc.name), signal.SIGTERM)
        except (OSError, ValueError):
            pass
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    return _checkout(tmp_path_factory.mktemp("checkout"))


def _checkout(path: Path) -> Path:
    shutil.copytree(ROOT / "src" / "kdistill", path / "src" / "kdistill", ignore=shutil.ignore_patterns("__pycache__"))
    (path / "stage.py").write_text(SCRIPT)
    return path


def _env(runtime: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != preload.SWITCH}
    return {**env, "XDG_RUNTIME_DIR": str(runtime), "PYTHONPATH": "src", **extra}


def _run(checkout: Path, runtime: Path, *args: str, stdin: str = "", **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "stage.py", *args], cwd=checkout, env=_env(runtime, **extra), input=stdin,
                          capture_output=True, text=True, timeout=180)


def _sockets(runtime: Path) -> list[Path]:
    return sorted(runtime.glob("kdistill-*/*.sock"))


def test_a_script_runs_in_a_fork_of_the_preloaded_process_as_if_it_were_its_own(checkout, runtime):
    before = set(_sockets(runtime))
    first = _run(checkout, runtime, "report", "3", stdin="line from stdin\n", COLOR="blue")
    assert first.returncode == 3, first.stderr
    report = json.loads(first.stdout)
    assert report["preloaded"], "the script ran in its own process, not in a preloaded fork"
    assert report["not preloaded"] == [] and report["package map"], "the worker would import or scan again"
    assert report["cwd"] == str(checkout) and report["argv"] == ["stage.py", "report", "3"]
    assert report["color"] == "blue" and report["stdin"] == "line from stdin"
    assert report["switch"] == "0", "what the worker starts must run in its own process"
    assert report["kdistill"] == str(checkout / "src" / "kdistill" / "__init__.py")
    (socket_file,) = set(_sockets(runtime)) - before
    identity = socket_file.stat().st_ino

    # The next stage, with the variables DVC sets per stage: the same server, a new worker.
    second = _run(checkout, runtime, "report", "0", COLOR="blue", DVC_STAGE="distill_kd", DVC_ROOT=str(checkout))
    assert second.returncode == 0 and json.loads(second.stdout)["preloaded"]
    assert json.loads(second.stdout)["pid"] != report["pid"]
    assert [s.stat().st_ino for s in set(_sockets(runtime)) - before] == [identity], "the next stage started a server"


def test_each_stage_imports_the_project_from_its_own_checkout(tmp_path, runtime):
    a, b = _checkout(tmp_path / "a"), _checkout(tmp_path / "b")
    before = set(_sockets(runtime))
    for copy in (a, b):
        result = _run(copy, runtime, "report", "0", COLOR="red")
        report = json.loads(result.stdout)
        assert report["preloaded"] and report["kdistill"] == str(copy / "src" / "kdistill" / "__init__.py")
    assert len(set(_sockets(runtime)) - before) == 1, "the two checkouts should share one server"


def test_exit_status_errors_and_signals_are_the_workers(checkout, runtime):
    failed = _run(checkout, runtime, "raise")
    assert failed.returncode == 1
    assert "ValueError: boom" in failed.stderr and 'stage.py", line' in failed.stderr
    assert "preload.py" not in failed.stderr, "the traceback starts at the script, as the interpreter's would"
    terminated = _run(checkout, runtime, "terminate")
    assert terminated.returncode == -signal.SIGTERM


def _start_sleeping(checkout: Path, runtime: Path, tmp_path: Path) -> tuple[subprocess.Popen, int]:
    pid_file = tmp_path / "worker.pid"
    client = subprocess.Popen([sys.executable, "stage.py", "sleep", str(pid_file)], cwd=checkout, env=_env(runtime),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (pid_file.is_file() and pid_file.read_text()):
        assert time.monotonic() < deadline and client.poll() is None, client.stderr.read() if client.stderr else ""
        time.sleep(0.05)
    worker = int(pid_file.read_text())
    assert worker != client.pid, "the script ran in its own process"
    return client, worker


def test_killing_the_stage_process_kills_its_worker(checkout, runtime, tmp_path):
    client, worker = _start_sleeping(checkout, runtime, tmp_path)
    client.kill()
    client.wait()
    deadline = time.monotonic() + 10
    while _alive(worker):
        assert time.monotonic() < deadline, "the worker outlived its stage process"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


def test_ctrl_c_reaches_the_worker(checkout, runtime, tmp_path):
    client, _ = _start_sleeping(checkout, runtime, tmp_path)
    client.send_signal(signal.SIGINT)
    out, _ = client.communicate(timeout=30)
    assert client.returncode == 130 and out.strip() == "interrupted"


def test_switched_off_or_without_a_private_directory_a_stage_runs_in_its_own_process(checkout, runtime, tmp_path):
    off = _run(checkout, runtime, "report", "0", KDISTILL_PRELOAD="0")
    assert off.returncode == 0 and not json.loads(off.stdout)["preloaded"] and off.stderr == ""

    shared = tmp_path / "shared"
    (shared / f"kdistill-{os.getuid()}").mkdir(parents=True)
    (shared / f"kdistill-{os.getuid()}").chmod(0o777)
    unsafe = _run(checkout, shared, "report", "0")
    assert unsafe.returncode == 0 and not json.loads(unsafe.stdout)["preloaded"]
    assert "running stage.py in its own process" in unsafe.stderr and "not a directory private to this user" in unsafe.stderr


def test_a_stage_trains_the_same_model_preloaded_or_not(tmp_path, runtime, cifar_archive):
    archive, digest = cifar_archive
    results = []
    for name, switch in (("own process", "0"), ("cold server", "1"), ("warm server", "1")):
        project = make_project(tmp_path / name.replace(" ", "-"), archive, digest, epochs=1)
        env = {**stage_env(), "XDG_RUNTIME_DIR": str(runtime), preload.SWITCH: switch}
        run = subprocess.run(stage_command(STAGE), cwd=project, env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        if name == "warm server":  # forked: nothing left to import (on its own, about 3.5 s at the least)
            assert float(re.search(r"start-up ([0-9.]+)", run.stdout)[1]) < 1.5, run.stdout
        checkpoint = torch.load(project / "models" / f"{STAGE}.pt", weights_only=True)
        results.append((checkpoint["state_dicts"][42], json.loads((project / "metrics" / f"{STAGE}.json").read_text())))
    (weights, metrics), *forked = results
    for other_weights, other_metrics in forked:
        assert other_metrics == metrics and other_weights.keys() == weights.keys()
        assert all(torch.equal(other_weights[k], weights[k]) for k in weights)


def test_a_changed_preloaded_file_is_noticed(tmp_path):
    module = tmp_path / "preloaded_example.py"
    module.write_text("VALUE = 1\n")
    sys.path.insert(0, str(tmp_path))
    try:
        __import__("preloaded_example")
        loaded = preload._loaded_files()
        assert str(module) in loaded and not preload._changed(loaded)
        module.write_text("VALUE = 22\n")
        assert preload._changed(loaded)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("preloaded_example", None)


def test_the_server_key_ignores_only_what_dvc_and_the_shell_set_per_stage(monkeypatch):
    key = preload._key()
    for name, value in (("DVC_STAGE", "distill_kd"), ("DVC_EXP_NAME", "exp-1"), ("PWD", "/elsewhere"), ("SHLVL", "3")):
        monkeypatch.setenv(name, value)
        assert preload._key() == key, name
    monkeypatch.setenv("OMP_NUM_THREADS", "7")  # read when torch is imported: another server
    assert preload._key() != key


def test_waiting_for_a_starting_server_gives_up_at_its_deadline(tmp_path):
    held, waiting = (os.open(tmp_path / "lock", os.O_RDWR | os.O_CREAT) for _ in range(2))
    try:
        assert preload._lock(held, None)
        started = time.monotonic()
        assert not preload._lock(waiting, None) and not preload._lock(waiting, started + 0.2)
        assert 0.2 <= time.monotonic() - started < 5
        os.close(held)  # the server listens (or died): the waiting stage gets the lock
        held = -1
        assert preload._lock(waiting, time.monotonic() + 5)
    finally:
        for fd in (held, waiting):
            if fd >= 0:
                os.close(fd)
