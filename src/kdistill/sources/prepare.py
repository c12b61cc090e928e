"""From a URL to the prepared dataset: fetch and verify, read by format, write the tensors atomically."""

from __future__ import annotations

from pathlib import Path

from kdistill.sources.cifar import read_cifar10, read_cifar100
from kdistill.sources.dataset import ImageDataset
from kdistill.sources.fetch import archive_path, fetch
from kdistill.sources.imagefolder import read_imagefolder

READERS = {"cifar10": read_cifar10, "cifar100": read_cifar100, "imagefolder": read_imagefolder}


def prepare(url: str, md5: str, fmt: str, raw_dir: Path, output: Path, *, train_images: int = 0) -> ImageDataset:
    """``train_images``: keep that many training images (0: all), the test split whole."""
    archive = fetch(url, archive_path(url, raw_dir), md5)
    dataset = READERS[fmt](archive)
    dataset.validate()
    if train_images:
        dataset = dataset.train_subset(train_images)
    dataset.save(output)
    return dataset
