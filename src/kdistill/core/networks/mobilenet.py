"""MobileNetV2 for CIFAR (Sandler et al. 2018) as the references build it; ``mobile_half`` is width 0.5.

Inverted residual blocks; the first convolution has stride 2, so the last map is 2x2, widened to
1280 channels by a 1x1 convolution before the head pools it. Module and parameter names are the
reference's.
"""

from __future__ import annotations

import torch
from torch import nn

from kdistill.core.networks.base import Network, he_init

# (expansion, channels, blocks, stride) per stage; an expansion of None is the network's own.
STAGES = ((1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2), (None, 96, 3, 1),
          (None, 160, 3, 2), (None, 320, 1, 1))
LAST_CHANNELS = 1280


def _conv_bn(inputs: int, outputs: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inputs, outputs, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(outputs),
                         nn.ReLU(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, inputs: int, outputs: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = inputs * expansion
        self.use_res_connect = stride == 1 and inputs == outputs
        self.conv = nn.Sequential(
            nn.Conv2d(inputs, hidden, 1, 1, 0, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, outputs, 1, 1, 0, bias=False), nn.BatchNorm2d(outputs),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(Network):
    def __init__(self, expansion: int, width_mult: float, num_classes: int = 100) -> None:
        super().__init__()
        self.num_classes = num_classes
        channels = int(32 * width_mult)
        self.conv1 = _conv_bn(3, channels, 3, 2)
        self.blocks = nn.ModuleList()
        for stage_expansion, width, count, stride in STAGES:
            outputs = int(width * width_mult)
            layers = []
            for index in range(count):
                layers.append(InvertedResidual(channels, outputs, stride if index == 0 else 1,
                                               stage_expansion or expansion))
                channels = outputs
            self.blocks.append(nn.Sequential(*layers))
        last = int(LAST_CHANNELS * width_mult) if width_mult > 1.0 else LAST_CHANNELS
        self.feature_shape = (last, 2, 2)
        self.conv2 = _conv_bn(channels, last, 1, 1)
        self.classifier = nn.Sequential(nn.Linear(last, num_classes))
        self.avgpool = nn.AvgPool2d(2, ceil_mode=True)
        he_init(self, linear="small")

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        x = self.conv1(images)
        for block in self.blocks:
            x = block(x)
        return self.conv2(x)

    def forward_head(self, feature_map: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(feature_map), 1))
