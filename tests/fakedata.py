"""Small archives in CIFAR-10's and CIFAR-100's exact layouts, learnable (each class has its own colour pattern)."""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def class_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """N x 3 x 32 x 32 uint8: a per-class colour and stripe plus noise."""
    n = len(labels)
    base = np.zeros((n, 3, 32, 32), dtype=np.float32)
    for channel in range(3):
        base[:, channel] = ((labels * (channel + 3)) % 10)[:, None, None] * 25.0
    stripes = (np.arange(32)[None, :] % (labels[:, None] + 2) == 0).astype(np.float32) * 60.0
    base += stripes[:, None, None, :]
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


def _labels(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.arange(n) % len(CLASSES)).astype(np.int64)


def _pickled(entry: dict) -> bytes:
    return pickle.dumps(entry, protocol=2)


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def make_cifar10_archive(path: Path, per_batch: int = 40, test: int = 60, seed: int = 0) -> str:
    """Write cifar-10-python.tar.gz's layout with 5 x ``per_batch`` train and ``test`` test images; return md5."""
    rng = np.random.default_rng(seed)
    with tarfile.open(path, "w:gz") as tar:
        for name, n in [*((f"data_batch_{i}", per_batch) for i in range(1, 6)), ("test_batch", test)]:
            labels = _labels(n, rng)
            data = class_images(labels, rng).reshape(n, 3072)
            entry = {"batch_label": name, "labels": labels.tolist(), "data": data,
                     "filenames": [f"{i}.png" for i in range(n)]}
            _add(tar, f"cifar-10-batches-py/{name}", _pickled(entry))
        meta = {"label_names": CLASSES, "num_cases_per_batch": per_batch, "num_vis": 3072}
        _add(tar, "cifar-10-batches-py/batches.meta", _pickled(meta))
    return md5(path)


def make_cifar100_archive(path: Path, train: int = 200, test: int = 100, seed: int = 0) -> str:
    """Write cifar-100-python.tar.gz's layout (``train``, ``test``, ``meta``; fine and coarse labels); return md5."""
    rng = np.random.default_rng(seed)
    with tarfile.open(path, "w:gz") as tar:
        for name, n in (("train", train), ("test", test)):
            fine = rng.permutation(np.arange(n) % 100).astype(np.int64)
            entry = {"filenames": [f"{i}.png" for i in range(n)], "batch_label": f"{name} batch",
                     "fine_labels": fine.tolist(), "coarse_labels": (fine // 5).tolist(),
                     "data": class_images(fine % 10, rng).reshape(n, 3072)}
            _add(tar, f"cifar-100-python/{name}", _pickled(entry))
        meta = {"fine_label_names": [f"fine_{i}" for i in range(100)], "coarse_label_names": [f"coarse_{i}" for i in range(20)]}
        _add(tar, "cifar-100-python/meta", _pickled(meta))
    return md5(path)


def jpeg_bytes(image: np.ndarray, size: int = 32) -> bytes:
    from PIL import Image

    picture = Image.fromarray(image.transpose(1, 2, 0))
    if size != 32:
        picture = picture.resize((size, size))
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def make_imagefolder_archive(path: Path, train: int = 50, test: int = 20, seed: int = 0, size: int = 32) -> str:
    """train/<class>/NNNN.jpg and test/<class>/NNNN.jpg in a .tar.gz or .zip (by suffix); return md5."""
    rng = np.random.default_rng(seed)
    members = []
    for split, n in (("train", train), ("test", test)):
        labels = _labels(n, rng)
        for i, (label, image) in enumerate(zip(labels, class_images(labels, rng), strict=True)):
            members.append((f"cifar10/{split}/{CLASSES[label]}/{i:04d}.jpg", jpeg_bytes(image, size)))
    if path.suffix == ".zip":
        with zipfile.ZipFile(path, "w") as zf:
            for name, payload in members:
                zf.writestr(name, payload)
    else:
        with tarfile.open(path, "w:gz") as tar:
            for name, payload in members:
                _add(tar, name, payload)
    return md5(path)


def md5(path: Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()
