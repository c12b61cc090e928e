"""The networks ``params.yaml`` can name, as plain data: the control plane validates names without torch.

Each name maps to its family (a class in ``kdistill.core.networks``) and the arguments that make
it. The CIFAR networks are those of the CRD benchmark (Tian, Krishnan & Isola, ICLR 2020), as
RepDistiller's and mdistiller's ``models/`` define them, under the same names.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class Entry(NamedTuple):
    family: str  # a class of kdistill.core.networks
    arguments: dict[str, Any]


def _resnet(depth: int, widths: tuple[int, int, int, int]) -> Entry:
    return Entry("ResNet", {"depth": depth, "widths": widths})


NARROW, WIDE = (16, 16, 32, 64), (32, 64, 128, 256)

NETWORKS: dict[str, Entry] = {
    # The tutorial's teacher and student.
    "DeepNN": Entry("DeepNN", {}),
    "LightNN": Entry("LightNN", {}),
    # The CRD benchmark's.
    "resnet8": _resnet(8, NARROW),
    "resnet20": _resnet(20, NARROW),
    "resnet32": _resnet(32, NARROW),
    "resnet56": _resnet(56, NARROW),
    "resnet110": _resnet(110, NARROW),
    "resnet8x4": _resnet(8, WIDE),
    "resnet32x4": _resnet(32, WIDE),
    "wrn_16_2": Entry("WideResNet", {"depth": 16, "widen_factor": 2}),
    "wrn_40_1": Entry("WideResNet", {"depth": 40, "widen_factor": 1}),
    "wrn_40_2": Entry("WideResNet", {"depth": 40, "widen_factor": 2}),
    "vgg8": Entry("VGG", {"stages": ((64,), (128,), (256,), (512,), (512,))}),
    "vgg13": Entry("VGG", {"stages": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512))}),
    "mobile_half": Entry("MobileNetV2", {"expansion": 6, "width_mult": 0.5}),
    "ShuffleV1": Entry("ShuffleNetV1", {"widths": (240, 480, 960), "blocks": (4, 8, 4), "groups": 3}),
    "ShuffleV2": Entry("ShuffleNetV2", {"widths": (116, 232, 464, 1024), "blocks": (3, 7, 3)}),
}

# The literature trains these students at a fifth of the others' learning rate (CRD, mdistiller).
LOW_LR_FAMILIES = frozenset({"MobileNetV2", "ShuffleNetV1", "ShuffleNetV2"})
