"""The hint's loss: a trainable regressor on the student's map, MSE against the teacher's."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from kdistill.core.objectives import Objective, Shapes, Term, cross_entropy

if TYPE_CHECKING:
    from kdistill.methods.regressor.spec import Params


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


def objective(params: Params, shapes: Shapes) -> Objective:
    return Objective([
        Term("feature_map", params.feature_map_weight, FeatureRegressorLoss(shapes.student[0], shapes.teacher[0]),
             ("student_features", "teacher_features")),
        cross_entropy(params.ce_loss_weight),
    ])
