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

from pydantic import Field

from kdistill.methods.method import Method, MethodParams, PositiveFloat, Weight


class Params(MethodParams):
    T: PositiveFloat = 4.0
    alpha: Weight = 1.0  # TCKD weight
    beta: Weight = 8.0  # NCKD weight
    ce_loss_weight: Weight = 1.0
    warmup_epochs: float = Field(default=1.0, ge=0)


METHOD = Method(
    name="distill_dkd",
    label="Student, CE + DKD",
    summary="The student with cross-entropy + decoupled KD (target-class term alpha, non-target term beta, temperature T)",
    params=Params,
    losses=f"{__package__}.losses",
)
