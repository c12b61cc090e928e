"""Knowledge distillation with soft targets (Hinton, Vinyals & Dean, 2015), as in the tutorial."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdistill.config import PositiveFloat, Weight
from kdistill.methods import Method, MethodParams
from kdistill.objectives import Objective, Shapes, Term, cross_entropy


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


class Params(MethodParams):
    T: PositiveFloat = 2.0
    soft_target_loss_weight: Weight = 0.25
    ce_loss_weight: Weight = 0.75


def objective(params: Params, shapes: Shapes) -> Objective:
    return Objective([
        Term("soft_target", params.soft_target_loss_weight, SoftTargetLoss(params.T),
             ("student_logits", "teacher_logits")),
        cross_entropy(params.ce_loss_weight),
    ])


METHOD = Method(
    name="distill_kd",
    label="Student, CE + KD",
    summary="LightNN with cross-entropy + soft-target KL (temperature T, scaled by T^2)",
    params=Params,
    objective=objective,
    reference_accuracy=70.49,
)
