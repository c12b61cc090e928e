"""A FitNets-style hint (Romero et al., 2015) through a trainable regressor, the tutorial's third method.

Between last maps of one size (the tutorial's 16x8x8 student and 32x8x8 teacher) the regressor is
the tutorial's 3x3 convolution. Between maps of different sizes it is FitNets' ``ConvReg`` as
RepDistiller and mdistiller build it: a strided, transposed or valid convolution that brings the
student's map to the teacher's size, then batch norm and ReLU.
"""

from __future__ import annotations

from kdistill.methods.method import Method, MethodParams, Weight


class Params(MethodParams):
    feature_map_weight: Weight = 0.25
    ce_loss_weight: Weight = 0.75


METHOD = Method(
    name="distill_regressor",
    label="Student, CE + regressor",
    summary="The student with cross-entropy + MSE of a trainable regressor against the teacher's feature map",
    params=Params,
    losses=f"{__package__}.losses",
    reference_accuracy=70.61,
)
