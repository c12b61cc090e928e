"""Stage processes that start warm: each stage runs in a fork of a process that has already imported
torch and MLflow, instead of importing them again (3.5-5 s per stage on 2 CPU cores, more than a
student trains on 10,000 images).

DVC runs every stage as its own process (``python stages/<stage>.py``). The script first calls
``hand_off``: it connects to a preload server over a Unix socket, passes its standard streams, working
directory, environment and arguments, and exits with the status of the worker the server forks for
it. The worker becomes that process (streams, directory, environment, arguments) and runs the script
from its start. What keeps this exactly equivalent to a fresh process:

- Only third-party packages are preloaded (``PRELOADED``); the server runs this file as a script and
  checks that kdistill was never imported: every worker imports the project's code afresh from the
  stage's own checkout, which is the code DVC hashed as the stage's deps.
- One server per interpreter, environment and version of this file: variables read when a package
  is imported (``OMP_NUM_THREADS``, ``MLFLOW_*``, ...) are the same as the stage's. The ones DVC sets
  per stage and per experiment (``DVC_*``) and the shell's own are left out of the key (none of the
  preloaded packages reads them) but passed to the worker like every other.
- Before each fork the server checks that no file it imported changed since; a reinstalled package
  retires it and the stage starts a fresh one.
- The server never initializes CUDA (a forked CUDA context is unusable): the worker does, as a
  fresh process would.
- Killing the stage process kills its worker; Ctrl-C, SIGTERM and SIGHUP are forwarded to it.

A server exits after ``IDLE_SECONDS`` without work. Linux only (fork, pidfd, passing file
descriptors); elsewhere, or with ``KDISTILL_PRELOAD=0``, each stage imports everything itself, as
the worker does too (its environment has ``KDISTILL_PRELOAD=0``).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import select
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import traceback
from contextlib import suppress
from pathlib import Path

SWITCH = "KDISTILL_PRELOAD"
# What the stages import beyond the standard library, and what torch and MLflow import lazily on
# first use: torch._dynamo (the first optimizer), MLflow's SQL store, and what logging a model
# needs (torch.export's tracer with inductor's IR and sympy, MLflow's pyfunc serving checks).
PRELOADED = ("torch", "torch._dynamo", "torch.export", "torch.export._trace", "torch._inductor.ir", "mlflow",
             "mlflow.pytorch", "mlflow.pyfunc.scoring_server", "mlflow.models.display_utils",
             "mlflow.store.tracking.sqlalchemy_store", "pandas", "scipy.special", "matplotlib.pyplot", "PIL.Image",
             "pydantic", "yaml", "tqdm")
# Fork only from a single-threaded process (the server checks). Two packages start threads when
# imported: the OpenBLAS bundled with numpy and scipy (a pool of workers), and pyarrow's jemalloc
# (imported by pandas and MLflow; a purging thread). Forked from a server with that thread, the
# same training ran 20% slower here. Neither is used for the stages' arithmetic (torch's own).
SINGLE_THREADED = {"OPENBLAS_NUM_THREADS": "1", "JE_ARROW_MALLOC_CONF": "background_thread:false"}
IDLE_SECONDS = 60.0
START_SECONDS = 120.0  # the longest a stage waits for a server to preload before it imports for itself
# Set per stage or per experiment by DVC, or by the shell that runs the stage's command.
UNKEYED = ("PWD", "OLDPWD", "SHLVL", "_")
_SERVER_PID = -1
PR_SET_PDEATHSIG = 1
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class UnavailableError(Exception):
    """No preload server can be used: the stage runs in its own process."""


# --------------------------------------------------------------------------------------------
# The stage's side


def hand_off(script: str, *, wait: bool = True) -> None:
    """Run ``script`` in a preloaded worker and exit with its status; return to run it here instead.

    Returns when preloading is off or impossible (saying why, once, on stderr), inside the worker
    itself, and when ``wait`` is false and no server is ready yet: then one is started for the next
    stages (check_params, the first stage of any run, costs less than waiting would).
    """
    if os.environ.get(SWITCH, "1") == "0" or sys.platform != "linux":
        return
    try:
        connection = _connect(wait)
    except UnavailableError as reason:
        print(f"kdistill: running {Path(script).name} in its own process: {reason}", file=sys.stderr, flush=True)
        return
    if connection is not None:
        _exit_like(_run_in_worker(connection, script))


def _key() -> str:
    env = sorted((k, v) for k, v in os.environ.items() if not k.startswith("DVC_") and k not in UNKEYED)
    code = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    return hashlib.sha256(json.dumps([sys.executable, sys.version, code, env]).encode()).hexdigest()[:24]


def runtime_dir() -> Path:
    """A directory only this user can use: sockets in it accept no one else's stages."""
    path = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()) / f"kdistill-{os.getuid()}"
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        info = path.lstat()
    except OSError as error:
        raise UnavailableError(f"cannot create {path}: {error}") from None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise UnavailableError(f"{path} is not a directory private to this user")
    return path


