"""constraints.txt pins the whole environment: every package that kdistill[test] needs, at the version installed."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def _name(text: str) -> str:
    return re.sub(r"[-_.]+", "-", text).lower()


def locked() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version, f"constraints.txt: {line!r} is not NAME==VERSION"
            pins[_name(name)] = version
    return pins


def needed(root: str = "kdistill", extras: tuple[str, ...] = ("test",)) -> set[str]:
    """Every distribution that ``root[extras]`` requires on this machine, transitively (markers evaluated)."""
    found: set[str] = set()
    pending = [(root, extras)]
    while pending:
        name, wanted = pending.pop()
        for text in metadata.requires(name) or []:
            requirement = Requirement(text)
            environments = [{"extra": extra} for extra in wanted] or [{"extra": ""}]
            if requirement.marker and not any(requirement.marker.evaluate(env) for env in environments):
                continue
            key = (_name(requirement.name), tuple(sorted(requirement.extras)))
            if key not in found:  # kdistill[test] names kdistill[ray,team]: extras make it another key
                found.add(key)
                pending.append((requirement.name, key[1]))
    return {name for name, _ in found} - {"kdistill"}


def test_every_package_the_project_needs_is_pinned_at_the_installed_version():
    pins = locked()
    required = needed()
    assert {"torch", "mlflow", "sqlalchemy", "ray", "pytest"} <= required  # the walk reaches transitive ones
    missing = sorted(required - pins.keys())
    assert not missing, f"not in constraints.txt (run `make lock`): {missing}"
    drifted = {name: (pins[name], metadata.version(name)) for name in required if metadata.version(name) != pins[name]}
    assert not drifted, f"installed versions differ from constraints.txt (pinned, installed): {drifted}"


def test_constraints_agree_with_the_pins_of_pyproject_and_hold_nothing_else():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    direct = [Requirement(text) for text in project["dependencies"]]
    direct += [Requirement(text) for texts in project["optional-dependencies"].values() for text in texts]
    pins = locked()
    for requirement in direct:
        if _name(requirement.name) != "kdistill":
            assert str(requirement.specifier) == f"=={pins[_name(requirement.name)]}", requirement
    assert not pins.keys() - needed(), "constraints.txt pins packages nothing needs"
