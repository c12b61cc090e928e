"""VGG with batch norm for CIFAR (the references' ``vgg*_bn``): five stages, no fully connected layers but one.

Stage k is a run of 3x3 convolutions, each followed by batch norm and ReLU, max-pooled between
stages 0-3 (32 -> 4 pixels); the head average-pools the last 4x4 map. Module and parameter names are
the reference's (its fifth max-pool applies only to 64-pixel images, and is left out).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdistill.core.networks.base import Network, he_init


def _stage(channels: tuple[int, ...], in_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in channels:
        layers += [nn.Conv2d(in_channels, width, kernel_size=3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        in_channels = width
    return nn.Sequential(*layers[:-1])  # the stage's last ReLU is applied in forward (the reference's preact)


class VGG(Network):
    def __init__(self, stages: tuple[tuple[int, ...], ...], num_classes: int = 100) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.feature_shape = (stages[4][-1], 4, 4)
        inputs = [3, *(stage[-1] for stage in stages[:-1])]
        self.block0, self.block1, self.block2, self.block3, self.block4 = (
            _stage(stage, in_channels) for stage, in_channels in zip(stages, inputs, strict=True))
        self.pool0, self.pool1, self.pool2 = (nn.MaxPool2d(kernel_size=2, stride=2) for _ in range(3))
        self.pool4 = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(stages[4][-1], num_classes)
        he_init(self, linear="small")

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        x = self.pool0(F.relu(self.block0(images)))
        x = self.pool1(F.relu(self.block1(x)))
        x = self.pool2(F.relu(self.block2(x)))
        x = F.relu(self.block3(x))
        return F.relu(self.block4(x))

    def forward_head(self, feature_map: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool4(feature_map), 1))
