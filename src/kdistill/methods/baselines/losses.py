"""The baselines' objective: cross-entropy alone."""

from __future__ import annotations

from kdistill.core.objectives import Objective, Shapes, cross_entropy


def objective(params: object, shapes: Shapes) -> Objective:
    return Objective([cross_entropy()])
