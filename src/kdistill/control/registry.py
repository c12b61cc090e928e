"""The one source of truth: every stage of the pipeline, derived from the method folders.

The distillation methods are the folders under ``kdistill/methods/`` whose ``spec.py`` defines
``METHOD``; nothing lists them by hand. From them come the params model of the whole file, each stage's params
keys, dvc.yaml (``kdistill dvc-yaml``), the report's rows and the benchmark's. Reading them imports
their specs (pydantic), never their losses (torch).
"""

from __future__ import annotations

import importlib
from pathlib import Path

from kdistill import methods
from kdistill.control.params import DOWNLOAD_KEYS, CoreParams, load_params, params_model, training_keys
from kdistill.methods.baselines.spec import STUDENT_CE, TEACHER
from kdistill.methods.method import Method

__discovers__ = "kdistill.methods.*.spec"  # read by kdistill.control.codedeps: every method's spec is a dep of this one
METHOD_PREFIX = "distill_"
BASELINES = "baselines"


def discover() -> dict[str, Method]:
    found: dict[str, Method] = {}
    folders = sorted(path.parent.name for directory in methods.__path__ for path in Path(directory).glob("*/spec.py"))
    for folder in folders:
        if folder == BASELINES:
            continue
        module = importlib.import_module(f"{methods.__name__}.{folder}.spec")
        method = getattr(module, "METHOD", None)
        if not isinstance(method, Method):
            raise TypeError(f"{module.__name__} defines no METHOD = Method(...)")
        if method.name != f"{METHOD_PREFIX}{folder}":
            raise ValueError(f"{module.__name__}: the method in methods/{folder}/ must be named "
                             f"{METHOD_PREFIX}{folder!r}, not {method.name!r}")
        found[method.name] = method
    return found


METHODS: dict[str, Method] = discover()
TRAININGS: dict[str, Method] = {TEACHER.name: TEACHER, STUDENT_CE.name: STUDENT_CE, **METHODS}
CHECK_PARAMS, DOWNLOAD, REPORT = "check_params", "download", "report"
STAGES: list[str] = [CHECK_PARAMS, DOWNLOAD, *TRAININGS, REPORT]
SECTIONS = {t.name: t.params for t in TRAININGS.values() if t.params is not None}
Params = params_model(SECTIONS)


def stage_param_keys(stage: str) -> list[str]:
    """The params.yaml keys ``stage`` reads (dvc.yaml lists exactly these)."""
    if stage in TRAININGS:
        return training_keys(TRAININGS[stage])
    return {CHECK_PARAMS: [], DOWNLOAD: list(DOWNLOAD_KEYS), REPORT: []}[stage]


def load_all_params(path: str | Path) -> CoreParams:
    """params.yaml validated as a whole: every section, every key."""
    return load_params(path, SECTIONS)
