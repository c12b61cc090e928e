"""Soft-target KD's loss (Hinton et al., 2015)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from kdistill.core.objectives import Objective, Shapes, Term, cross_entropy

if TYPE_CHECKING:
    from kdistill.methods.kd.spec import Params


class SoftTargetLoss(nn.Module):
    """KL(teacher_T || student_T) over temperature-softened outputs, scaled by T².

    The T² factor keeps the soft-target gradients' magnitude independent of T, so that changing
    T does not silently re-weight this term against cross-entropy.
    """

    def __init__(self, temperature: float) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        T = self.temperature
        student_log_p = F.log_softmax(student_logits.float() / T, dim=-1)
        teacher_log_p = F.log_softmax(teacher_logits.float() / T, dim=-1)
        return F.kl_div(student_log_p, teacher_log_p, log_target=True, reduction="batchmean") * T**2


def objective(params: Params, shapes: Shapes) -> Objective:
    return Objective([
        Term("soft_target", params.soft_target_loss_weight, SoftTargetLoss(params.T),
             ("student_logits", "teacher_logits")),
        cross_entropy(params.ce_loss_weight),
    ])