def socket_path() -> Path:
    return runtime_dir() / f"{_key()}.sock"


def _try_connect(path: Path) -> socket.socket | None:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.connect(str(path))
    except OSError:
        client.close()
        return None
    return client


def _connect(wait: bool) -> socket.socket | None:
    """A connection to a ready server; one is started when none runs (the first stage waits for it)."""
    try:
        path = socket_path()
        for _ in range(3):  # a server that is retiring (idle, or its files changed) refuses: start another
            connection = _try_connect(path) or _start_server(path, wait)
            if connection is None:
                return None
            if _send_ready(connection):
                return connection
            connection.close()
    except OSError as error:
        raise UnavailableError(str(error)) from None
    raise UnavailableError("the preload server kept refusing")


def _start_server(path: Path, wait: bool) -> socket.socket | None:
    """Start a server unless one is starting; with ``wait``, a connection to it once it is ready.

    The lock file is held by whoever starts a server, then by the server itself until it listens:
    a stage that comes meanwhile waits for that server instead of starting another.
    """
    lock_path, log = path.with_suffix(".lock"), path.with_suffix(".log")
    lock = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if not _lock(lock, time.monotonic() + START_SECONDS if wait else None):
            if wait:
                raise UnavailableError(f"another stage's preload server was not ready within {START_SECONDS:.0f} s")
            return None  # one is starting; not waiting for it
        connection = _try_connect(path)  # one became ready while this stage waited for the lock
        if connection is not None:
            return connection
        server = _spawn(path, lock)
    finally:
        os.close(lock)  # the server's inherited descriptor keeps the lock
    if not wait:
        return None
    lock = os.open(lock_path, os.O_RDWR)
    try:
        ready = _lock(lock, time.monotonic() + START_SECONDS)  # granted once the server listens, or has died
        connection = _try_connect(path) if ready else None
    finally:
        os.close(lock)
    if connection is None:
        if not ready:
            server.kill()
            raise UnavailableError(f"the preload server was not ready within {START_SECONDS:.0f} s (its log: {log})")
        raise UnavailableError(f"the preload server exited with status {server.wait()} (its log: {log})")
    return connection


def _lock(fd: int, deadline: float | None) -> bool:
    """Take the exclusive lock on ``fd``; False if that is not possible by ``deadline`` (None: at once)."""
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if deadline is None or time.monotonic() > deadline:
                return False
            time.sleep(0.02)


def _spawn(path: Path, lock: int) -> subprocess.Popen:
    """The server, detached from the stage's session, in the stage's environment; it inherits the lock.

    Run as a file with ``-P``: neither kdistill nor this file's folder is on its import path.
    """
    path.unlink(missing_ok=True)  # the socket of a server that died
    env = {**SINGLE_THREADED, **os.environ}
    with open(path.with_suffix(".log"), "w") as log:
        return subprocess.Popen([sys.executable, "-P", __file__, str(path), str(lock)], pass_fds=(lock,), env=env,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, cwd="/")


def _send_ready(connection: socket.socket) -> bool:
    """Whether the server takes the stage (it answers ``stale`` when its files changed, then exits)."""
    try:
        connection.sendall(b"hello\n")
        return _read_line(connection) == b"ready"
    except OSError:  # a server that was just leaving
        return False


