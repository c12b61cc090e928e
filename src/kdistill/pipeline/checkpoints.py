"""Self-describing model files: the weights plus what rebuilds the network and says where it came from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from kdistill.core.networks import Network, build_model
from kdistill.errors import DataError
from kdistill.files import atomic_path, md5sum


def save_checkpoint(path: Path, models: dict[int, Network], **metadata: Any) -> None:
    """One file per stage: the network's config and one set of weights per seed."""
    first = next(iter(models.values()))
    state_dicts = {seed: {k: v.cpu() for k, v in m.state_dict().items()} for seed, m in models.items()}
    payload = {"model": first.config(), "seeds": list(models), "state_dicts": state_dicts, **metadata}
    with atomic_path(path) as partial:
        torch.save(payload, partial)


def load_checkpoint(path: Path, seed: int | None = None,
                    device: str | torch.device = "cpu") -> tuple[Network, dict[str, Any]]:
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



def load_published_teacher(path: Path, md5: str, network: str, num_classes: int) -> Network:
    """A teacher trained elsewhere, in the layout of RepDistiller's and mdistiller's files: ``{"model": state_dict}``.

    Verified against ``train_teacher.checkpoint_md5`` again (the download stage fetched it), loaded
    with ``weights_only`` (no code from the file runs) and ``strict`` (every weight fits).
    """
    if not path.is_file():
        raise DataError(f"{path}: the published teacher is missing; run the download stage (dvc repro download)")
    if (actual := md5sum(path)) != md5:
        raise DataError(f"{path}: md5 {actual}, but train_teacher.checkpoint_md5 is {md5}; run dvc repro download")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - unpickling refused or file corrupt
        raise DataError(f"{path}: not a loadable checkpoint (refused or corrupt): {error}") from None
    state = payload.get("model", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(f"{path}: holds no state dict (expected one under 'model', as RepDistiller saves them)")
    model = build_model(network, num_classes=num_classes)
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    found = {key: tuple(value.shape) for key, value in state.items()}
    if found != expected:
        differ = [f"{key}: {found.get(key, 'missing')} here, {shape} expected" for key, shape in expected.items()
                  if found.get(key) != shape] + [f"{key}: unexpected" for key in found.keys() - expected.keys()]
        raise DataError(f"{path}: does not fit networks.teacher {network!r} with {num_classes} classes ("
                        f"{len(differ)} tensors differ; first: {'; '.join(differ[:3])})")
    model.load_state_dict(state, strict=True)
    return model
