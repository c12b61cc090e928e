"""The registry is the one source of truth: dvc.yaml, the stage scripts, each stage's params keys and
code deps are derived from it, and the package's imports run downward."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from helpers import code_dep_files, third_party_imports
from kdistill.control.codedeps import SRC, closure, digest
from kdistill.control.dvcfile import generate
from kdistill.control.registry import METHODS, STAGES, TRAININGS, Params, stage_param_keys
from kdistill.layout import Layout

DVC_YAML = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def test_committed_dvc_yaml_and_stage_scripts_are_in_step_with_the_registry():
    assert generate(Layout(ROOT), SRC, check=True) == [], "run `kdistill dvc-yaml` and commit the result"
    assert list(DVC_YAML) == STAGES
    assert sorted(p.stem for p in (ROOT / "stages").glob("*.py")) == sorted(STAGES)


def test_each_stage_lists_exactly_the_keys_it_reads_and_every_key_is_read():
    assert DVC_YAML["check_params"]["params"] == [{"params.yaml": None}], "check_params reads every key"
    for stage in STAGES[1:]:
        assert DVC_YAML[stage].get("params", []) == stage_param_keys(stage)
    every_key = set(Params.model_validate(yaml.safe_load((ROOT / "params.yaml").read_text())).flat())
    assert set().union(*map(stage_param_keys, STAGES)) == every_key, "a params key that no stage reads"
    for name, method in METHODS.items():
        own = {key for key in stage_param_keys(name) if key.startswith(f"{name}.")}
        assert own == {f"{name}.{field}" for field in method.params.model_fields}
        others = [stage for stage in STAGES if stage != name and own & set(stage_param_keys(stage))]
        assert others == [], f"{name}'s keys must rerun only {name} (and the report through its outputs)"


def test_adding_student_seeds_does_not_touch_the_teacher():
    assert "seeds" not in stage_param_keys("train_teacher") and "train_teacher.seed" in stage_param_keys("train_teacher")
    assert all("seeds" in stage_param_keys(s) for s in TRAININGS if s != "train_teacher")


# Imports the third-party packages once, then forks a child per stage that runs the stage's script
# as an import (run_name "probe": its `main` does not run) and lists the kdistill modules it loaded.
# kdistill itself is never imported before the fork: each child loads exactly its stage's modules.
PROBE = """
import importlib, json, os, runpy, sys, traceback
for name in sys.argv[2:]:
    importlib.import_module(name)
for stage in sys.argv[1].split(","):
    pid = os.fork()
    if pid == 0:
        try:
            runpy.run_path(f"stages/{stage}.py", run_name="probe")
            files = sorted(m.__file__ for n, m in sys.modules.items()
                           if n.split(".")[0] == "kdistill" and getattr(m, "__file__", None))
            print(json.dumps({stage: files}), flush=True)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if status:
        sys.exit(f"probing stage {stage} failed")
