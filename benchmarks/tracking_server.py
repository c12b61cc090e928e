"""What an `mlflow server` costs to start, with MLflow's job runner and without it, side by side.

    .venv/bin/python -m benchmarks.tracking_server [--settle 10]

Each server starts on a fresh SQLite store; once `/health` answers and ``--settle`` seconds have
passed, the table gives its processes, the CPU time they used and their memory. The job runner
(``MLFLOW_SERVER_ENABLE_JOB_EXECUTION``, on by default) runs MLflow's GenAI jobs, which this
project has none of: `make` switches it off.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pandas as pd
import psutil

MLFLOW = str(Path(sys.executable).with_name("mlflow"))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def measure(job_execution: bool, settle: float) -> dict[str, float]:
    store, port = Path(tempfile.mkdtemp(prefix="server-")), _free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": str(job_execution).lower()}
    started = time.monotonic()
    server = subprocess.Popen([MLFLOW, "server", "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        while True:
            if server.poll() is not None:
                raise SystemExit(f"mlflow server exited with {server.returncode}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        ready = time.monotonic() - started
        time.sleep(settle)
        root = psutil.Process(server.pid)
        tree = [root, *root.children(recursive=True)]
        times = [process.cpu_times() for process in tree]
        return {"job runner": "on" if job_execution else "off", "ready (s)": ready, "processes": len(tree),
                "CPU (s)": sum(t.user + t.system + t.children_user + t.children_system for t in times),
                "memory (MB)": sum(process.memory_info().rss for process in tree) / 1e6}
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
        shutil.rmtree(store, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settle", type=float, default=10.0, help="seconds after /health answers")
    args = parser.parse_args()
    rows = [measure(on, args.settle) for on in (True, False)]
    table = pd.DataFrame(rows)
    print(table.to_markdown(index=False, floatfmt=".1f"))
    print(f"\nwith the job runner: {rows[0]['CPU (s)'] / rows[1]['CPU (s)']:.1f}x the CPU time, "
          f"{rows[0]['memory (MB)'] / rows[1]['memory (MB)']:.1f}x the memory")


if __name__ == "__main__":
    main()
