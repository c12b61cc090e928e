"""Attention Transfer (Zagoruyko & Komodakis, ICLR 2017) on the last feature maps.

Each map (N, C, H, W) becomes an attention map: the channel mean of its squared activations
(p = 2), flattened to H*W values and L2-normalized per image. The loss is the squared difference of
student and teacher attention maps averaged over images and positions, weighted by ``beta``
(1000, the widely used CIFAR setting of the authors' code and mdistiller). Channel counts may
differ. Maps of different sizes (a ResNet's 8x8 against a ShuffleNet's 4x4) meet at the smaller:
the larger is average-pooled to it first, as mdistiller's AT does; the tutorial's pair has equal
8x8 maps and is computed unchanged.
"""

from __future__ import annotations

from kdistill.methods.method import Method, MethodParams, Weight


class Params(MethodParams):
    beta: Weight = 1000.0
    ce_loss_weight: Weight = 1.0


METHOD = Method(
    name="distill_attention",
    label="Student, CE + attention transfer",
    summary="The student with cross-entropy + attention transfer on the last feature maps (beta = 1000)",
    params=Params,
    losses=f"{__package__}.losses",
)
