"""Knowledge distillation with soft targets (Hinton, Vinyals & Dean, 2015), as in the tutorial."""

from __future__ import annotations

from kdistill.methods.method import Method, MethodParams, PositiveFloat, Weight


class Params(MethodParams):
    T: PositiveFloat = 2.0
    soft_target_loss_weight: Weight = 0.25
    ce_loss_weight: Weight = 0.75


METHOD = Method(
    name="distill_kd",
    label="Student, CE + KD",
    summary="The student with cross-entropy + soft-target KL (temperature T, scaled by T^2)",
    params=Params,
    losses=f"{__package__}.losses",
    reference_accuracy=70.49,
)
