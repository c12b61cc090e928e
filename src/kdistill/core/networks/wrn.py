"""Wide ResNets (Zagoruyko & Komodakis 2016) over depth and widening factor, as RepDistiller defines them.

Pre-activation blocks; depth 6n + 4. The last feature map is the one the head pools: after the
final batch norm and ReLU. Module and parameter names are the reference's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdistill.core.networks.base import Network, he_init


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = None if self.equal_in_out else nn.Conv2d(in_planes, out_planes, kernel_size=1,
                                                                      stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.relu1(self.bn1(x))
        # The shortcut takes the block's input where the shapes agree, its activation where a 1x1
        # convolution must reshape it: the reference's order.
        shortcut = x if self.convShortcut is None else self.convShortcut(activated)
        out = self.conv2(self.relu2(self.bn2(self.conv1(activated))))
        return shortcut + out


class NetworkBlock(nn.Module):
    def __init__(self, layers: int, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(*(BasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1)
                                     for i in range(layers)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(Network):
    def __init__(self, depth: int, widen_factor: int, num_classes: int = 100) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"a wide ResNet's depth is 6n + 4, got {depth}")
        layers = (depth - 4) // 6
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.num_classes = num_classes
        self.feature_shape = (channels[3], 8, 8)
        self.conv1 = nn.Conv2d(3, channels[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(layers, channels[0], channels[1], 1)
        self.block2 = NetworkBlock(layers, channels[1], channels[2], 2)
        self.block3 = NetworkBlock(layers, channels[2], channels[3], 2)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(channels[3], num_classes)
        he_init(self, linear="bias")

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(images))))
        return self.relu(self.bn1(x))

    def forward_head(self, feature_map: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.avg_pool2d(feature_map, 8), 1))
