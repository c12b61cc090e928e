"""The edit-loop benchmark's own logic: variants, project copies of a commit or the workspace, the summary.

Its timed runs are whole `dvc exp run`s, which it measures rather than asserts; docs/performance.md
reports them.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import yaml
from benchmarks import edit_loop

from conftest import ROOT


def test_a_variant_names_a_commit_and_its_environment():
    variant = edit_loop.parse_variant("no server=bb435cc:KDISTILL_PRELOAD=0,OMP_NUM_THREADS=1")
    assert (variant.label, variant.commit, variant.env) == ("no server", "bb435cc",
                                                            {"KDISTILL_PRELOAD": "0", "OMP_NUM_THREADS": "1"})
    assert edit_loop.parse_variant("before=HEAD~1").env == {}
    for bad in ("HEAD", "=HEAD", "before=", "before=HEAD:PRELOAD"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected"):
            edit_loop.parse_variant(bad)


@pytest.mark.parametrize("commit", [None, "HEAD"])
def test_a_project_copy_holds_the_code_and_none_of_the_results(tmp_path, commit):
    archive = tmp_path / "cifar.tar.gz"
    archive.write_bytes(b"not read here")
    project = edit_loop.checkout(edit_loop.Variant("v", commit), tmp_path / "copy")
    edit_loop.configure(project, archive, "0" * 32, "cifar10")
    assert (project / "dvc.yaml").read_text() == subprocess.run(
        ["git", "show", "HEAD:dvc.yaml"] if commit else ["cat", "dvc.yaml"], cwd=ROOT, capture_output=True,
        text=True, check=True).stdout
    assert not any((project / name).exists() for name in edit_loop.RESULTS)
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert params["data"]["url"] == str(archive) and params["train"]["epochs"] == 1
    status = subprocess.run(["git", "status", "--porcelain"], cwd=project, capture_output=True, text=True, check=True)
    assert status.stdout == "", "everything committed: `dvc exp run` starts from a clean commit"


def test_the_summary_gives_each_median_against_the_workspace():
    variants = [edit_loop.Variant("workspace", None, seconds=[10.0, 30.0, 20.0]),
                edit_loop.Variant("before", "abc", seconds=[15.0, 16.0, 50.0])]
    lines = edit_loop.summary(variants).splitlines()
    assert "median  20.0 s  (1.00x" in lines[0] and "median  16.0 s  (0.80x" in lines[1]
    assert lines[1].endswith("rounds: 15.0, 16.0, 50.0")


def test_bad_input_fails_before_any_work(tmp_path):
    def run(*args: str, path: str = f"{Path(sys.executable).parent}:/usr/bin:/bin") -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "benchmarks.edit_loop", "--md5", "0", "--keep",
                               str(tmp_path / "work"), *args], cwd=ROOT, capture_output=True, text=True,
                              env={"PYTHONPATH": f"{ROOT}:{ROOT / 'src'}", "PATH": path})
    missing = run("--archive", str(tmp_path / "absent.tar.gz"))
    assert missing.returncode == 2 and "absent.tar.gz: no such file" in missing.stderr
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(b"x")
    no_dvc = run("--archive", str(archive), path="/usr/bin:/bin")
    assert no_dvc.returncode == 2 and "no `dvc` on PATH" in no_dvc.stderr
    bad = run("--archive", str(archive), "--variant", "old=no-such-commit")
    assert bad.returncode == 2 and "old=no-such-commit: no such commit" in bad.stderr
    no_stage = run("--archive", str(archive), "--stage", "train_techer")
    assert no_stage.returncode == 2 and "--stage train_techer: no such stage" in no_stage.stderr
    rounds_alone = run("--archive", str(archive), "--rounds", "2")
    assert rounds_alone.returncode == 2 and "--rounds needs --stage" in rounds_alone.stderr
    both = run("--archive", str(archive), "--stage", "report", "--temperatures", "4")
    assert both.returncode == 2 and "--temperatures and --stage" in both.stderr
    assert not (tmp_path / "work").exists()


def test_a_daemon_left_in_a_project_is_stopped_before_a_round(tmp_path):
    """Found by its command line too: the former fork server ran from ``/`` on a file of the project."""
    project = tmp_path / "project"
    project.mkdir()
    daemon = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", str(project / "server.sock")],
                              cwd="/")
    elsewhere = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], cwd=tmp_path)
    try:
        assert edit_loop.stop_leftovers(project) == 1
        assert not psutil.pid_exists(daemon.pid) and elsewhere.poll() is None  # psutil reaped it
    finally:
        for process in (daemon, elsewhere):
            process.kill()
            process.wait()


def test_each_round_has_its_temperature():
    assert edit_loop._temperatures("4") == (4.0,) and edit_loop._temperatures("3.5,4.5") == (3.5, 4.5)
    for bad in ("", "four", "4,-1"):
        with pytest.raises(argparse.ArgumentTypeError):
            edit_loop._temperatures(bad)


def test_a_round_is_an_experiment_per_temperature_or_a_forced_rerun_of_one_stage():
    assert edit_loop.round_commands(None, None, (3.5, 4.0)) == [["dvc", "exp", "run", "-S", "distill_kd.T=3.5"],
                                                                ["dvc", "exp", "run", "-S", "distill_kd.T=4"]]
    assert edit_loop.round_commands("train_teacher", 2, (3.5,)) == [["dvc", "repro", "-f", "-s", "train_teacher"]] * 2
    assert len(edit_loop.round_commands("report", None, None)) == len(edit_loop.round_commands(None, None, None)) == 3
