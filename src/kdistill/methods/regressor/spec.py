"""A FitNets-style hint (Romero et al., 2015) through a trainable regressor, the tutorial's third method."""

from __future__ import annotations

from kdistill.methods.method import Method, MethodParams, Weight


class Params(MethodParams):
    feature_map_weight: Weight = 0.25
    ce_loss_weight: Weight = 0.75


METHOD = Method(
    name="distill_regressor",
    label="Student, CE + regressor",
    summary="LightNN with cross-entropy + MSE of a trainable regressor against the teacher's feature map",
    params=Params,
    losses=f"{__package__}.losses",
    reference_accuracy=70.61,
)
