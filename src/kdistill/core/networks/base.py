"""What every network shares: timm's ``forward_features`` / ``forward_head`` split and a declared feature shape.

``forward_features`` returns the last feature map, the one the head pools; ``forward_head`` maps it
to logits. Distillation objectives read hidden features through it, without hooks or
tuple-returning variants, and size their adaptations from ``feature_shape`` (C, H, W for a
32x32 image) before any image is seen.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


class Network(nn.Module):
    name: str  # its name in kdistill.core.catalog
    num_classes: int
    feature_shape: tuple[int, int, int]

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, feature_map: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))

    def config(self) -> dict[str, Any]:
        """What ``build_model`` needs to rebuild this network (saved beside the weights)."""
        return {"name": self.name, "num_classes": self.num_classes}


def he_init(model: nn.Module, *, linear: str) -> None:
    """The references' initialization: convolutions N(0, 2 / (k² · out)), batch norms 1 and 0.

    ``linear``: "bias" zeroes the linear layers' biases (WRN), "small" also draws their weights
    from N(0, 0.01²) (VGG, MobileNetV2), "default" leaves them to PyTorch.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
            module.weight.data.normal_(0, math.sqrt(2.0 / fan_out))
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.BatchNorm2d):
            module.weight.data.fill_(1)
            module.bias.data.zero_()
        elif isinstance(module, nn.Linear) and linear != "default":
            if linear == "small":
                module.weight.data.normal_(0, 0.01)
            module.bias.data.zero_()
