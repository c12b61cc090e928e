"""Typed configuration: params.yaml is validated once, as a whole, before any stage does work.

Every key is declared here; an unknown key (a typo such as ``distill_kd.temp``) or a bad value is
rejected with a message naming the key, the value and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """params.yaml (or another user input) is invalid; the message says what and where."""


PositiveFloat = Annotated[float, Field(gt=0)]
Weight = Annotated[float, Field(ge=0)]
Channel = Annotated[float, Field(ge=0, le=1)]


class Section(BaseModel):
    # strict: "10" is not an epoch count and true is not a temperature; ints still pass as floats.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DataParams(Section):
    url: str = Field(min_length=1)
    md5: str = Field(pattern=r"^[0-9a-f]{32}$")
    format: Literal["cifar10", "imagefolder"]
    mean: Annotated[list[Channel], Field(min_length=3, max_length=3)]  # per RGB channel
    std: Annotated[list[PositiveFloat], Field(min_length=3, max_length=3)]


class TrainParams(Section):
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    lr: PositiveFloat
    precision: Literal["auto", "fp32", "bf16"]
    device: Literal["auto", "cpu", "cuda", "mps"]


class WeightedLoss(Section):
    """A distillation objective: a weighted sum of a teacher-matching term and cross-entropy."""

    ce_loss_weight: Weight

    @model_validator(mode="after")
    def _some_weight_positive(self) -> WeightedLoss:
        weights = {k: v for k, v in self.model_dump().items() if k.endswith("weight")}
        if not any(value > 0 for value in weights.values()):
            raise ValueError(f"all loss weights are zero ({weights}); at least one must be > 0")
        return self


class KDParams(WeightedLoss):
    T: PositiveFloat
    soft_target_loss_weight: Weight


class CosineParams(WeightedLoss):
    hidden_rep_loss_weight: Weight


class RegressorParams(WeightedLoss):
    feature_map_weight: Weight


class Params(Section):
    # One student per seed in every student stage; the teacher trains once, with the first seed.
    seeds: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]
    data: DataParams
    train: TrainParams
    distill_kd: KDParams
    distill_cosine: CosineParams
    distill_regressor: RegressorParams

    @model_validator(mode="after")
    def _distinct_seeds(self) -> Params:
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {self.seeds}")
        return self

    def flat(self) -> dict[str, Any]:
        """Dotted keys exactly as dvc.yaml and MLflow name them (``distill_kd.T``)."""
        return _flatten(self.model_dump())


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _describe(error: dict[str, Any]) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "<top level>"
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown key (value {error['input']!r}); check the spelling against params.yaml's documented keys"
    if error["type"] == "missing":
        return f"{key}: required key is missing"
    return f"{key}: {error['msg']} (got {error['input']!r})"


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        lines = "\n".join(f"  - {_describe(err)}" for err in exc.errors())
        raise ConfigError(f"{source} is invalid:\n{lines}") from None


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such params file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_params(raw, str(path))