def _run_in_worker(connection: socket.socket, script: str) -> int:
    """Send the stage, forward its signals, and return the worker's wait status."""
    import kdistill

    request = {"script": os.path.abspath(script), "argv": sys.argv, "cwd": os.getcwd(), "env": dict(os.environ),
               "path": [os.path.abspath(p) for p in sys.path], "umask": _umask(), "since": kdistill.LOADING_SINCE}
    socket.send_fds(connection, [json.dumps(request).encode() + b"\n"], [0, 1, 2])

    def forward(signum: int, frame: object) -> None:
        with suppress(OSError):
            connection.sendall(f"{signum}\n".encode())

    for number in FORWARDED_SIGNALS:
        signal.signal(number, forward)
    reply = _read_line(connection)
    if not reply:
        print("kdistill: the preloaded worker's supervisor vanished", file=sys.stderr)
        return 1 << 8
    return int(reply)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _read_line(connection: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        try:
            chunk = connection.recv(4096)
        except InterruptedError:
            continue
        if not chunk:
            return b""
        data += chunk
    return data.strip()


def _exit_like(status: int) -> None:
    """Exit as the worker did: with its code, or killed by the same signal."""
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    sys.exit(code)


# --------------------------------------------------------------------------------------------
# The server's side


def serve(path: Path, lock: int) -> None:
    """Preload, listen, fork a supervised worker per stage; exit after IDLE_SECONDS without work."""
    import gc

    for name in PRELOADED:
        __import__(name)
    _warm_caches()
    import torch

    if torch.cuda.is_initialized():
        sys.exit("CUDA was initialized while preloading: a forked worker could not use it")
    if (threads := len(os.listdir("/proc/self/task"))) > 1:
        sys.exit(f"{threads - 1} other thread(s) run after preloading: a fork would copy their locks, not them")
    if any(name == "kdistill" or name.startswith("kdistill.") for name in sys.modules):
        sys.exit("kdistill was imported while preloading: workers must import it from their own checkout")
    loaded = _loaded_files()
    gc.freeze()  # the preloaded objects are shared with every worker: no collection walks (or copies) them

    global _SERVER_PID
    _SERVER_PID = os.getpid()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    partial = path.with_name(f"{path.name}.{os.getpid()}")
    listener.bind(str(partial))
    listener.listen(16)
    os.replace(partial, path)
    identity = path.stat().st_ino
    os.close(lock)  # ready: the stages waiting on the lock connect now
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))  # retires below, as when idle
    listener.settimeout(1.0)
    try:
        refused = _serve(listener, loaded)
    finally:
        _retire(path, identity, listener)
    if refused is not None:  # after retiring: the stage's next try starts a fresh server
        refused.sendall(b"stale\n")


def _warm_caches() -> None:
    """Fill the caches that every stage would otherwise fill again in its worker."""
    # Logging a model, MLflow checks its pip requirements against the environment, mapping every
    # installed distribution's files to modules first: 0.4 s here, once per process, with no
    # switch. The map changes only when packages are installed; a reinstalled torch (the models'
    # one requirement) changes preloaded files, which retires the server. A private function of
    # the pinned MLflow: should it go, the server exits and stages import for themselves, and
    # tests/test_preload.py fails on the missing map.
    from mlflow.utils.requirements_utils import _init_modules_to_packages_map

    _init_modules_to_packages_map()


def _serve(listener: socket.socket, loaded: dict[str, tuple[int, int]]) -> socket.socket | None:
    """Serve until idle; return a stage's connection that came after a preloaded file changed."""
    supervisors: set[int] = set()
    idle_since = time.monotonic()
    while supervisors or time.monotonic() - idle_since < IDLE_SECONDS:
        for pid in [pid for pid in supervisors if os.waitpid(pid, os.WNOHANG)[0]]:
            supervisors.discard(pid)
            idle_since = time.monotonic()
        try:
            connection, _ = listener.accept()
        except TimeoutError:
            continue
        if not _greeted(connection):
            connection.close()
            continue
        if _changed(loaded):
            return connection
        connection.settimeout(None)
        connection.sendall(b"ready\n")
        pid = os.fork()
        if pid == 0:
            listener.close()
            _supervise(connection)  # never returns: the supervisor exits there, the worker raises SystemExit
        connection.close()
        supervisors.add(pid)
    return None


def _greeted(connection: socket.socket) -> bool:
    connection.settimeout(10.0)
    try:
        return _read_line(connection) == b"hello"
    except OSError:
        return False