"""


@pytest.fixture(scope="module")
def loaded_modules() -> dict[str, set[str]]:
    """Per stage, the project files its script loads when imported as the stage would be."""
    result = subprocess.run([sys.executable, "-c", PROBE, ",".join(STAGES), *sorted(third_party_imports())], cwd=ROOT,
                            capture_output=True, text=True, env={"PYTHONPATH": str(ROOT / "src")}, timeout=300)
    assert result.returncode == 0, result.stderr
    loaded = {}
    for line in result.stdout.splitlines():
        ((stage, files),) = json.loads(line).items()
        loaded[stage] = {Path(f).resolve().relative_to(ROOT).as_posix() for f in files}
    assert list(loaded) == STAGES
    return loaded


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_code_deps_cover_every_module_the_stage_loads(stage, loaded_modules):
    """Independent of the static closure: import the script as the stage would and list what loaded."""
    declared = {dep for dep in DVC_YAML[stage]["deps"] if dep.endswith(".py")}
    directories = [dep for dep in DVC_YAML[stage]["deps"] if (ROOT / dep).is_dir()]
    undeclared = {f for f in loaded_modules[stage] - declared if not any(f.startswith(f"{d}/") for d in directories)}
    assert not undeclared, f"{stage} loads modules dvc.yaml does not list: {sorted(undeclared)}"
    assert f"stages/{stage}.py" in declared and "src/kdistill/entry.py" in loaded_modules[stage]


SHARED_METHOD_FILES = ("methods/__init__.py", "methods/method.py", "methods/baselines/spec.py")


def test_a_method_stage_depends_on_its_own_method_folder_only():
    for name, method in METHODS.items():
        deps = code_dep_files(DVC_YAML[name]["deps"])
        modules = {dep for dep in deps if "/methods/" in dep and not dep.endswith(SHARED_METHOD_FILES)}
        folder = f"src/{method.losses.rpartition('.')[0].replace('.', '/')}"
        assert modules == {f"{folder}/spec.py", f"{folder}/losses.py"}
    # The report's rows and check_params's model come from every method module: a directory dep, so
    # that removing a method reruns them too (DVC does not notice a removed file dep).
    for stage in ("check_params", "report"):
        assert "src/kdistill/methods" in DVC_YAML[stage]["deps"]
        assert not [dep for dep in DVC_YAML[stage]["deps"] if "/methods/" in dep]


@pytest.mark.parametrize("stage", STAGES)
def test_code_deps_are_the_closure_with_whole_folders_as_one_dep(stage):
    """Each folder the stage imports every module of is one entry (dvc.lock stays small), and no other."""
    deps = [dep for dep in DVC_YAML[stage]["deps"] if dep.startswith(("src/", "stages/"))]
    folders = [dep for dep in deps if (ROOT / dep).is_dir()]
    imported = {path.relative_to(ROOT).as_posix() for path in closure(ROOT / "stages" / f"{stage}.py", SRC)}
    for folder in set(folders) - {"src/kdistill/methods"}:  # methods: whole wherever every spec is read
        assert code_dep_files([folder]) <= imported, f"{stage}: {folder} holds modules it does not import"
    assert not [dep for dep in deps if any(dep.startswith(f"{folder}/") for folder in folders)]
    assert code_dep_files(deps) >= imported
    listed = {dep.rpartition("/")[0] for dep in deps if dep.endswith(".py")}
    whole = [folder for folder in listed if code_dep_files([folder]) <= imported and folder != "stages"]
    assert not whole, f"{stage}: lists every module of {whole} one by one"


def test_a_training_stage_lists_the_core_as_one_folder():
    for name in TRAININGS:
        assert "src/kdistill/core" in DVC_YAML[name]["deps"]
        assert not [dep for dep in DVC_YAML[name]["deps"] if dep.startswith("src/kdistill/core/")]


def test_dvc_reads_dvc_yaml_and_dvc_lock_with_the_c_parser():
    # DVC parses both files several times per command; ruamel's pure-Python parser takes about 7x as
    # long, seconds of every `dvc exp run`. ruamel.yaml.clib is optional, so only its pin provides it.
    from dvc.utils.serialize import _yaml
    from ruamel.yaml import YAML, main

    assert main.CParser is not None and YAML(typ="safe").Parser is main.CParser
    text = (ROOT / "dvc.yaml").read_text()
    assert _yaml.parse_yaml(text, "dvc.yaml") == yaml.safe_load(text)


def test_the_closure_follows_lazy_imports_and_declared_discovery(tmp_path):
    package = tmp_path / "src" / "kdistill"
    (package / "plugins").mkdir(parents=True)
    for name, text in {
        "__init__.py": "",
        "a.py": "def f():\n    from kdistill import b\n",
        "b.py": "import os\n",
        "finder.py": "__discovers__ = 'kdistill.plugins.*.spec'\n",
        "unused.py": "",
        "plugins/__init__.py": "",
        "plugins/one/spec.py": "from kdistill.b import os\n",
        "plugins/one/unread.py": "",
        "plugins/two/spec.py": "",
    }.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    script = tmp_path / "stage.py"
    script.write_text("import kdistill.a\nfrom kdistill import finder\n")
    names = [p.relative_to(tmp_path).as_posix() for p in closure(script, tmp_path / "src")]
    assert names == ["stage.py", "src/kdistill/__init__.py", "src/kdistill/a.py", "src/kdistill/b.py",
                     "src/kdistill/finder.py", "src/kdistill/plugins/__init__.py", "src/kdistill/plugins/one/spec.py",
                     "src/kdistill/plugins/two/spec.py"]
    before = digest(closure(script, tmp_path / "src"))
    (package / "b.py").write_text("import sys\n")
    assert digest(closure(script, tmp_path / "src")) != before


def _import_graph() -> dict[str, set[str]]:
    modules = {p.relative_to(SRC).with_suffix("").as_posix().replace("/", ".").removesuffix(".__init__"): p
               for p in SRC.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
        graph[name] = {m for m in imported if m in modules and m != name and m != "kdistill"}
    return graph


def test_imports_run_downward_with_no_circle():
    graph, state = _import_graph(), {}

    def visit(module: str, path: list[str]) -> None:
        assert state.get(module) != "open", "import circle: " + " -> ".join([*path, module])
        if state.get(module) == "done":
            return
        state[module] = "open"
        for target in sorted(graph[module]):
            visit(target, [*path, module])
        state[module] = "done"

    for module in sorted(graph):
        visit(module, [])
