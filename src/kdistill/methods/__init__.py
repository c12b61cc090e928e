"""Distillation methods, one module each; ``kdistill.registry`` finds them.

A method module defines ``METHOD = Method(...)``: its name (the DVC stage, the params.yaml
section, the MLflow run name, ``models/<name>.pt`` and ``metrics/<name>.json``), its typed params
with their defaults, the objective it trains with, and its label in the report. Everything else
(the params model, each stage's params keys and code deps, dvc.yaml, the report's rows, the
benchmark) is derived from it. README's "Add a method" lists the steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from kdistill.config import TRAINING_KEYS, Section, section_keys
from kdistill.objectives import Objective, Shapes


class MethodParams(Section):
    """A method's section of params.yaml; fields default to the method's published setting."""


@dataclass(frozen=True)
class Method:
    name: str
    label: str  # the report's row
    summary: str  # one line: dvc.yaml's desc
    objective: Callable[[Section | None, Shapes], Objective]
    params: type[Section] | None = None
    architecture: str = "LightNN"
    role: Literal["teacher", "student"] = "student"
    reference_accuracy: float | None = None  # the tutorial's published single run, where it has one

    def param_keys(self) -> list[str]:
        """The params.yaml keys this stage reads: DVC reruns it when, and only when, one changes."""
        seeds = ["seeds"] if self.role == "student" else []
        own = section_keys(self.name, self.params) if self.params else []
        return [*seeds, *TRAINING_KEYS, *own]

    def build_objective(self, params: Section | None, shapes: Shapes) -> Objective:
        return self.objective(params, shapes)
