"""Image folders: ``train/<class>/*`` and ``test/<class>/*`` inside an archive, decoded once."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from kdistill.errors import DataError
from kdistill.sources.archives import archive_members
from kdistill.sources.dataset import IMAGE_SIZE, ImageDataset

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


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
