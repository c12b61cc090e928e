"""CIFAR-10 and CIFAR-100 in their official python layouts: pickled batches, read so that nothing in them can run code."""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import ClassVar

import numpy as np
import torch

from kdistill.errors import DataError
from kdistill.sources.archives import archive_members
from kdistill.sources.dataset import IMAGE_SIZE, ImageDataset


@dataclass(frozen=True)
class CifarLayout:
    """Where one CIFAR archive keeps its batches, and under which keys its labels and their names."""

    format: str
    directory: str
    train: tuple[str, ...]
    test: str
    meta: str
    labels: str
    names: str


CIFAR10 = CifarLayout("cifar10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch",
                      "batches.meta", "labels", "label_names")
# The 100 fine classes (not the 20 coarse superclasses): the classes the distillation literature reports.
CIFAR100 = CifarLayout("cifar100", "cifar-100-python", ("train",), "test", "meta", "fine_labels", "fine_label_names")


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


def _cifar_batch(archive: Path, name: str, entry: dict, labels_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        data = np.asarray(entry["data"], dtype=np.uint8)
        labels = np.asarray(entry[labels_key], dtype=np.int64)
    except KeyError as missing:
        raise DataError(f"{archive}: member {name!r} has no {missing} entry") from None
    if data.ndim != 2 or data.shape[1] != 3 * IMAGE_SIZE * IMAGE_SIZE or len(labels) != len(data):
        raise DataError(f"{archive}: member {name!r}: expected N x 3072 data and N labels, got {data.shape}, {labels.shape}")
    images = torch.from_numpy(data.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE).copy())
    return images, torch.from_numpy(labels)


def read_cifar(archive: Path, layout: CifarLayout) -> ImageDataset:
    wanted = {*layout.train, layout.test, layout.meta}
    found: dict[str, dict] = {}
    for member in archive_members(archive):
        path = PurePosixPath(member.name)
        if path.parent.name == layout.directory and path.name in wanted:
            found[path.name] = _unpickle(archive, member.name, member.read())
    missing = sorted(wanted - set(found))
    if missing:
        raise DataError(
            f"{archive}: not in the python layout of data.format {layout.format}: expected "
            f"{layout.directory}/{{{', '.join([*layout.train, layout.test, layout.meta])}}}, missing {missing}"
        )
    train = [_cifar_batch(archive, name, found[name], layout.labels) for name in layout.train]
    test_images, test_labels = _cifar_batch(archive, layout.test, found[layout.test], layout.labels)
    classes = found[layout.meta].get(layout.names)
    if not isinstance(classes, list):
        raise DataError(f"{archive}: {layout.meta} has no {layout.names} list")
    return ImageDataset(
        torch.cat([images for images, _ in train]), torch.cat([labels for _, labels in train]),
        test_images, test_labels, [str(c) for c in classes],
    )


def read_cifar10(archive: Path) -> ImageDataset:
    return read_cifar(archive, CIFAR10)


def read_cifar100(archive: Path) -> ImageDataset:
    return read_cifar(archive, CIFAR100)
