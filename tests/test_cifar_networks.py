"""The CRD benchmark's CIFAR networks: the references' layers, names, initialization and outputs.

The reference figures below come from running the definitions in RepDistiller's ``models/``
(resnet.py, wrn.py, vgg.py, mobilenetv2.py, ShuffleNetv1.py, ShuffleNetv2.py; mdistiller's
``mdistiller/models/cifar/`` holds the same) for 100 classes:
- the parameter count;
- a digest of the state dict's names and shapes, in order: equal digests mean that a state dict
  saved by that code loads here with ``strict=True``;
- two logits of a freshly built network (``torch.manual_seed(1)`` before building, in training
  mode) on ``torch.manual_seed(2); torch.randn(4, 3, 32, 32)``: the same initialization and the
  same computation.
"""

from __future__ import annotations

import hashlib

import pytest
import torch

from kdistill.core.catalog import NETWORKS
from kdistill.core.networks import build_model, count_parameters, feature_shape

REFERENCE = {
    "resnet8": (83892, "ac039310c98e68d8", (0.341252, -0.0349165)),  # resnet.py
    "resnet20": (278324, "48702a589dcc22ab", (-0.141095, 0.826918)),
    "resnet32": (472756, "e488f60b23a4db1c", (-0.127329, 0.0922976)),
    "resnet56": (861620, "1d3465ca54c565c3", (1.56757, 0.416248)),
    "resnet110": (1736564, "932a055377884f91", (0.556822, -0.423619)),
    "resnet8x4": (1233540, "4b191cfaf50907ea", (-0.0533088, 0.0610887)),
    "resnet32x4": (7433860, "670cd82105052059", (0.115001, -0.175327)),
    "wrn_16_2": (703284, "28fc720be1913fd2", (0.125369, 0.0134939)),  # wrn.py
    "wrn_40_1": (569780, "f8967803e64be646", (0.0538749, -0.39647)),
    "wrn_40_2": (2255156, "029bbe2cbcd6d721", (-0.372895, -0.103747)),
    "vgg8": (3965028, "792c36c85a183c23", (-0.0422642, 0.041258)),  # vgg.py, vgg8_bn
    "vgg13": (9462180, "adbafd0e22ce9038", (0.0825745, 0.00239997)),  # vgg.py, vgg13_bn
    "mobile_half": (812836, "67dd5adb2196190e", (-0.185462, 0.176464)),  # mobilenetv2.py
    "ShuffleV1": (949258, "542ef1e4af09fe27", (-0.702681, 0.93313)),  # ShuffleNetv1.py
    "ShuffleV2": (1355528, "db138f467cd82af3", (0.336851, 0.136636)),  # ShuffleNetv2.py
}


def _names_digest(model: torch.nn.Module) -> str:
    lines = "\n".join(f"{key}:{tuple(value.shape)}" for key, value in model.state_dict().items())
    return hashlib.sha256(lines.encode()).hexdigest()[:16]


def test_the_catalog_holds_the_tutorials_networks_and_every_crd_network():
    assert set(NETWORKS) == {"DeepNN", "LightNN", *REFERENCE}


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_each_network_has_the_references_parameters_names_initialization_and_outputs(name):
    parameters, digest, logits = REFERENCE[name]
    torch.manual_seed(1)
    model = build_model(name, num_classes=100).train()
    assert count_parameters(model) == parameters
    assert _names_digest(model) == digest
    torch.manual_seed(2)
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        out = model(images)
    assert (out[0, 0].item(), out[1, 99].item()) == pytest.approx(logits, rel=2e-4, abs=1e-6)


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_declared_feature_shapes_and_the_split_forward_are_what_each_network_computes(name):
    model = build_model(name, num_classes=7).eval()
    images = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        features = model.forward_features(images)
        logits = model.forward_head(features)
        assert torch.equal(logits, model(images))
    assert tuple(features.shape) == (2, *model.feature_shape) == (2, *feature_shape(name))
    assert tuple(logits.shape) == (2, 7)
    assert model.config() == {"name": name, "num_classes": 7}


def test_an_unknown_network_is_refused_with_the_known_names():
    with pytest.raises(ValueError, match=r"unknown network 'resnet9'.*resnet8, resnet20"):
        build_model("resnet9")
