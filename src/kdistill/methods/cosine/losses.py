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
    """Flatten a feature map and average adjacent values down to ``size``.

    The tutorial's teacher has twice the student's values (2048 -> 1024): a window of 2. Where the
    ratio is whole that stays a plain average over equal windows; otherwise adaptive pooling
    averages over windows as equal as the lengths allow.
    """
    flat = torch.flatten(feature_map, 1)
    if flat.shape[1] == size:
        return flat
    if flat.shape[1] % size == 0:
        return F.avg_pool1d(flat.unsqueeze(1), flat.shape[1] // size).squeeze(1)
    return F.adaptive_avg_pool1d(flat.unsqueeze(1), size).squeeze(1)


class HiddenCosineLoss(nn.Module):
    """1 - cosine similarity of the flattened representations (CosineEmbeddingLoss with target 1).

    The longer representation is pooled to the shorter's length: the teacher's, as in the
    tutorial, or the student's where the student's last map holds more values.
    """

    def __init__(self, student_size: int, teacher_size: int) -> None:
        super().__init__()
        self.size = min(student_size, teacher_size)

    def forward(self, student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
        student = pooled(student_features.float(), self.size)
        teacher = pooled(teacher_features.float(), self.size)
        return (1 - F.cosine_similarity(student, teacher, dim=1)).mean()


def objective(params: Params, shapes: Shapes) -> Objective:
    return Objective([
        Term("hidden_rep", params.hidden_rep_loss_weight,
             HiddenCosineLoss(math.prod(shapes.student), math.prod(shapes.teacher)),
             ("student_features", "teacher_features")),
        cross_entropy(params.ce_loss_weight),
    ])
