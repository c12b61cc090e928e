"""Typed configuration: params.yaml is validated against a pydantic model before any work.

Every key is declared: an unknown key (a typo such as ``distill_kd.temp``), a missing key or a bad
value is rejected with a message naming the key, the value and what is allowed. This module holds
the sections every stage shares; each training stage adds its own section (``kdistill.methods``),
and ``kdistill.control.registry`` assembles the model of the whole file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, create_model, model_validator

from kdistill.core.catalog import NETWORKS
from kdistill.errors import ConfigError
from kdistill.methods.method import Channel, Method, PositiveFloat, Section, Seed

DOWNLOAD_KEYS = ("data.url", "data.md5", "data.format", "data.train_images", "train_teacher.checkpoint",
                 "train_teacher.checkpoint_md5")
NetworkName = Literal[tuple(NETWORKS)]  # type: ignore[valid-type]


class DataParams(Section):
    url: str = Field(min_length=1)
    md5: str = Field(pattern=r"^[0-9a-f]{32}$")
    format: Literal["cifar10", "cifar100", "imagefolder"]
    train_images: int = Field(ge=0)  # 0: every training image; N: a fixed random N of them (a quick run)
    mean: Annotated[list[Channel], Field(min_length=3, max_length=3)]  # per RGB channel
    std: Annotated[list[PositiveFloat], Field(min_length=3, max_length=3)]


class NetworkParams(Section):
    teacher: NetworkName
    student: NetworkName  # every student stage's


class TrainParams(Section):
    """The recipe every training stage shares (``kdistill.core.recipe.Recipe`` holds the same fields)."""

    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    optimizer: Literal["adam", "sgd"]
    lr: PositiveFloat
    momentum: float = Field(ge=0, lt=1)  # sgd
    nesterov: bool  # sgd
    weight_decay: float = Field(ge=0)
    schedule: Literal["constant", "multistep", "cosine"]
    milestones: list[Annotated[int, Field(ge=1)]]  # multistep: the epochs after which lr is multiplied by lr_decay
    lr_decay: float = Field(gt=0, le=1)  # multistep
    augment: Literal["none", "crop_flip"]
    precision: Literal["auto", "fp32", "bf16"]
    device: Literal["auto", "cpu", "cuda", "mps"]

    @model_validator(mode="after")
    def _consistent(self) -> TrainParams:
        problems = []
        if self.optimizer != "sgd" and (self.momentum or self.nesterov):
            problems.append(f"train.momentum and train.nesterov apply to sgd only (train.optimizer is {self.optimizer!r})")
        if self.nesterov and not self.momentum:
            problems.append("train.nesterov needs train.momentum > 0")
        if self.schedule == "multistep":
            if not self.milestones or self.milestones != sorted(set(self.milestones)):
                problems.append(f"train.milestones must be increasing epochs for schedule multistep, got {self.milestones}")
            elif self.milestones[-1] >= self.epochs:
                problems.append(f"train.milestones {self.milestones} must fall before train.epochs ({self.epochs})")
        elif self.milestones:
            problems.append(f"train.milestones applies to schedule multistep only (train.schedule is {self.schedule!r})")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class CoreParams(Section):
    # One student per seed in every student stage (the teacher has its own seed key).
    seeds: Annotated[list[Seed], Field(min_length=1)]
    data: DataParams
    networks: NetworkParams
    train: TrainParams

    @model_validator(mode="after")
    def _distinct_seeds(self) -> CoreParams:
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {self.seeds}")
        return self

    def section(self, name: str) -> Section:
        return getattr(self, name)

    def flat(self) -> dict[str, Any]:
        """Dotted keys exactly as dvc.yaml and MLflow name them (``distill_kd.T``)."""
        return flatten(self.model_dump())


def training_keys(training: Method) -> list[str]:
    """The params.yaml keys a training reads: DVC reruns it when, and only when, one changes."""
    seeds = ["seeds"] if training.role == "student" else []
    networks = ["networks.teacher"] if training.role == "teacher" else [
        "networks.student", *(["networks.teacher"] if training.distills else [])]
    recipe = [f"train.{key}" for key in TrainParams.model_fields]
    return [*seeds, "data.mean", "data.std", *networks, *recipe, *training.own_keys()]


def params_model(sections: Mapping[str, type[Section]]) -> type[CoreParams]:
    """The model of a params.yaml holding the shared sections plus ``sections`` (name -> model)."""
    fields: dict[str, Any] = {name: (model, ...) for name, model in sections.items()}
    return create_model("Params", __base__=CoreParams, **fields)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _describe(error: Mapping[str, Any]) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "<top level>"
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown key (value {error['input']!r}); check the spelling against params.yaml's documented keys"
    if error["type"] == "missing":
        return f"{key}: required key is missing"
    return f"{key}: {error['msg']} (got {error['input']!r})"


def _missing_with_defaults(raw: Mapping[str, Any], model: type[BaseModel]) -> list[str]:
    """Keys a section declares with a default but params.yaml lacks.

    Defaults document a method's published setting; they never fill in silently, because DVC
    tracks only the keys written in params.yaml.
    """
    missing = []
    for name, field in model.model_fields.items():
        section = field.annotation
        if isinstance(section, type) and issubclass(section, BaseModel) and isinstance(raw.get(name), Mapping):
            missing += [f"{name}.{key}: required key is missing (documented default: {inner.default!r})"
                        for key, inner in section.model_fields.items()
                        if key not in raw[name] and not inner.is_required()]
    return missing


def parse_params(raw: Any, model: type[CoreParams], source: str = "params.yaml", *,
                 only_known_sections: bool = False) -> CoreParams:
    """Validate ``raw`` against ``model``.

    ``only_known_sections``: drop top-level sections ``model`` does not declare (a stage reads the
    shared sections and its own; the ``check_params`` stage validates the whole file).
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    if only_known_sections:
        raw = {key: value for key, value in raw.items() if key in model.model_fields}
    problems = _missing_with_defaults(raw, model)
    try:
        params = model.model_validate(raw)
    except ValidationError as exc:
        problems += [_describe(err) for err in exc.errors()]
    if problems:
        lines = "\n".join(f"  - {problem}" for problem in problems)
        raise ConfigError(f"{source} is invalid:\n{lines}") from None
    return params


def read_params(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such params file")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None


def load_params(path: str | Path, sections: Mapping[str, type[Section]] | None = None, *,
                only_known_sections: bool = False) -> CoreParams:
    return parse_params(read_params(path), params_model(sections or {}), str(path),
                        only_known_sections=only_known_sections)
