"""CIFAR-10 in its official python layout: pickled batches, read so that nothing in them can run code."""

from __future__ import annotations

import io
import pickle
from pathlib import Path, PurePosixPath
from typing import ClassVar

import numpy as np
import torch

from kdistill.errors import DataError
from kdistill.sources.archives import archive_members
from kdistill.sources.dataset import IMAGE_SIZE, ImageDataset

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]


class _ArrayUnpickler(pickle.Unpickler):
    """Loads CIFAR-10's pickled batches, but nothing that could run code: only numpy arrays."""

    ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> type:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}: only numpy arrays are allowed")
        return super().find_class(module, name)


def _unpickle(archive: Path, name: str, payload: bytes) -> dict:
    try:
        entry = _ArrayUnpickler(io.BytesIO(payload), encoding="latin1").load()
    except Exception as error:  # noqa: BLE001 - any failure means a bad member
        raise DataError(f"{archive}: member {name!r} is not a CIFAR-10 batch: {error}") from None
    if not isinstance(entry, dict):
        raise DataError(f"{archive}: member {name!r} is not a CIFAR-10 batch (not a dict)")
    return entry


def _cifar_batch(archive: Path, name: str, entry: dict) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        data = np.asarray(entry["data"], dtype=np.uint8)
        labels = np.asarray(entry["labels"], dtype=np.int64)
    except KeyError as missing:
        raise DataError(f"{archive}: member {name!r} has no {missing} entry") from None
    if data.ndim != 2 or data.shape[1] != 3 * IMAGE_SIZE * IMAGE_SIZE or len(labels) != len(data):
        raise DataError(f"{archive}: member {name!r}: expected N x 3072 data and N labels, got {data.shape}, {labels.shape}")
    images = torch.from_numpy(data.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE).copy())
    return images, torch.from_numpy(labels)


def read_cifar10(archive: Path) -> ImageDataset:
    wanted = {*CIFAR10_TRAIN_FILES, "test_batch", "batches.meta"}
    found: dict[str, dict] = {}
    for member in archive_members(archive):
        path = PurePosixPath(member.name)
        if path.parent.name == CIFAR10_DIR and path.name in wanted:
            found[path.name] = _unpickle(archive, member.name, member.read())
    missing = sorted(wanted - set(found))
    if missing:
        raise DataError(
            f"{archive}: not in CIFAR-10's python layout (data.format: cifar10): expected "
            f"{CIFAR10_DIR}/{{data_batch_1..5, test_batch, batches.meta}}, missing {missing}"
        )
    train = [_cifar_batch(archive, name, found[name]) for name in CIFAR10_TRAIN_FILES]
    test_images, test_labels = _cifar_batch(archive, "test_batch", found["test_batch"])
    classes = found["batches.meta"].get("label_names")
    if not isinstance(classes, list):
        raise DataError(f"{archive}: batches.meta has no label_names list")
    return ImageDataset(
        torch.cat([images for images, _ in train]), torch.cat([labels for _, labels in train]),
        test_images, test_labels, [str(c) for c in classes],
    )
