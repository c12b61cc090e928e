"""The package's layers, as its folders show them: imports run downward, the core needs only torch, the
control plane and the analysis never import torch, and no training depends on the download code."""

from __future__ import annotations

import ast
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from helpers import code_dep_files, run_without
from kdistill.control.params import training_keys
from kdistill.control.registry import STAGES, TRAININGS

SRC = ROOT / "src"
PACKAGE = SRC / "kdistill"
# Bottom to top. A module may import its own layer and those below it, never one above.
LAYERS = ["base", "core", "methods", "sources", "control", "pipeline", "analysis", "sweep", "cli", "package"]
BASE = {"errors", "files", "layout", "entry"}  # what every layer shares: the standard library only
# The third-party packages each layer may import (its own and those of the layers below it count too).
ALLOWED = {
    "base": set(),
    "core": {"torch", "numpy", "tqdm"},
    "methods": {"pydantic", "torch"},  # specs: pydantic; losses: torch
    "sources": {"torch", "numpy", "tqdm", "PIL"},
    "control": {"pydantic", "yaml", "ruamel"},
}
# What a borrowed GPU box lacks: the subprocesses below run on a copy of this environment without them.
HEAVY = ("mlflow", "dvc", "pydantic", "yaml", "pandas", "scipy", "matplotlib", "sqlalchemy")
TORCH = ("torch", "torchvision")


def _modules() -> dict[str, Path]:
    return {p.relative_to(SRC).with_suffix("").as_posix().replace("/", ".").removesuffix(".__init__"): p
            for p in PACKAGE.rglob("*.py")}


def _layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "package"
    return "base" if parts[1] in BASE else parts[1]


def _imports(path: Path, *, at_run_time: bool = False) -> set[str]:
    """Every import, lazy ones included; ``at_run_time``: without those under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text())
    skipped = set()
    if at_run_time:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
                skipped |= {id(inner) for inner in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    return found


def test_every_module_belongs_to_a_layer_that_its_folder_names():
    assert {_layer(module) for module in _modules()} <= set(LAYERS)


@pytest.mark.parametrize("module", sorted(_modules()))
def test_imports_run_downward(module):
    modules, rank = _modules(), {layer: index for index, layer in enumerate(LAYERS)}
    inner = {name for name in _imports(modules[module]) if name in modules and name != "kdistill"}
    upward = sorted(name for name in inner if rank[_layer(name)] > rank[_layer(module)])
    assert not upward, f"{module} ({_layer(module)}) imports from a layer above it: {upward}"
    layer = _layer(module)
    if layer in ALLOWED:
        allowed = set().union(*(ALLOWED[lower] for lower in LAYERS[:rank[layer] + 1] if lower in ALLOWED))
        imported = _imports(modules[module], at_run_time=True)
        third_party = {name.split(".")[0] for name in imported} - set(sys.stdlib_module_names)
        extra = sorted(third_party - allowed - {"kdistill", "__future__"})
        assert not extra, f"{module} ({layer}) imports {extra}"


def test_method_specs_are_readable_without_torch_and_losses_without_pydantic():
    for module, path in _modules().items():
        parts = module.split(".")
        if parts[:2] != ["kdistill", "methods"] or len(parts) < 3:
            continue
        imported = _imports(path, at_run_time=True)
        third_party = {name.split(".")[0] for name in imported}
        if parts[-1] == "losses":
            assert "pydantic" not in third_party and not any(".spec" in n for n in imported), module
        else:
            assert "torch" not in third_party, f"{module} is a spec: it must not import torch"


TRAIN_WITH_THE_CORE = """
import sys
import torch
import kdistill
from kdistill.core.data import CachedTeacher, DeviceImages, teacher_outputs
from kdistill.core.recipe import Recipe
from kdistill.core.engine import train
from kdistill.core.networks import DeepNN, LightNN
from kdistill.core.objectives import Objective, Shapes, cross_entropy
from kdistill.core.runtime import resolve_runtime, make_reproducible
from kdistill.methods.kd.losses import SoftTargetLoss
from kdistill.core.objectives import Term

runtime = resolve_runtime("cpu", "fp32")
make_reproducible(runtime)
g = torch.Generator().manual_seed(0)
images, labels = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=g), torch.arange(64) % 10
data = DeviceImages(images, labels, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), runtime)
cached = teacher_outputs(DeepNN(), data, runtime)
objective = Objective([Term("soft_target", 0.25, SoftTargetLoss(2.0), ("student_logits", "teacher_logits")),
                       cross_entropy(0.75)])
