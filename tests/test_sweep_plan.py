"""What `kdistill sweep` decides before Ray starts: the grid in DVC's own syntax, and where results may go."""

from __future__ import annotations

import subprocess

import pytest

from helpers import BIN
from kdistill.errors import ConfigError
from kdistill.sweep.plan import grid, make_plan


def test_the_grid_is_dvcs_sweep_syntax_expanded_by_dvc():
    experiments = grid(["distill_kd.T=1,2,4", "seeds=[42,43,44]", "train.lr=choice(0.1,0.01)"], "s")
    assert [e.name for e in experiments] == [f"s-{i}" for i in range(1, 7)]
    assert experiments[0].overrides == ("distill_kd.T=1", "seeds=[42,43,44]", "train.lr=0.1")
    assert {e.overrides for e in experiments} == {(f"distill_kd.T={t}", "seeds=[42,43,44]", f"train.lr={lr}")
                                                  for t in (1, 2, 4) for lr in (0.1, 0.01)}
    with pytest.raises(ConfigError, match="at least one -S"):
        grid([], "s")


@pytest.fixture
def repo(tmp_path):
    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q", "-b", "main")
    git("config", "user.name", "t")
    git("config", "user.email", "t@example.com")
    (tmp_path / "params.yaml").write_text("seeds: [42]\n")
    git("add", "-A")
    git("commit", "-qm", "base")
    return tmp_path, git


def test_a_local_sweep_without_remotes_pushes_into_the_project_and_shares_its_cache(repo, monkeypatch):
    root, _ = repo
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    plan = make_plan(root, ["distill_kd.T=1,2"], name="t", cluster=False)
    assert plan.git_url == str(root) and plan.shared_cache == str(root / ".dvc" / "cache") and not plan.dvc_remote
    assert plan.tracking_uri == f"sqlite:///{root / 'mlflow.db'}"
    assert [e.name for e in plan.experiments] == ["t-1", "t-2"]


def test_a_cluster_without_remotes_or_server_is_refused_before_any_task(repo, monkeypatch):
    root, git = repo
    with pytest.raises(ConfigError, match="needs a git remote named origin and a default DVC remote"):
        make_plan(root, ["distill_kd.T=1"], name=None, cluster=True)
    git("remote", "add", "origin", str(root))
    subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=root, check=True, capture_output=True)
    subprocess.run([str(BIN / "dvc"), "remote", "add", "-d", "storage", str(root / "storage")], cwd=root, check=True,
                   capture_output=True)
    git("add", "-A")
    git("commit", "-qm", "remotes")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_URI set to the team's tracking server"):
        make_plan(root, ["distill_kd.T=1"], name=None, cluster=True)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    plan = make_plan(root, ["distill_kd.T=1"], name=None, cluster=True)
    assert plan.dvc_remote and plan.shared_cache is None and plan.git_url == str(root)


def test_uncommitted_changes_are_refused(repo):
    root, _ = repo
    (root / "params.yaml").write_text("seeds: [7]\n")
    with pytest.raises(ConfigError, match="uncommitted changes"):
        make_plan(root, ["distill_kd.T=1"], name=None, cluster=False)
