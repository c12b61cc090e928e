"""Cosine matching of hidden representations, the tutorial's second method.

The tutorial flattens both last maps and average-pools the teacher's 2048 values to the student's
1024 (windows of 2). For any pair the longer representation is pooled to the shorter's length the
same way: equal windows where the ratio is whole, adaptive pooling where it is not.
"""

from __future__ import annotations

from kdistill.methods.method import Method, MethodParams, Weight


class Params(MethodParams):
    hidden_rep_loss_weight: Weight = 0.25
    ce_loss_weight: Weight = 0.75


METHOD = Method(
    name="distill_cosine",
    label="Student, CE + cosine",
    summary="The student with cross-entropy + cosine loss on hidden representations",
    params=Params,
    losses=f"{__package__}.losses",
    reference_accuracy=70.12,
)
