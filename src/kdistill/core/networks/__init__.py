"""Every network ``params.yaml`` can name, built by one function: ``build_model(name, num_classes)``.

The names and their arguments are ``kdistill.core.catalog``'s; each family is defined once, over
depth and width, in a module of its own.
"""

from __future__ import annotations

import torch
from torch import nn

from kdistill.core.catalog import NETWORKS
from kdistill.core.networks.base import Network
from kdistill.core.networks.mobilenet import MobileNetV2
from kdistill.core.networks.resnet import ResNet
from kdistill.core.networks.shufflenet import ShuffleNetV1, ShuffleNetV2
from kdistill.core.networks.tutorial import DeepNN, LightNN
from kdistill.core.networks.vgg import VGG
from kdistill.core.networks.wrn import WideResNet

FAMILIES: dict[str, type[Network]] = {family.__name__: family for family in (
    DeepNN, LightNN, ResNet, WideResNet, VGG, MobileNetV2, ShuffleNetV1, ShuffleNetV2)}

__all__ = ["FAMILIES", "NETWORKS", "DeepNN", "LightNN", "Network", "build_model", "count_parameters",
           "feature_shape"]


def build_model(name: str, num_classes: int = 10) -> Network:
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; known: {', '.join(NETWORKS)}")
    entry = NETWORKS[name]
    model = FAMILIES[entry.family](**entry.arguments, num_classes=num_classes)
    model.name = name
    return model


def feature_shape(name: str) -> tuple[int, int, int]:
    """A network's declared last feature map (C, H, W), without allocating its weights."""
    with torch.device("meta"):
        return tuple(build_model(name).feature_shape)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
