"""Data: fetch and verify the archive, read it without trusting it, keep the images as one tensor.

Training never decodes an image: the download stage writes every image once as uint8 tensors
(N x 3 x 32 x 32); each trainer normalizes them once on the device (``engine.DeviceImages``) and
batches them by index permutation.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import pickle
import re
import shutil
import stat
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import ClassVar
from urllib.parse import urlparse

import numpy as np
import torch
from tqdm import tqdm

from kdistill.errors import DataError
from kdistill.files import atomic_path

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
IMAGE_SIZE = 32
SPLITS = ("train", "test")


# --------------------------------------------------------------------------------------------
# Fetching


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _local_source(url: str) -> Path | None:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    if parsed.scheme == "":
        return Path(url)
    return None


def _is_transient(error: Exception) -> bool:
    if isinstance(error, urllib.error.HTTPError):
        return error.code >= 500 or error.code in (408, 429)
    return isinstance(error, (urllib.error.URLError, TimeoutError, ConnectionError, http.client.IncompleteRead))


def _download(url: str, destination: Path, timeout: float) -> None:
    with urllib.request.urlopen(url, timeout=timeout) as response, open(destination, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        received = 0
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {url}", disable=None) as bar:
            while block := response.read(1 << 20):
                out.write(block)
                received += len(block)
                bar.update(len(block))
    if total is not None and received < total:  # the connection dropped: worth another attempt
        raise http.client.IncompleteRead(b"", total - received)


def fetch(url: str, destination: Path, md5: str, *, attempts: int = 3, timeout: float = 10.0,
          backoff: float = 1.0) -> Path:
    """Make ``destination`` a verified copy of ``url``; a file already there with the right md5 stays.

    The copy is written under a temporary name and moved into place only once its md5 matches, so
    an interrupted or corrupt download never looks like a good archive.
    """
    if destination.is_file() and md5sum(destination) == md5:
        print(f"{destination}: already present, md5 {md5} verified; not fetched again")
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(destination) as partial:
        local = _local_source(url)
        if local is not None:
            if not local.is_file():
                raise DataError(f"data.url {url!r}: no such file")
            shutil.copyfile(local, partial)
        else:
            _download_with_retries(url, partial, attempts=attempts, timeout=timeout, backoff=backoff)
        actual = md5sum(partial)
        if actual != md5:
            raise DataError(
                f"md5 mismatch for {url}: expected {md5} (data.md5), got {actual}; "
                "the file is corrupt, truncated or not the archive you meant"
            )
    return destination


def _download_with_retries(url: str, partial: Path, *, attempts: int, timeout: float, backoff: float) -> None:
    for attempt in range(1, attempts + 1):
        try:
            _download(url, partial, timeout)
            return
        except Exception as error:  # noqa: BLE001 - classified just below
            if not _is_transient(error):
                raise DataError(f"cannot download {url}: {error}") from None
            if attempt == attempts:
                raise DataError(f"cannot download {url} after {attempts} attempts: {error}") from None
            delay = backoff * 2 ** (attempt - 1)
            print(f"download of {url} failed ({error}); retrying in {delay:.0f} s")
            time.sleep(delay)


# --------------------------------------------------------------------------------------------
# Reading archives without trusting them


@dataclass(frozen=True)
class Member:
    name: str
    read: Callable[[], bytes]


def _check_member_name(archive: Path, name: str) -> None:
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise DataError(f"{archive}: refused member {name!r}: absolute path")
    if ".." in path.parts:
        raise DataError(f"{archive}: refused member {name!r}: '..' in path")


def _link_escapes(name: str, target: str) -> bool:
    resolved: list[str] = list(PurePosixPath(name).parent.parts)
    if target.startswith("/"):
        return True
    for part in PurePosixPath(target).parts:
        if part == "..":
            if not resolved:
                return True
            resolved.pop()
        elif part != ".":
            resolved.append(part)
    return False


def _tar_members(archive: Path) -> Iterator[Member]:
    with tarfile.open(archive, "r:*") as tar:
        for info in tar:
            _check_member_name(archive, info.name)
            if info.isdev():
                raise DataError(f"{archive}: refused member {info.name!r}: device or fifo file")
            if (info.issym() or info.islnk()) and _link_escapes(info.name, info.linkname):
                raise DataError(f"{archive}: refused member {info.name!r}: link to {info.linkname!r} leaves the archive")
            if info.isfile():
                yield Member(info.name, _guarded(archive, lambda info=info: tar.extractfile(info).read()))


def _zip_members(archive: Path) -> Iterator[Member]:
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            _check_member_name(archive, info.filename)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise DataError(f"{archive}: refused member {info.filename!r}: symbolic link")
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
                raise DataError(f"{archive}: refused member {info.filename!r}: device or fifo file")
            if not info.is_dir():
                yield Member(info.filename, _guarded(archive, lambda info=info: zf.read(info)))


_ARCHIVE_ERRORS = (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, zlib.error)


def _guarded(archive: Path, read: Callable[[], bytes]) -> Callable[[], bytes]:
    def guarded_read() -> bytes:
        try:
            return read()
        except _ARCHIVE_ERRORS as error:
            raise DataError(f"{archive}: unreadable or truncated archive: {error}") from None

    return guarded_read


def archive_members(archive: Path) -> Iterator[Member]:
    """Regular files of a tar (any compression) or zip archive, refusing unsafe members."""
    try:
        if zipfile.is_zipfile(archive):
            yield from _zip_members(archive)
        else:
            yield from _tar_members(archive)
    except _ARCHIVE_ERRORS as error:
        raise DataError(f"{archive}: unreadable or truncated archive: {error}") from None


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


@dataclass
class ImageDataset:
    """All images as uint8 N x 3 x 32 x 32 tensors with int64 labels; ``classes`` names each label."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: list[str]
    # Per split, recorded when saved: every training stage logs them, and hashing the 180 MB of
    # images once in the download stage spares each later stage doing it again.
    digests: dict[str, str] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        self.digests = {split: self.digest(split) for split in SPLITS}
        with atomic_path(path) as partial:
            torch.save(self.__dict__, partial)

    @classmethod
    def load(cls, path: Path) -> ImageDataset:
        if not path.is_file():
            raise DataError(f"{path}: no prepared dataset; run the download stage first (dvc repro download)")
        # Memory-mapped: the uint8 images are read through the page cache (once, when a trainer
        # normalizes them), not copied into the process.
        return cls(**torch.load(path, weights_only=True, mmap=True))

    def digest(self, split: str) -> str:
        """A hash of every image and label of ``split``: equal exactly when the data is the same."""
        hasher = hashlib.sha256()
        for tensor in (getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")):
            hasher.update(str((tuple(tensor.shape), tensor.dtype)).encode())
            hasher.update(tensor.contiguous().numpy().data)
        return hasher.hexdigest()[:16]

    def validate(self) -> None:
        n = len(self.classes)
        for split in SPLITS:
            images, labels = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            if len(images) == 0:
                raise DataError(f"the {split} split is empty")
            if labels.min() < 0 or labels.max() >= n:
                raise DataError(f"{split} labels outside 0..{n - 1}")


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


_IMAGEFOLDER_MEMBER = re.compile(r"^(?:.*/)?(train|test)/([^/]+)/([^/]+)$")


def _decode(archive: Path, name: str, payload: bytes) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(payload)) as picture:
            picture = picture.convert("RGB")
            if picture.size != (IMAGE_SIZE, IMAGE_SIZE):
                picture = picture.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
            pixels = np.asarray(picture, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as error:
        raise DataError(f"{archive}: member {name!r} is not a readable image: {error}") from None
    return torch.from_numpy(pixels.transpose(2, 0, 1).copy())


def read_imagefolder(archive: Path) -> ImageDataset:
    files: dict[str, list[tuple[str, str, bytes]]] = {"train": [], "test": []}
    for member in tqdm(archive_members(archive), desc=f"read {archive.name}", unit=" files", disable=None):
        match = _IMAGEFOLDER_MEMBER.match(member.name)
        if match and match.group(3).lower().endswith(IMAGE_SUFFIXES):
            split, label, _ = match.groups()
            files[split].append((member.name, label, member.read()))
    classes = sorted({label for _, label, _ in files["train"]})
    unknown = sorted({label for _, label, _ in files["test"]} - set(classes))
    if not files["train"] or not files["test"] or unknown:
        raise DataError(
            f"{archive}: not an image-folder archive (data.format: imagefolder): expected images under "
            f"train/<class>/ and test/<class>/ with the same classes; found {len(files['train'])} train and "
            f"{len(files['test'])} test images" + (f", test classes without train images: {unknown}" if unknown else "")
        )
    index = {label: i for i, label in enumerate(classes)}
    splits = {}
    for split, entries in files.items():
        entries.sort()
        images = torch.stack([_decode(archive, name, payload) for name, _, payload in entries])
        labels = torch.tensor([index[label] for _, label, _ in entries], dtype=torch.int64)
        splits[split] = (images, labels)
    return ImageDataset(*splits["train"], *splits["test"], classes)


READERS = {"cifar10": read_cifar10, "imagefolder": read_imagefolder}


def archive_path(url: str, raw_dir: Path) -> Path:
    name = PurePosixPath(urlparse(url).path).name or "archive"
    return raw_dir / name


def prepare(url: str, md5: str, fmt: str, raw_dir: Path, output: Path) -> ImageDataset:
    """The download stage: fetch + verify, read by format, write the tensors atomically."""
    archive = fetch(url, archive_path(url, raw_dir), md5)
    dataset = READERS[fmt](archive)
    dataset.validate()
    dataset.save(output)
    return dataset
