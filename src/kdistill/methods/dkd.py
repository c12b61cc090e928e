"""Decoupled Knowledge Distillation (Zhao, Cui, Song, Qiu & Liang, CVPR 2022).

KD's KL splits into a target-class term (TCKD: the binary distribution "target vs. the rest") and
a non-target-class term (NCKD: the distribution among the other classes); DKD weights them
separately (alpha, beta), each at temperature T and scaled by T² like KD.

Defaults are the paper's CIFAR-100 setting (CE weight 1, alpha 1, beta 8, T 4). The paper ramps
the distillation terms up linearly over its first 20 of 240 epochs (8.3% of training); the same
share of this project's 10 epochs is 0.83 epochs, rounded to ``warmup_epochs: 1``. The ramp
advances per step, not per epoch: an epoch-wise ramp over one epoch would be no ramp at all.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from kdistill.config import PositiveFloat, Weight
from kdistill.methods import Method, MethodParams
from kdistill.objectives import Objective, Shapes, Term, cross_entropy


def _binary_log_probs(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """log [p_target, 1 - p_target] of softmax(logits), computed stably in log space."""
    log_p = F.log_softmax(logits, dim=1)
    is_target = F.one_hot(target, logits.shape[1]).bool()
    log_target = log_p.masked_select(is_target)
    log_rest = log_p.masked_fill(is_target, float("-inf")).logsumexp(dim=1)
    return torch.stack([log_target, log_rest], dim=1)


class TargetClassLoss(nn.Module):
    """TCKD: KL between teacher and student binary (target / non-target) distributions, times T²."""

    def __init__(self, temperature: float) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        T = self.temperature
        student = _binary_log_probs(student_logits.float() / T, labels)
        teacher = _binary_log_probs(teacher_logits.float() / T, labels)
        return F.kl_div(student, teacher, log_target=True, reduction="batchmean") * T**2


class NonTargetClassLoss(nn.Module):
    """NCKD: KL between teacher and student distributions over the non-target classes, times T²."""

    def __init__(self, temperature: float) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        T = self.temperature
        is_target = F.one_hot(labels, student_logits.shape[1]).bool()
        # The target class gets probability 0 on both sides; its KL contribution is 0 * log(0/0) := 0.
        student = F.log_softmax(student_logits.float() / T - 1e9 * is_target, dim=1)
        teacher = F.log_softmax(teacher_logits.float() / T - 1e9 * is_target, dim=1)
        pointwise = teacher.exp() * (teacher - student)
        return pointwise.masked_fill(is_target, 0.0).sum() / len(labels) * T**2


class Params(MethodParams):
    T: PositiveFloat = 4.0
    alpha: Weight = 1.0  # TCKD weight
    beta: Weight = 8.0  # NCKD weight
    ce_loss_weight: Weight = 1.0
    warmup_epochs: float = Field(default=1.0, ge=0)


def objective(params: Params, shapes: Shapes) -> Objective:
    reads = ("student_logits", "teacher_logits", "labels")
    return Objective([
        Term("tckd", params.alpha, TargetClassLoss(params.T), reads, warmup_epochs=params.warmup_epochs),
        Term("nckd", params.beta, NonTargetClassLoss(params.T), reads, warmup_epochs=params.warmup_epochs),
        cross_entropy(params.ce_loss_weight),
    ])


METHOD = Method(
    name="distill_dkd",
    label="Student, CE + DKD",
    summary="LightNN with cross-entropy + decoupled KD (target-class term alpha, non-target term beta, temperature T)",
    params=Params,
    objective=objective,
)
