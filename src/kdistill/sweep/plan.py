"""What a sweep runs and where its results go, decided before any task starts."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from kdistill.errors import ConfigError

GIT_REMOTE = "origin"


@dataclass(frozen=True)
class Experiment:
    name: str
    overrides: tuple[str, ...]  # `dvc exp run -S` values, one experiment's


@dataclass(frozen=True)
class Plan:
    sweep: str  # an id: every attempt's MLflow runs carry it
    commit: str  # the base commit every experiment starts from
    git_url: str  # where tasks clone from and push their experiments to
    shared_cache: str | None  # without a DVC remote: the project's own cache, used directly (one machine)
    dvc_remote: bool
    tracking_uri: str
    experiments: tuple[Experiment, ...]


def tool(name: str) -> str:
    """A command of the environment this process runs in (every node has the project's), else from PATH."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.is_file() else name


def _git(root: Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)
    if result.returncode:
        raise ConfigError(f"git {' '.join(args)} failed in {root}: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout.strip()


def grid(overrides: list[str], prefix: str) -> tuple[Experiment, ...]:
    """DVC's own `-S` sweep syntax (``distill_kd.T=1,2,4``, ``choice(...)``, ``range(...)``), expanded by DVC."""
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import get_hydra_sweeps

    if not overrides:
        raise ConfigError("a sweep needs at least one -S key=value[,value...]")
    try:
        sweeps = get_hydra_sweeps(to_path_overrides(overrides))
    except Exception as error:  # noqa: BLE001 - Hydra's parser errors name the bad override
        raise ConfigError(f"-S: {error}") from None
    return tuple(Experiment(f"{prefix}-{index + 1}", tuple(value for values in sweep.values() for value in values))
                 for index, sweep in enumerate(sweeps))


def _dvc_remote(root: Path) -> bool:
    result = subprocess.run([tool("dvc"), "remote", "default"], cwd=root, capture_output=True, text=True, check=False)
    return result.returncode == 0 and bool(result.stdout.strip())


def make_plan(root: Path, overrides: list[str], *, name: str | None, cluster: bool) -> Plan:
    """Validated here, before Ray starts: a clean commit to start from, and remotes where a cluster needs them."""
    if _git(root, "status", "--porcelain", "--untracked-files=no"):
        raise ConfigError("the working tree has uncommitted changes; a sweep runs from a commit: commit them first")
    commit = _git(root, "rev-parse", "HEAD")
    remotes = _git(root, "remote").split()
    dvc_remote = _dvc_remote(root)
    if cluster and (GIT_REMOTE not in remotes or not dvc_remote):
        missing = [what for what, ok in (("a git remote named origin", GIT_REMOTE in remotes),
                                         ("a default DVC remote", dvc_remote)) if not ok]
        raise ConfigError(f"a sweep on a cluster needs {' and '.join(missing)}: nodes share experiments, data and the "
                          "run-cache only through them (docs/team.md); without --address it runs on this machine")
    if cluster and not os.environ.get("MLFLOW_TRACKING_URI", "").startswith(("http://", "https://")):
        raise ConfigError("a sweep on a cluster needs MLFLOW_TRACKING_URI set to the team's tracking server")
    local = GIT_REMOTE not in remotes
    git_url = str(root) if local else _git(root, "remote", "get-url", GIT_REMOTE)
    from kdistill.pipeline.tracking import tracking_uri  # no torch: the tracking module imports mlflow only

    sweep = uuid.uuid4().hex[:8]
    return Plan(sweep=sweep, commit=commit, git_url=git_url,
                shared_cache=None if dvc_remote else str(root / ".dvc" / "cache"), dvc_remote=dvc_remote,
                tracking_uri=tracking_uri(root), experiments=grid(overrides, name or f"sweep-{sweep}"))
