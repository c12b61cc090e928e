"""The tutorial's two networks: a convolutional feature extractor, then an MLP on the flattened map.

Where the tutorial applies a ReLU and then max-pools, these networks pool first: the same outputs
and gradients, bit for bit (the max of ReLUs is the ReLU of the max, and both send the gradient to
the same element), with the ReLU and its backward on a quarter of the values. A test checks them against the
tutorial's order.
"""

from __future__ import annotations

import torch
from torch import nn

from kdistill.core.networks.base import Network


class ConvClassifier(Network):
    features: nn.Sequential
    classifier: nn.Sequential

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)

    def forward_head(self, feature_map: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(feature_map, 1))


class DeepNN(ConvClassifier):
    """The teacher: 4 conv layers, 1,186,986 parameters for 10 classes."""

    name = "DeepNN"
    feature_shape = (32, 8, 8)

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.features = nn.Sequential(
            nn.Conv2d(3, 128, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(128, 64, kernel_size=3, padding=1),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, 64, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(64, 32, kernel_size=3, padding=1),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.ReLU(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(2048, 512), nn.ReLU(), nn.Dropout(0.1), nn.Linear(512, num_classes)
        )


class LightNN(ConvClassifier):
    """The student: 2 conv layers, 267,738 parameters for 10 classes."""

    name = "LightNN"
    feature_shape = (16, 8, 8)

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, kernel_size=3, padding=1),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.ReLU(),
            nn.Conv2d(16, 16, kernel_size=3, padding=1),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.ReLU(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(1024, 256), nn.ReLU(), nn.Dropout(0.1), nn.Linear(256, num_classes)
        )
