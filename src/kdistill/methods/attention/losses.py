"""Attention transfer's loss: attention maps of the last feature maps."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from kdistill.core.objectives import Objective, Shapes, Term, cross_entropy

if TYPE_CHECKING:
    from kdistill.methods.attention.spec import Params


def attention_map(features: torch.Tensor) -> torch.Tensor:
    return F.normalize(features.float().pow(2).mean(dim=1).flatten(1), dim=1)


class AttentionTransferLoss(nn.Module):
    """Maps of different sizes meet at the smaller: the larger is average-pooled to it first (mdistiller's AT)."""

    def forward(self, student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
        student_size, teacher_size = student_features.shape[2:], teacher_features.shape[2:]
        if student_size > teacher_size:
            student_features = F.adaptive_avg_pool2d(student_features, teacher_size)
        elif teacher_size > student_size:
            teacher_features = F.adaptive_avg_pool2d(teacher_features, student_size)
        return (attention_map(student_features) - attention_map(teacher_features)).pow(2).mean()


def objective(params: Params, shapes: Shapes) -> Objective:
    return Objective([
        Term("attention", params.beta, AttentionTransferLoss(), ("student_features", "teacher_features")),
        cross_entropy(params.ce_loss_weight),
    ])
