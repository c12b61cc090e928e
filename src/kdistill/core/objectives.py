"""Objectives: a weighted sum of named loss terms (torchdistill-style), summed by the one loop.

A term names the values its loss reads (``INPUTS``); the loop supplies them for each batch. An
objective is just a list of terms, so methods combine (KD + hint) without a new class, and the
teacher outputs an objective needs follow from its terms.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

# The values a loss can read: the labels, the student's and (cached) teacher's logits and last
# feature maps, and training progress in epochs (0.5 = half-way through the first epoch).
INPUTS = ("labels", "student_logits", "student_features", "teacher_logits", "teacher_features", "progress")
TEACHER_PREFIX = "teacher_"


class Shapes(NamedTuple):
    """The last feature map's (C, H, W) of student and teacher, from the networks' declarations."""

    student: tuple[int, int, int]
    teacher: tuple[int, int, int]


@dataclass(frozen=True)
class Term:
    name: str
    weight: float
    loss: nn.Module  # called with the values named by ``inputs``, in that order
    inputs: tuple[str, ...]
    # Linear warm-up of this term's weight over the first ``warmup_epochs`` (fractional) epochs.
    warmup_epochs: float = 0.0

    def __post_init__(self) -> None:
        unknown = [name for name in self.inputs if name not in INPUTS]
        if unknown:
            raise ValueError(f"term {self.name!r} reads unknown inputs {unknown}; known: {list(INPUTS)}")

    def scale(self, progress: float) -> float:
        if self.warmup_epochs <= 0:
            return self.weight
        return self.weight * min(progress / self.warmup_epochs, 1.0)


class Objective(nn.Module):
    """``forward`` returns the weighted total and each unweighted term by name.

    A module, so that trainable parts of a loss (the hint regressor) are optimized, moved and
    checkpointed with it.
    """

    def __init__(self, terms: Sequence[Term]) -> None:
        super().__init__()
        names = [term.name for term in terms]
        if not terms or len(set(names)) != len(names):
            raise ValueError(f"an objective needs terms with distinct names, got {names}")
        self.terms = tuple(terms)
        self.losses = nn.ModuleDict({term.name: term.loss for term in terms})

    @property
    def weights(self) -> dict[str, float]:
        return {term.name: term.weight for term in self.terms}

    def neutral_params(self) -> dict[str, float]:
        """Weights under names every method shares, so MLflow's compare view lines the methods up."""
        distill = [t.weight for t in self.terms if any(name.startswith(TEACHER_PREFIX) for name in t.inputs)]
        return {"ce_loss_weight": sum(t.weight for t in self.terms if t.name == "ce"),
                "distill_loss_weight": sum(distill)}

    @property
    def teacher_outputs(self) -> frozenset[str]:
        """Which cached teacher outputs (``logits``, ``features``) the terms read."""
        return frozenset(name.removeprefix(TEACHER_PREFIX) for term in self.terms for name in term.inputs
                         if name.startswith(TEACHER_PREFIX))

    def forward(self, values: Mapping[str, torch.Tensor | float]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        progress = float(values.get("progress", 0.0))
        terms = {term.name: self.losses[term.name](*(values[name] for name in term.inputs)) for term in self.terms}
        total = sum(term.scale(progress) * terms[term.name] for term in self.terms)
        return total, terms


class CrossEntropyLoss(nn.Module):
    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels)  # in fp32 also under bf16 autocast


def cross_entropy(weight: float = 1.0) -> Term:
    return Term("ce", weight, CrossEntropyLoss(), ("student_logits", "labels"))
