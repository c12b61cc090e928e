"""Cosine matching of hidden representations, the tutorial's second method."""

from __future__ import annotations

from kdistill.methods.method import Method, MethodParams, Weight


class Params(MethodParams):
    hidden_rep_loss_weight: Weight = 0.25
    ce_loss_weight: Weight = 0.75


METHOD = Method(
    name="distill_cosine",
    label="Student, CE + cosine",
    summary="LightNN with cross-entropy + cosine loss on hidden representations",
    params=Params,
    losses=f"{__package__}.losses",
    reference_accuracy=70.12,
)
