"""What a method declares, readable without torch: its name, typed params, losses module and report label.

A method is a folder of its own, ``kdistill/methods/<name>/``, with two modules: ``spec.py``
defines ``METHOD = Method(...)`` and its ``Params`` (pydantic only, so the control plane validates
params, generates dvc.yaml and writes the report without importing torch), and ``losses.py`` its
loss terms and ``objective(params, shapes) -> Objective`` (torch and the core, nothing heavier).
The folder has no ``__init__.py``: importing the losses runs no spec, and the spec no losses.
``kdistill.control.registry`` finds the folders; everything else (the params model, each stage's
params keys and code deps, dvc.yaml, the report's rows, the benchmark's) follows from them.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:  # the losses' types; importing them would import torch
    from kdistill.core.objectives import Objective, Shapes

PositiveFloat = Annotated[float, Field(gt=0)]
# A loss term's weight; a section whose weights are all zero is rejected (it would train nothing).
Weight = Annotated[float, Field(ge=0, json_schema_extra={"loss_weight": True})]
Channel = Annotated[float, Field(ge=0, le=1)]
Seed = Annotated[int, Field(ge=0)]


class Section(BaseModel):
    """One section of params.yaml: unknown keys and values of the wrong type are errors."""

    # strict: "10" is not an epoch count and true is not a temperature; ints still pass as floats.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    @model_validator(mode="after")
    def _some_weight_positive(self) -> Section:
        weights = {name: getattr(self, name) for name, field in type(self).model_fields.items()
                   if (field.json_schema_extra or {}).get("loss_weight")}
        if weights and not any(value > 0 for value in weights.values()):
            raise ValueError(f"all loss weights are zero ({weights}); at least one must be > 0")
        return self


class MethodParams(Section):
    """A method's section of params.yaml; fields default to the method's published setting."""


@dataclass(frozen=True)
class Method:
    name: str  # the DVC stage, the params section, the MLflow run name, models/<name>.pt, metrics/<name>.json
    label: str  # the report's row
    summary: str  # one line: dvc.yaml's desc
    losses: str  # the module that defines ``objective(params, shapes) -> Objective``
    params: type[Section] | None = None
    role: Literal["teacher", "student"] = "student"
    distills: bool = True  # reads the teacher's outputs (every method; not the baselines)
    reference_accuracy: float | None = None  # the tutorial's published single run, where it has one

    def own_keys(self) -> list[str]:
        """The keys of this method's own section, in the order its params declare them."""
        return [f"{self.name}.{field}" for field in self.params.model_fields] if self.params else []

    def build_objective(self, params: Section | None, shapes: Shapes) -> Objective:
        """The losses module's ``objective(params, shapes)``; imports it (and torch) on first use."""
        return importlib.import_module(self.losses).objective(params, shapes)
