"""Self-describing model files: the weights plus what rebuilds the network and says where it came from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from kdistill.core.networks import ConvClassifier, build_model
from kdistill.errors import DataError
from kdistill.files import atomic_path


def save_checkpoint(path: Path, models: dict[int, ConvClassifier], **metadata: Any) -> None:
    """One file per stage: the network's config and one set of weights per seed."""
    first = next(iter(models.values()))
    state_dicts = {seed: {k: v.cpu() for k, v in m.state_dict().items()} for seed, m in models.items()}
    payload = {"model": first.config(), "seeds": list(models), "state_dicts": state_dicts, **metadata}
    with atomic_path(path) as partial:
        torch.save(payload, partial)


def load_checkpoint(path: Path, seed: int | None = None,
                    device: str | torch.device = "cpu") -> tuple[ConvClassifier, dict[str, Any]]:
    """Rebuild the network of ``seed`` (default: the first) from its file.

    ``weights_only``: loading never runs code from the file.
    """
    if not Path(path).is_file():
        raise DataError(f"{path}: no such model file; run the stage that writes it first")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # noqa: BLE001 - unpickling refused or file corrupt
        raise DataError(f"{path}: not a loadable checkpoint (refused or corrupt): {error}") from None
    seed = payload["seeds"][0] if seed is None else seed
    if seed not in payload["state_dicts"]:
        raise DataError(f"{path}: no weights for seed {seed}; it has seeds {payload['seeds']}")
    model = build_model(**payload["model"]).to(device)
    model.load_state_dict(payload["state_dicts"][seed])
    return model, payload

