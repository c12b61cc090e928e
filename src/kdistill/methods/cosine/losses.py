"""Cosine matching's loss: the student's hidden representation against the teacher's."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from kdistill.core.objectives import Objective, Shapes, Term, cross_entropy

if TYPE_CHECKING:
    from kdistill.methods.cosine.spec import Params


def pooled(feature_map: torch.Tensor, size: int) -> torch.Tensor:
    """Flatten a feature map and average adjacent values down to ``size`` (the teacher's 2048 -> 1024)."""
    flat = torch.flatten(feature_map, 1)
    if flat.shape[1] == size:
        return flat
    if flat.shape[1] % size:
        raise ValueError(f"cannot pool {flat.shape[1]} features to {size}")
    return F.avg_pool1d(flat.unsqueeze(1), flat.shape[1] // size).squeeze(1)


class HiddenCosineLoss(nn.Module):
    """1 - cosine similarity of the flattened representations (CosineEmbeddingLoss with target 1)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
        student = torch.flatten(student_features, 1).float()
        teacher = pooled(teacher_features.float(), self.size)
        return (1 - F.cosine_similarity(student, teacher, dim=1)).mean()


def objective(params: Params, shapes: Shapes) -> Objective:
    return Objective([
        Term("hidden_rep", params.hidden_rep_loss_weight, HiddenCosineLoss(math.prod(shapes.student)),
             ("student_features", "teacher_features")),
        cross_entropy(params.ce_loss_weight),
    ])