def _retire(path: Path, identity: int, listener: socket.socket) -> None:
    """Take no more stages: the socket goes (unless a newer server's replaced it), and the log of a clean run."""
    if os.getpid() != _SERVER_PID:
        return  # a worker leaving through the server's frames
    with suppress(OSError):
        if path.stat().st_ino == identity:
            path.unlink()
    listener.close()
    path.with_suffix(".log").unlink(missing_ok=True)


def _loaded_files() -> dict[str, tuple[int, int]]:
    files = {}
    for module in list(sys.modules.values()):
        name = getattr(module, "__file__", None)
        if name and os.path.isfile(name):
            info = os.stat(name)
            files[name] = (info.st_mtime_ns, info.st_size)
    return files


def _changed(loaded: dict[str, tuple[int, int]]) -> bool:
    for name, before in loaded.items():
        try:
            info = os.stat(name)
        except OSError:
            return True
        if (info.st_mtime_ns, info.st_size) != before:
            return True
    return False


def _supervise(connection: socket.socket) -> None:
    """In a fork: fork the worker, forward signals to it, kill it if the stage process dies, report its status."""
    message, fds, _, _ = socket.recv_fds(connection, 1 << 20, 3)
    while not message.endswith(b"\n"):
        message += connection.recv(1 << 20)
    request = {**json.loads(message), "supervisor": os.getpid()}
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    worker = os.fork()
    if worker == 0:
        connection.close()
        _become(request, fds)
        # Unwinds to the interpreter's own exit: atexit handlers run, streams are flushed.
        raise SystemExit(_run(request))
    for fd in fds:
        os.close(fd)
    watched = os.pidfd_open(worker)
    pending = b""
    while True:
        ready, _, _ = select.select([connection, watched], [], [])
        if watched in ready:
            _, status = os.waitpid(worker, 0)
            try:
                connection.sendall(f"{status}\n".encode())
            finally:
                os._exit(0)
        data = connection.recv(64)
        if not data:  # the stage process is gone (killed): so goes its worker
            os.kill(worker, signal.SIGKILL)
            os.waitpid(worker, 0)
            os._exit(0)
        pending += data
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            os.kill(worker, int(line))


def _become(request: dict, fds: list[int]) -> None:
    """Take over the stage process's streams, directory, environment, arguments and signal handling."""
    import ctypes

    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # the supervisor gone, so goes the worker
    if os.getppid() != request["supervisor"]:
        os._exit(1)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.umask(request["umask"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.environ[SWITCH] = "0"  # this is the worker; anything it starts runs on its own
    sys.argv = request["argv"]
    sys.path[:] = request["path"]
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for number in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(number, signal.SIG_DFL)
    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
    sys.stdin = sys.__stdin__ = open(0, closefd=False)  # noqa: SIM115 - the process's own stream
    sys.stdout = sys.__stdout__ = open(1, "w", buffering=1 if os.isatty(1) or unbuffered else -1, closefd=False)  # noqa: SIM115
    sys.stderr = sys.__stderr__ = open(2, "w", buffering=1, errors="backslashreplace", closefd=False)  # noqa: SIM115


def _run(request: dict) -> int:
    """The stage script as ``__main__`` (as the interpreter runs one), its start-up counted from the stage process's."""
    import types

    import kdistill

    kdistill.LOADING_SINCE = request["since"]
    script = request["script"]
    main = types.ModuleType("__main__")
    main.__file__, main.__builtins__ = script, __builtins__
    sys.modules["__main__"] = main
    try:
        exec(compile(Path(script).read_bytes(), script, "exec"), main.__dict__)
    except SystemExit as done:
        code = done.code
        if code is None or isinstance(code, int):
            return code or 0
        print(code, file=sys.stderr)
        return 1
    except BaseException as error:  # noqa: BLE001 - printed as the interpreter would, from the script's frame on
        trace = error.__traceback__
        while trace is not None and trace.tb_frame.f_code.co_filename != request["script"]:
            trace = trace.tb_next
        traceback.print_exception(type(error), error, trace or error.__traceback__)
        return 1
    return 0


if __name__ == "__main__":
    serve(Path(sys.argv[1]), int(sys.argv[2]))
