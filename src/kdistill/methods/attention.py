"""Attention Transfer (Zagoruyko & Komodakis, ICLR 2017) on the last feature maps.

Each map (N, C, H, W) becomes an attention map: the channel mean of its squared activations
(p = 2), flattened to H*W values and L2-normalized per image. The loss is the squared difference of
student and teacher attention maps averaged over images and positions, weighted by ``beta``
(1000, the widely used CIFAR setting of the authors' code and mdistiller). Both networks' last
maps are 8x8, so no resizing is needed; the channel counts (16 vs 32) may differ.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdistill.config import Weight
from kdistill.methods import Method, MethodParams
from kdistill.objectives import Objective, Shapes, Term, cross_entropy


def attention_map(features: torch.Tensor) -> torch.Tensor:
    return F.normalize(features.float().pow(2).mean(dim=1).flatten(1), dim=1)


class AttentionTransferLoss(nn.Module):
    def forward(self, student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
        return (attention_map(student_features) - attention_map(teacher_features)).pow(2).mean()


class Params(MethodParams):
    beta: Weight = 1000.0
    ce_loss_weight: Weight = 1.0


def objective(params: Params, shapes: Shapes) -> Objective:
    if shapes.student[1:] != shapes.teacher[1:]:
        raise ValueError(f"attention transfer needs maps of one spatial size, got {shapes.student} and {shapes.teacher}")
    return Objective([
        Term("attention", params.beta, AttentionTransferLoss(), ("student_features", "teacher_features")),
        cross_entropy(params.ce_loss_weight),
    ])


METHOD = Method(
    name="distill_attention",
    label="Student, CE + attention transfer",
    summary="LightNN with cross-entropy + attention transfer on the last feature maps (beta = 1000)",
    params=Params,
    objective=objective,
)