history = train(LightNN(), objective, data, data, runtime, stage="core", recipe=Recipe(epochs=2, batch_size=16), seed=0,
                teacher=CachedTeacher({"logits": cached["logits"]}))
assert len(history) == 2 and history[1].train_loss < history[0].train_loss, history
heavy = sorted(name for name in sys.modules if name.split(".")[0] in HEAVY)
assert not heavy, heavy
print("trained", [round(r.train_loss, 4) for r in history])
"""


@pytest.mark.slow
def test_the_core_and_a_methods_losses_train_where_only_torch_is_installed(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(f"HEAVY = {HEAVY!r}\n{TRAIN_WITH_THE_CORE}")
    result = run_without(HEAVY, [str(script)], tmp_path, tmp_path)
    assert result.returncode == 0 and "trained" in result.stdout, result.stderr[-3000:]
    # The environment really lacks them (else this test would pass vacuously).
    for name in ("yaml", "mlflow"):
        missing = run_without(HEAVY, ["-c", f"import {name}"], tmp_path, tmp_path / f"probe-{name}")
        assert missing.returncode != 0 and "ModuleNotFoundError" in missing.stderr


def _fake_results(project: Path) -> None:
    """What the trainings leave for the report: per-stage metrics, per-seed records and histories."""
    import json

    for index, stage in enumerate(TRAININGS):
        for folder, name, text in (
            ("metrics", f"{stage}.json", json.dumps({"test_accuracy": 60.0 + index, "test_accuracy_std": 0.5,
                                                       "seeds": 2, "parameters": 1000})),
            ("metrics/runs", f"{stage}.json", json.dumps({
                "per_seed": {"42": 60.0 + index, "7": 60.5 + index}, "mlflow_run_ids": {"42": "a" * 32, "7": "b" * 32},
                "model_bytes": 4096, "latency_ms": 1.5, "latency_batch": 128, "wall_time_s": 3.0, "device": "cpu",
                "precision": "fp32", "params": {key: 1 for key in training_keys(TRAININGS[stage])}})),
            ("metrics/history", f"{stage}.csv", "epoch,train_loss,test_accuracy\n1,2.0,50.0\n2,1.5,60.0\n"),
        ):
            (project / folder).mkdir(parents=True, exist_ok=True)
            (project / folder / name).write_text(text)


@pytest.mark.slow
def test_the_control_plane_and_the_analysis_never_import_torch(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(ROOT / name, project / name)
    checked = run_without(TORCH, [str(ROOT / "stages" / "check_params.py")], project, tmp_path / "a")
    assert checked.returncode == 0 and (project / "data" / "params.checked").is_file(), checked.stderr[-3000:]
    _fake_results(project)
    reported = run_without(TORCH, [str(ROOT / "stages" / "report.py")], project, tmp_path / "b")
    assert reported.returncode == 0, reported.stderr[-3000:]
    assert "| Student, CE + KD " in (project / "metrics" / "report.md").read_text()
    absent = run_without(TORCH, ["-c", "import torch"], project, tmp_path / "d")
    assert absent.returncode != 0 and "ModuleNotFoundError" in absent.stderr
    for index, args in enumerate((["review", "--help"], ["dvc-yaml", "--check"], ["sweep", "--help"])):
        result = run_without(TORCH, ["-m", "kdistill.cli", *args], ROOT, tmp_path / f"c{index}")
        assert result.returncode == 0, f"kdistill {' '.join(args)}: {result.stderr[-3000:]}"


DOWNLOAD_ONLY = {"src/kdistill/pipeline/download.py", "src/kdistill/sources/fetch.py", "src/kdistill/sources/archives.py",
                 "src/kdistill/sources/cifar.py", "src/kdistill/sources/imagefolder.py", "src/kdistill/sources/prepare.py"}


def test_no_training_stage_depends_on_the_download_code():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert code_dep_files(stages["download"]["deps"]) >= DOWNLOAD_ONLY, "the download stage runs that code"
    for stage in TRAININGS:
        assert not DOWNLOAD_ONLY & code_dep_files(stages[stage]["deps"]), stage
    assert set(stages) == set(STAGES)


def test_the_benchmarks_live_outside_the_package():
    assert (ROOT / "benchmarks" / "speed.py").is_file()
    assert not [path for path in PACKAGE.rglob("*.py") if "bench" in path.name]
