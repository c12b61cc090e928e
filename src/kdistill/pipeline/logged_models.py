"""Networks in MLflow: logged as torch.export archives with their config, loaded back as ordinary modules.

MLflow loads a ``pt2`` archive as a ``GraphModule`` whose ``.eval()`` and ``.train()`` raise, and by
default (``MLFLOW_ALLOW_PICKLE_DESERIALIZATION`` is true in MLflow 3.17) without checking that the
archive is free of pickles. ``load_network`` forces that check on, then rebuilds the network class
from the config logged beside the archive, so users get the module they trained.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import mlflow
import numpy as np
import torch

from kdistill.core.networks import Network, build_model
from kdistill.errors import DataError
from kdistill.pipeline.tracking import reporting

NETWORK_KEY = "kdistill_network"  # the model metadata entry that holds ``Network.config()``
# The archive is exported on the CPU; on a host with CUDA, pyfunc would otherwise move to the GPU
# and refuse a model whose weights it cannot move (at log_model's serving-input check and in users'
# predict calls alike).
PREDICTION_DEVICE = ("MLFLOW_DEFAULT_PREDICTION_DEVICE", "cpu")


def log_network(model: Network, name: str) -> None:
    """Log the trained network with a signature, an input example and its config, so it loads back anywhere."""
    # Two images, not one: torch.export would otherwise specialize the batch dimension to 1.
    example = np.zeros((2, 3, 32, 32), dtype=np.float32)
    os.environ.setdefault(*PREDICTION_DEVICE)
    with warnings.catch_warnings(), reporting("log the model to"):
        # torch.export's note about weight placement: the model is on the CPU, as it wants.
        warnings.filterwarnings("ignore", message="No complete tensor found in the group")
        mlflow.pytorch.log_model(
            model.cpu().eval(),
            name=name,
            input_example=example,
            serialization_format="pt2",
            metadata={NETWORK_KEY: model.config()},
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        )


@contextmanager
def _pickle_free_check() -> Iterator[None]:
    variable = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"
    before = os.environ.get(variable)
    os.environ[variable] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(variable)
        else:
            os.environ[variable] = before


def load_network(model_uri: str) -> Network:
    """The network logged at ``model_uri`` (``models:/<id>``, ``runs:/<run>/<name>``), in eval mode, on the CPU.

    The archive is refused unless it holds no pickle, whatever the environment allows; the module
    is rebuilt from the logged config and the archive's weights (``strict``: every key matches).
    """
    info = mlflow.models.get_model_info(model_uri)
    config: dict[str, Any] | None = (info.metadata or {}).get(NETWORK_KEY)
    if config is None:
        raise DataError(f"{model_uri}: no {NETWORK_KEY} metadata; it was not logged by kdistill")
    with _pickle_free_check():
        try:
            exported = mlflow.pytorch.load_model(model_uri)
        except (mlflow.exceptions.MlflowException, ValueError, RuntimeError, OSError) as error:
            raise DataError(f"{model_uri}: refused: {error}") from None
    network = build_model(**config)
    network.load_state_dict(exported.state_dict(), strict=True)
    return network.eval()
