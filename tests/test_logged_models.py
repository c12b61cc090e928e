"""A logged network comes back as the module that was trained, from a real store, and nothing else does."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import BIN, free_port, wait_for_http
from kdistill import load_network
from kdistill.core.networks import LightNN
from kdistill.errors import DataError
from kdistill.pipeline.logged_models import PREDICTION_DEVICE, log_network


@pytest.fixture(scope="module")
def logged(tmp_path_factory) -> tuple[str, LightNN, Path]:
    """A trained-looking LightNN logged by the pipeline's own code to a fresh SQLite store."""
    import mlflow

    root = tmp_path_factory.mktemp("store")
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    experiment = mlflow.create_experiment("logged", artifact_location=(root / "artifacts").as_uri())
    torch.manual_seed(3)
    network = LightNN()
    with torch.no_grad():  # weights no initializer would produce, so a fresh LightNN cannot pass for it
        for parameter in network.parameters():
            parameter.add_(0.01)
    with mlflow.start_run(experiment_id=experiment):
        log_network(network, "distill_kd")
        run = mlflow.active_run().info.run_id
    (model,) = mlflow.search_logged_models(experiment_ids=[experiment], output_format="list",
                                           filter_string=f"source_run_id = '{run}'")
    return model.model_uri, network.eval(), root


@pytest.fixture(autouse=True)
def _its_store(request):
    """Tests of the logged network read it from its store, whatever another test pointed MLflow at."""
    if "logged" in request.fixturenames:
        import mlflow

        mlflow.set_tracking_uri(f"sqlite:///{request.getfixturevalue('logged')[2] / 'mlflow.db'}")


def test_load_network_gives_the_trained_module_in_eval_mode(logged):
    uri, trained, _ = logged
    network = load_network(uri)
    assert type(network) is LightNN and not network.training
    images = torch.randn(6, 3, 32, 32)
    assert torch.equal(network(images), trained(images))
    network.train()  # an ordinary module: dropout is back on
    assert network.training and not torch.equal(network(images), network(images))


class _RunsCode:
    """Unpickled, it creates ``marker``: proof that loading ran code from the archive."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _tampered_copy(uri: str, marker: Path, tmp_path: Path) -> str:
    """The logged model's files with its pickled record (the sample inputs) replaced by one that would run code."""
    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "model")))
    archive = next(local.rglob("*.pt2"))
    with zipfile.ZipFile(archive) as source:
        members = {info.filename: source.read(info) for info in source.infolist()}
    victim = next(name for name in members if name.endswith("sample_inputs/model.pt"))
    members[victim] = pickle.dumps(_RunsCode(marker))  # what a crafted archive carries
    with zipfile.ZipFile(archive, "w") as rewritten:
        for name, payload in members.items():
            rewritten.writestr(name, payload)
    return str(local)


def test_a_tampered_archive_is_refused_even_where_mlflow_would_allow_pickles(logged, tmp_path, monkeypatch):
    uri, _, _ = logged
    marker = tmp_path / "code-ran"
    tampered = _tampered_copy(uri, marker, tmp_path)
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
    with pytest.raises(DataError, match="refused"):
        load_network(tampered)
    assert not marker.exists(), "the archive's pickle was run"
    assert os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] == "true", "the caller's setting is put back"


def test_pyfunc_predicts_what_the_network_computes(logged):
    import mlflow

    uri, trained, _ = logged
    images = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    predicted = mlflow.pyfunc.load_model(uri).predict(images)
    assert np.allclose(predicted, trained(torch.from_numpy(images)).detach().numpy(), atol=1e-5)


def test_a_model_logged_on_a_cuda_host_predicts_on_the_cpu(tmp_path, monkeypatch, caplog):
    # On a host with CUDA, MLflow's pyfunc moves models to the GPU, and a model exported on the CPU
    # refuses. This process pretends to have CUDA (nothing runs on it): logging must still check the
    # serving input on the CPU, and pyfunc predict on the CPU after it, but not without the setting.
    import mlflow

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv(PREDICTION_DEVICE[0], raising=False)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with mlflow.start_run():
        log_network(LightNN().eval(), "student")
        run = mlflow.active_run().info.run_id
    assert "can't be loaded on 'cuda'" not in caplog.text, "log_model's own serving check failed"
    (model,) = mlflow.search_logged_models(output_format="list", filter_string=f"source_run_id = '{run}'")
    assert os.environ[PREDICTION_DEVICE[0]] == "cpu"
    predicted = mlflow.pyfunc.load_model(model.model_uri).predict(np.zeros((2, 3, 32, 32), dtype=np.float32))
    assert predicted.shape == (2, 10)
    monkeypatch.delenv(PREDICTION_DEVICE[0])
    with pytest.raises(mlflow.exceptions.MlflowException, match="can't be loaded on 'cuda'"):
        mlflow.pyfunc.load_model(model.model_uri)


@pytest.mark.server
def test_mlflow_models_serve_answers_with_the_networks_logits(logged, tmp_path):
    uri, trained, root = logged
    port = free_port()
    # The server runs `uvicorn` from PATH: the project's, activated or not.
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
    server = subprocess.Popen([str(BIN / "mlflow"), "models", "serve", "-m", uri, "--env-manager", "local",
                               "--host", "127.0.0.1", "--port", str(port)], env=env, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/ping", server)
        images = np.random.default_rng(1).standard_normal((3, 3, 32, 32)).astype(np.float32)
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations",
                                         data=json.dumps({"inputs": images.tolist()}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            served = np.asarray(json.loads(response.read())["predictions"], dtype=np.float32)
        assert np.allclose(served, trained(torch.from_numpy(images)).detach().numpy(), atol=1e-4)
    finally:
        server.terminate()
        server.wait(timeout=30)
