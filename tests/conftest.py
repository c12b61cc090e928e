from __future__ import annotations

import functools
import http.server
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fakedata import make_cifar10_archive
from kdistill.entry import configure_process

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "true")
ROOT = Path(__file__).resolve().parents[1]
configure_process()  # the same process settings as every stage (kdistill.entry.main)


# Tiers: `make test-fast` deselects these (see pyproject.toml's markers).
FIXTURE_MARKERS = {"file_server": "server", "pipeline": "e2e", "restored": "e2e", "toy_method_added": "e2e"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for fixture, marker in FIXTURE_MARKERS.items():
            if fixture in item.fixturenames:
                item.add_marker(getattr(pytest.mark, marker))


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
