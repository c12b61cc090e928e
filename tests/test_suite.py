"""The test suite's own set-up: its schedule names real files and its projects start from the shipped params."""

from __future__ import annotations

import copy
import subprocess

import yaml

from conftest import LONGEST_FIRST, ROOT


def test_the_test_schedule_names_test_files_that_exist():
    # A renamed file would silently lose its place among the longest (and start last again).
    assert [name for name in LONGEST_FIRST if not (ROOT / "tests" / name).is_file()] == []


def test_test_projects_start_from_the_shipped_params_not_from_an_experiments(tmp_path, monkeypatch):
    # `dvc exp run -S` and the README's offline `make pipeline DATA=…` rewrite params.yaml; the
    # suite's projects must still be the ones a fresh clone ships, or `make test` fails after them.
    import helpers
    from kdistill.control.registry import TRAININGS

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
