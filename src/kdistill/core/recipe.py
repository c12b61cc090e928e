"""The training recipe: optimizer, learning-rate schedule and augmentation, as ``params.yaml``'s ``train`` names them.

Two recipes matter: the tutorial's (Adam at 1e-3, a constant rate, no augmentation) and the
literature's CIFAR recipe (SGD with momentum and weight decay, the rate cut at milestones, random
crop with 4-pixel padding plus horizontal flip).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

CROP_PADDING = 4


@dataclass(frozen=True)
class Recipe:
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "adam"  # adam | sgd
    lr: float = 0.001
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: str = "constant"  # constant | multistep | cosine
    milestones: tuple[int, ...] = ()
    lr_decay: float = 0.1
    augment: str = "none"  # none | crop_flip

    def make_optimizer(self, parameters: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        """Fused: the update rule is the same, in one kernel per step instead of a handful per tensor.

        It rounds differently in the last bit from the unfused loop, by far less than run-to-run noise.
        """
        parameters = list(parameters)
        if self.optimizer == "adam":
            return torch.optim.Adam(parameters, lr=self.lr, weight_decay=self.weight_decay, fused=True)
        if self.optimizer == "sgd":
            return torch.optim.SGD(parameters, lr=self.lr, momentum=self.momentum, nesterov=self.nesterov,
                                   weight_decay=self.weight_decay, fused=True)
        raise ValueError(f"unknown optimizer {self.optimizer!r}")

    def make_schedule(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        """Stepped once per epoch, after it: epoch e + 1 trains at the rate that e epochs of schedule give."""
        if self.schedule == "constant":
            return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)
        if self.schedule == "multistep":
            return torch.optim.lr_scheduler.MultiStepLR(optimizer, list(self.milestones), gamma=self.lr_decay)
        if self.schedule == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.epochs)
        raise ValueError(f"unknown schedule {self.schedule!r}")


class CropFlip:
    """Random crop after zero-padding by 4 pixels, and a horizontal flip with probability 1/2, on the device.

    The literature applies ``RandomCrop(32, padding=4)`` and ``RandomHorizontalFlip()`` to each PIL
    image before normalizing, so its padding is black pixels. The images here are normalized
    already: the padding is black's normalized value, channel by channel, and the output is the
    same image the literature's transforms make for the same offsets and flip. One gather does
    both, for the whole batch, in the images' layout (channels_last stays channels_last).
    """

    def __init__(self, black: torch.Tensor, generator: torch.Generator) -> None:
        self.black = black.view(1, -1, 1, 1)  # normalized value of a zero pixel, per channel
        self.generator = generator  # on the CPU: its state is checkpointed, so a resumed run draws the same crops

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        n, _, h, w = images.shape
        pad = CROP_PADDING
        padded = self.black.to(images.dtype).expand(n, -1, h + 2 * pad, w + 2 * pad).clone(
            memory_format=torch.channels_last)
        padded[:, :, pad:pad + h, pad:pad + w] = images
        draws = torch.randint(0, 2 * pad + 1, (n, 2), generator=self.generator)
        flips = torch.randint(0, 2, (n,), generator=self.generator).bool()
        device = images.device
        top, left, flips = draws[:, 0].to(device), draws[:, 1].to(device), flips.to(device)
        rows = top[:, None] + torch.arange(h, device=device)
        steps = torch.arange(w, device=device)
        cols = left[:, None] + torch.where(flips[:, None], w - 1 - steps, steps)
        batch = torch.arange(n, device=device)[:, None, None]
        # (n, h, w, C) by advanced indexing; permuted back it is (n, C, h, w) in channels_last.
        return padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
