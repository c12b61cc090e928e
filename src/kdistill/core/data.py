"""Data kept on the device: a split's images normalized once, and the teacher's outputs, cached or per batch."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from kdistill.core.networks import Network
from kdistill.core.runtime import Runtime

EVAL_BATCH_SIZE = 1000
NORMALIZE_CHUNK = 1000  # images normalized at a time: the fp32 intermediate stays small


class DeviceImages:
    """A split's images, normalized once, and its labels, on the device: a batch is one gather.

    The images are kept as the first convolution reads them: normalized, ``channels_last`` (the
    convolutions' fast layout with oneDNN on CPUs and with tensor cores alike) and in the runtime's
    input dtype. Under bf16 autocast that convolution rounds its fp32 input to bf16 on every batch,
    so rounding once here hands it the same values, bit for bit (a test checks), in half the memory
    of fp32, and no batch pays for its normalization again.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: tuple[float, ...],
                 std: tuple[float, ...], runtime: Runtime) -> None:
        device = runtime.device
        shape = (1, 3, 1, 1)
        scale = (1.0 / (255.0 * torch.tensor(std, device=device))).view(shape)
        shift = (torch.tensor(mean, device=device) / torch.tensor(std, device=device)).view(shape)
        self.images = torch.empty(images.shape, dtype=runtime.input_dtype, device=device,
                                  memory_format=torch.channels_last)
        for start in range(0, len(images), NORMALIZE_CHUNK):  # uint8 to the device: a quarter of fp32's bytes
            window = slice(start, start + NORMALIZE_CHUNK)
            self.images[window] = images[window].to(device).float().mul_(scale).sub_(shift)
        self.labels = labels.to(device)
        self.black = (-shift).view(-1).to(runtime.input_dtype)  # a zero pixel, normalized: augmentation's padding

    def __len__(self) -> int:
        return len(self.labels)

    def inputs(self, index: torch.Tensor | slice) -> torch.Tensor:
        return self.images[index]  # a gather keeps channels_last


@torch.inference_mode()
def teacher_outputs(teacher: Network, data: DeviceImages, runtime: Runtime) -> dict[str, torch.Tensor]:
    """The teacher's logits and last feature map for every training image, computed once, stored in fp32.

    Without augmentation the frozen teacher (eval mode: dropout off) gives the same outputs on
    every epoch, so this replaces the tutorial's per-batch teacher forward. That forward runs in
    the training's precision, as the tutorial's does (fp32 there, and here with
    ``train.precision: fp32``): under bf16 autocast the soft targets are no coarser than the
    student's own bf16 logits they are compared with.
    """
    teacher.eval()
    logits, features = [], []
    for start in range(0, len(data), EVAL_BATCH_SIZE):
        with runtime.autocast():
            feature_map = teacher.forward_features(data.inputs(slice(start, start + EVAL_BATCH_SIZE)))
            logits.append(teacher.forward_head(feature_map).float().cpu())
        features.append(feature_map.float().contiguous().cpu())
    return {"logits": torch.cat(logits), "features": torch.cat(features)}




class Teacher:
    """The teacher outputs an objective reads (``logits``, ``features``), for one batch as the student sees it."""

    def outputs(self, index: torch.Tensor, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError


class CachedTeacher(Teacher):
    """Outputs computed once per training image (``teacher_outputs``): exact when the images are not augmented."""

    def __init__(self, cache: Mapping[str, torch.Tensor]) -> None:
        self.cache = dict(cache)

    def outputs(self, index: torch.Tensor, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: output[index] for name, output in self.cache.items()}


class LiveTeacher(Teacher):
    """The frozen teacher run on each batch, in eval mode and without gradients: what augmentation needs.

    An augmented image is new every epoch, so no cache holds its outputs.
    """

    def __init__(self, network: Network, wanted: frozenset[str], runtime: Runtime) -> None:
        self.network = network.eval().requires_grad_(False)
        self.wanted = wanted
        self.runtime = runtime

    @torch.no_grad()
    def outputs(self, index: torch.Tensor, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        self.network.eval()  # the student's train() never reaches it, but a caller's might
        with self.runtime.autocast():
            features = self.network.forward_features(inputs)
            found = {"features": features, "logits": self.network.forward_head(features)}
        return {name: found[name] for name in sorted(self.wanted)}
