"""The prepared dataset: every image of both splits as uint8 tensors, written once by the download stage.

Training never decodes an image: each trainer loads this file (memory-mapped), normalizes the
images once on the device (``kdistill.core.data.DeviceImages``) and batches them by index.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kdistill.errors import DataError
from kdistill.files import atomic_path

IMAGE_SIZE = 32
SPLITS = ("train", "test")


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

    def train_subset(self, size: int) -> ImageDataset:
        """``size`` training images drawn without replacement by a fixed seed, in their original order.

        Random, not the first ``size``: an image folder lists its images class by class.
        """
        available = len(self.train_labels)
        if size > available:
            raise DataError(f"data.train_images is {size}, but the archive has {available} training images")
        chosen = torch.randperm(available, generator=torch.Generator().manual_seed(0))[:size].sort().values
        return ImageDataset(self.train_images[chosen], self.train_labels[chosen], self.test_images, self.test_labels,
                            self.classes)

    def validate(self) -> None:
        n = len(self.classes)
        for split in SPLITS:
            images, labels = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            if len(images) == 0:
                raise DataError(f"the {split} split is empty")
            if labels.min() < 0 or labels.max() >= n:
                raise DataError(f"{split} labels outside 0..{n - 1}")
