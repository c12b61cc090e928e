"""The hint's loss: a trainable regressor on the student's map, MSE against the teacher's."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from kdistill.core.objectives import Objective, Shapes, Term, cross_entropy

if TYPE_CHECKING:
    from kdistill.methods.regressor.spec import Params


def regressor(student: tuple[int, int, int], teacher: tuple[int, int, int]) -> nn.Module:
    """The tutorial's 3x3 convolution between maps of one size; else FitNets' ``ConvReg`` as RepDistiller builds it.

    ``ConvReg`` (RepDistiller ``models/util.py``, mdistiller ``_common.py``): a strided 3x3
    convolution from twice the teacher's size, a transposed 4x4 one from half of it, a valid
    convolution from any larger size; then batch norm and ReLU.
    """
    (s_c, s_h, s_w), (t_c, t_h, t_w) = student, teacher
    if (s_h, s_w) == (t_h, t_w):
        return nn.Conv2d(s_c, t_c, kernel_size=3, padding=1)
    if s_h == 2 * t_h:
        conv: nn.Module = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
    elif 2 * s_h == t_h:
        conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
    elif s_h > t_h:
        conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
    else:
        raise ValueError(f"the hint regressor maps the student's {s_h}x{s_w} map to the teacher's {t_h}x{t_w} only "
                         "from a larger map or from half its size")
    return nn.Sequential(conv, nn.BatchNorm2d(t_c), nn.ReLU(inplace=True))


class FeatureRegressorLoss(nn.Module):
    """MSE between a conv regressor of the student's feature map and the teacher's.

    The regressor is part of the loss, not of the student: it trains with the student and is
    dropped afterwards, so the deployed student keeps its own parameter count.
    """

    def __init__(self, student: tuple[int, int, int], teacher: tuple[int, int, int]) -> None:
        super().__init__()
        self.regressor = regressor(student, teacher)

    def forward(self, student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(self.regressor(student_features).float(), teacher_features.float())


def objective(params: Params, shapes: Shapes) -> Objective:
    return Objective([
        Term("feature_map", params.feature_map_weight, FeatureRegressorLoss(shapes.student, shapes.teacher),
             ("student_features", "teacher_features")),
        cross_entropy(params.ce_loss_weight),
    ])
