"""Training objectives: each returns named, unweighted loss terms; the engine sums them by weight.

The loss functions work on plain tensors (so they can be checked against golden values); the
objectives decide which student and teacher outputs feed which loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kdistill.config import Params

TEACHER_LOGITS = "logits"
TEACHER_FEATURES = "features"


@dataclass(frozen=True)
class StudentOutput:
    logits: torch.Tensor
    feature_map: torch.Tensor


@dataclass(frozen=True)
class Batch:
    labels: torch.Tensor
    teacher_logits: torch.Tensor | None = None
    teacher_feature_map: torch.Tensor | None = None


class SoftTargetLoss(nn.Module):
    """Hinton et al.'s KL(teacher_T || student_T), scaled by T².

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
        kl = F.kl_div(student_log_p, teacher_log_p, log_target=True, reduction="batchmean")
        return kl * T**2


def pooled_hidden_representation(feature_map: torch.Tensor, size: int) -> torch.Tensor:
    """Flatten a feature map and average-pool adjacent values down to ``size`` (2048 -> 1024)."""
    flat = torch.flatten(feature_map, 1)
    if flat.shape[1] == size:
        return flat
    if flat.shape[1] % size:
        raise ValueError(f"cannot pool {flat.shape[1]} features to {size}")
    return F.avg_pool1d(flat.unsqueeze(1), flat.shape[1] // size).squeeze(1)


class HiddenCosineLoss(nn.Module):
    """1 - cosine similarity of the flattened hidden representations (CosineEmbeddingLoss, y=1)."""

    def forward(self, student_feature_map: torch.Tensor, teacher_feature_map: torch.Tensor) -> torch.Tensor:
        student = torch.flatten(student_feature_map, 1).float()
        teacher = pooled_hidden_representation(teacher_feature_map, student.shape[1]).float()
        target = torch.ones(student.shape[0], device=student.device)
        return F.cosine_embedding_loss(student, teacher, target)


class FeatureRegressorLoss(nn.Module):
    """FitNets-style hint: a trainable conv maps the student's map onto the teacher's; MSE between.

    The regressor is part of the loss, not of the student: it trains with the student and is
    dropped afterwards, so the deployed student keeps the tutorial's parameter count.
    """

    def __init__(self, student_channels: int = 16, teacher_channels: int = 32) -> None:
        super().__init__()
        self.regressor = nn.Conv2d(student_channels, teacher_channels, kernel_size=3, padding=1)

    def forward(self, student_feature_map: torch.Tensor, teacher_feature_map: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(self.regressor(student_feature_map).float(), teacher_feature_map.float())


class Objective(nn.Module):
    """Named loss terms and their weights; ``forward`` returns the weighted total and the terms."""

    teacher_outputs: frozenset[str] = frozenset()

    def __init__(self, weights: dict[str, float]) -> None:
        super().__init__()
        self.weights = dict(weights)

    def terms(self, student: StudentOutput, batch: Batch) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward(self, student: StudentOutput, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        terms = self.terms(student, batch)
        total = sum(self.weights[name] * value for name, value in terms.items())
        return total, terms


class CrossEntropyObjective(Objective):
    def __init__(self) -> None:
        super().__init__({"ce": 1.0})

    def terms(self, student: StudentOutput, batch: Batch) -> dict[str, torch.Tensor]:
        return {"ce": F.cross_entropy(student.logits.float(), batch.labels)}


class DistillationObjective(Objective):
    """Cross-entropy on the labels plus one term matching a teacher output (logits or features)."""

    def __init__(self, name: str, loss: nn.Module, reads: str, weight: float, ce_loss_weight: float) -> None:
        if reads not in (TEACHER_LOGITS, TEACHER_FEATURES):
            raise ValueError(f"reads must be {TEACHER_LOGITS!r} or {TEACHER_FEATURES!r}, got {reads!r}")
        super().__init__({name: weight, "ce": ce_loss_weight})
        self.name = name
        self.loss = loss
        self.teacher_outputs = frozenset({reads})

    def terms(self, student: StudentOutput, batch: Batch) -> dict[str, torch.Tensor]:
        if TEACHER_LOGITS in self.teacher_outputs:
            matched = self.loss(student.logits, batch.teacher_logits)
        else:
            matched = self.loss(student.feature_map, batch.teacher_feature_map)
        return {self.name: matched, "ce": F.cross_entropy(student.logits.float(), batch.labels)}


def build_objective(stage: str, params: Params) -> Objective:
    if stage in ("train_teacher", "train_student_ce"):
        return CrossEntropyObjective()
    if stage == "distill_kd":
        kd = params.distill_kd
        return DistillationObjective(
            "soft_target", SoftTargetLoss(kd.T), TEACHER_LOGITS, kd.soft_target_loss_weight, kd.ce_loss_weight
        )
    if stage == "distill_cosine":
        cos = params.distill_cosine
        return DistillationObjective(
            "hidden_rep", HiddenCosineLoss(), TEACHER_FEATURES, cos.hidden_rep_loss_weight, cos.ce_loss_weight
        )
    if stage == "distill_regressor":
        reg = params.distill_regressor
        return DistillationObjective(
            "feature_map", FeatureRegressorLoss(), TEACHER_FEATURES, reg.feature_map_weight, reg.ce_loss_weight
        )
    raise ValueError(f"no objective for stage {stage!r}")
