"""DKD's two loss terms: the target-class and the non-target-class KL."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from kdistill.core.objectives import Objective, Shapes, Term, cross_entropy

if TYPE_CHECKING:
    from kdistill.methods.dkd.spec import Params


def _binary_log_probs(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """log [p_target, 1 - p_target] of softmax(logits), computed stably in log space."""
    log_p = F.log_softmax(logits, dim=1)
    # A gather, not masked_select: the output's size is known without reading the mask on the host,
    # so on a GPU the step does not wait for the device.
    log_target = log_p.gather(1, target.unsqueeze(1)).squeeze(1)
    is_target = F.one_hot(target, logits.shape[1]).bool()
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


def objective(params: Params, shapes: Shapes) -> Objective:
    reads = ("student_logits", "teacher_logits", "labels")
    return Objective([
        Term("tckd", params.alpha, TargetClassLoss(params.T), reads, warmup_epochs=params.warmup_epochs),
        Term("nckd", params.beta, NonTargetClassLoss(params.T), reads, warmup_epochs=params.warmup_epochs),
        cross_entropy(params.ce_loss_weight),
    ])
