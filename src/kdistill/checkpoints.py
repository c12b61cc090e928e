"""Self-describing model files: the weights plus what rebuilds the network and says where it came from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from kdistill.files import atomic_path
from kdistill.models import ConvClassifier, build_model


def save_checkpoint(path: Path, model: ConvClassifier, **metadata: Any) -> None:
    payload = {"model": model.config(), "state_dict": {k: v.cpu() for k, v in model.state_dict().items()}, **metadata}
    with atomic_path(path) as partial:
        torch.save(payload, partial)


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> tuple[ConvClassifier, dict[str, Any]]:
    """Rebuild the network from its file. ``weights_only``: loading never runs code from the file."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such model file; run the stage that writes it first")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # noqa: BLE001 - unpickling refused or file corrupt
        raise ValueError(f"{path}: not a loadable checkpoint (refused or corrupt): {error}") from None
    model = build_model(**payload["model"]).to(device)
    model.load_state_dict(payload["state_dict"])
    return model, payload

