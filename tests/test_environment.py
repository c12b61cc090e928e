"""A stage run by a Python without the project's packages says what to do, before anything else."""

from __future__ import annotations

import ast
import copy
import subprocess
import sys

import yaml

import kdistill
from conftest import LONGEST_FIRST, ROOT
from kdistill.codedeps import SRC


def _third_party_imports() -> set[str]:
    found = set()
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"kdistill", "__future__"}


def test_the_checked_modules_are_exactly_what_the_source_imports():
    assert set(kdistill.REQUIRED_MODULES) == _third_party_imports()


def test_a_stage_under_a_python_without_the_packages_names_them_and_the_fix():
    # -S: no site-packages, as with a system Python that DVC found on PATH instead of the project's.
    result = subprocess.run([sys.executable, "-S", "stages/download.py"], cwd=ROOT, capture_output=True, text=True,
                            env={"PYTHONPATH": str(SRC)}, timeout=60)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: this Python") and "torch" in last and "mlflow" in last
    assert ". .venv/bin/activate" in last


def test_the_test_schedule_names_test_files_that_exist():
    # A renamed file would silently lose its place among the longest (and start last again).
    assert [name for name in LONGEST_FIRST if not (ROOT / "tests" / name).is_file()] == []


def test_test_projects_start_from_the_shipped_params_not_from_an_experiments(tmp_path, monkeypatch):
    # `dvc exp run -S` and the README's offline `make pipeline DATA=…` rewrite params.yaml; the
    # suite's projects must still be the ones a fresh clone ships, or `make test` fails after them.
    import helpers
    from kdistill.registry import TRAININGS

    checkout = tmp_path / "checkout"
    checkout.mkdir()
    shipped = helpers.committed_params()
    (checkout / "params.yaml").write_text(yaml.safe_dump(shipped, sort_keys=False))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    for args in (["init", "-q"], ["add", "params.yaml"], ["commit", "-qm", "shipped"]):
        subprocess.run([*git, *args], cwd=checkout, check=True)
    other_format = "imagefolder" if shipped["data"]["format"] == "cifar10" else "cifar10"
    experiment = helpers.with_value(helpers.with_value(copy.deepcopy(shipped), "distill_kd.T", 7.5), "data.format",
                                    other_format)
    (checkout / "params.yaml").write_text(yaml.safe_dump(experiment, sort_keys=False))
    monkeypatch.setattr(helpers, "ROOT", checkout)

    project = helpers.copy_project(tmp_path / "project")
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert params["data"]["format"] == shipped["data"]["format"]
    assert params["distill_kd"] == TRAININGS["distill_kd"].params().model_dump()
    assert params == helpers.shipped_params()
