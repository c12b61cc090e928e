"""A FitNets-style hint (Romero et al., 2015) through a trainable regressor, the tutorial's third method."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdistill.config import Weight
from kdistill.methods import Method, MethodParams
from kdistill.objectives import Objective, Shapes, Term, cross_entropy


class FeatureRegressorLoss(nn.Module):
    """MSE between a conv regressor of the student's feature map and the teacher's.

    The regressor is part of the loss, not of the student: it trains with the student and is
    dropped afterwards, so the deployed student keeps the tutorial's parameter count.
    """

    def __init__(self, student_channels: int, teacher_channels: int) -> None:
        super().__init__()
        self.regressor = nn.Conv2d(student_channels, teacher_channels, kernel_size=3, padding=1)

    def forward(self, student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(self.regressor(student_features).float(), teacher_features.float())


class Params(MethodParams):
    feature_map_weight: Weight = 0.25
    ce_loss_weight: Weight = 0.75


def objective(params: Params, shapes: Shapes) -> Objective:
    return Objective([
        Term("feature_map", params.feature_map_weight, FeatureRegressorLoss(shapes.student[0], shapes.teacher[0]),
             ("student_features", "teacher_features")),
        cross_entropy(params.ce_loss_weight),
    ])


METHOD = Method(
    name="distill_regressor",
    label="Student, CE + regressor",
    summary="LightNN with cross-entropy + MSE of a trainable regressor against the teacher's feature map",
    params=Params,
    objective=objective,
    reference_accuracy=70.61,
)
