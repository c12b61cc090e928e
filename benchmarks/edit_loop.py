"""The edit loop as users meet it: `dvc exp run -S distill_kd.T=…` after a complete run, side by side with other commits.

    PYTHONPATH=src python -m benchmarks.edit_loop --archive cifar-10-python.tar.gz --md5 <its md5> \\
        --variant before=<commit> [--variant "before, no server=<commit>:KDISTILL_PRELOAD=0"] \\
        [--temperatures 3.5,4.5,5.5 | --stage STAGE [--rounds 3]] [--epochs 1] [--format cifar10|imagefolder]

(from the project root, with the project's environment active). Each variant is a fresh project
in a temporary folder: this checkout's files (the variant ``workspace``, always measured) or
``git archive <commit>``, with an environment of its own (``KEY=VALUE`` after the commit). Each is
set to ``--epochs`` on ``--archive`` (a local path in a layout the commits can read) and runs
`dvc repro` once, timed on its own (the whole pipeline). Then the variants take turns, one round
per temperature, so that the machine's drift falls on all of them alike; before each timed command
every process still running in its project (a daemon a stage left behind) is stopped, so each
round starts cold, as a user's next experiment usually does. Prints every round's seconds, the
median per variant and its ratio to the workspace's.

With ``--stage STAGE [--rounds N]``, each round reruns that stage alone instead (``dvc repro -f -s
STAGE``): its own work, mostly epochs, alternated between the variants so that the machine's drift
falls on all of them alike.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKSPACE = "workspace"
RESULTS = ("dvc.lock", "metrics", "models", "data", "mlflow.db", "mlruns")


@dataclass
class Variant:
    label: str
    commit: str | None  # None: this checkout's files
    env: dict[str, str] = field(default_factory=dict)
    seconds: list[float] = field(default_factory=list)


def parse_variant(text: str) -> Variant:
    """``LABEL=COMMIT[:KEY=VALUE,...]``."""
    label, sep, rest = text.partition("=")
    if not sep or not label or not rest:
        raise argparse.ArgumentTypeError(f"{text!r}: expected LABEL=COMMIT[:KEY=VALUE,...]")
    commit, _, assignments = rest.partition(":")
    env = {}
    for assignment in filter(None, assignments.split(",")):
        key, sep, value = assignment.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"{assignment!r} in {text!r}: expected KEY=VALUE")
        env[key] = value
    return Variant(label, commit, env)


def _temperatures(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(value) for value in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected numbers separated by commas") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: temperatures must be positive")
    return values


def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout


def checkout(variant: Variant, destination: Path) -> Path:
    """The variant's files in ``destination``, without results, as a git repository of one commit."""
    destination.mkdir(parents=True)
    if variant.commit is None:
        for name in _git("ls-files", "--cached", "--others", "--exclude-standard", cwd=ROOT).split("\n"):
            if name and (ROOT / name).is_file():
                (destination / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, destination / name)
    else:
        archive = subprocess.run(["git", "archive", variant.commit], cwd=ROOT, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(destination)], input=archive.stdout, check=True)
    for name in RESULTS:
        path = destination / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    return destination


def configure(project: Path, archive: Path, md5: str, data_format: str, epochs: int = 1) -> None:
    """``epochs`` on the archive, committed (params.yaml loses its comments: the copy is thrown away)."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"].update(url=str(archive.resolve()), md5=md5, format=data_format)
    params["train"]["epochs"] = epochs
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    identity = ["-c", "user.name=benchmark", "-c", "user.email=benchmark@example.com"]
    for args in (["init", "-q"], ["add", "-A"], [*identity, "commit", "-qm", "benchmark"]):
        _git(*args, cwd=project)


def _inside(path: str, project: Path) -> bool:
    return path.startswith("/") and (Path(path) == project or project in Path(path).parents)


def stop_leftovers(project: Path) -> int:
    """Stop every process that runs in ``project`` or from a file in it; return how many there were.

    A daemon a stage left behind may have moved its working directory (the former fork server ran
    from ``/``), so its command line counts too.
    """
    found = []
    for process in psutil.process_iter(["cwd", "cmdline"]):
        paths = [process.info.get("cwd") or "", *(process.info.get("cmdline") or [])]
        if process.pid != os.getpid() and any(_inside(path, project) for path in paths):
            found.append(process)
    for process in found:
        process.terminate()
    _, alive = psutil.wait_procs(found, timeout=10)
    for process in alive:
        process.kill()
    return len(found)


def timed(command: list[str], project: Path, env: dict[str, str], log: Path) -> float:
    started = time.perf_counter()
    with open(log, "a") as out:
        result = subprocess.run(command, cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
    if result.returncode:
        sys.exit(f"{' '.join(command)} failed in {project}; see {log}")
    return time.perf_counter() - started


def round_commands(stage: str | None, rounds: int | None,
                   temperatures: tuple[float, ...] | None) -> list[list[str]]:
    """The timed command of each round: an experiment per temperature, or ``rounds`` forced reruns of ``stage``."""
    if stage is None:
        return [["dvc", "exp", "run", "-S", f"distill_kd.T={temperature:g}"]
                for temperature in temperatures or (3.5, 4.5, 5.5)]
    return [["dvc", "repro", "-f", "-s", stage]] * (rounds or 3)


def summary(variants: list[Variant]) -> str:
    """One line per variant: every round, the median, and the median's ratio to the workspace's."""
    reference = statistics.median(next(v for v in variants if v.commit is None).seconds)
    width = max(len(v.label) for v in variants)
    lines = []
    for variant in variants:
        median = statistics.median(variant.seconds)
        rounds = ", ".join(f"{s:.1f}" for s in variant.seconds)
        lines.append(f"{variant.label:<{width}}  median {median:5.1f} s  ({median / reference:.2f}x the workspace)"
                     f"  rounds: {rounds}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[Variant]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archive", type=Path, required=True, help="a CIFAR-10 archive (a local path)")
    parser.add_argument("--md5", required=True, help="the archive's md5")
    parser.add_argument("--format", default="cifar10", choices=("cifar10", "imagefolder"))
    parser.add_argument("--variant", type=parse_variant, action="append", default=[],
                        help="LABEL=COMMIT[:KEY=VALUE,...], compared with this checkout")
    parser.add_argument("--temperatures", type=_temperatures,
                        help="distill_kd.T of each round, comma-separated (default 3.5,4.5,5.5: three rounds)")
    parser.add_argument("--stage", help="rerun this stage alone in each round (dvc repro -f -s) instead of an experiment")
    parser.add_argument("--rounds", type=int, help="rounds of --stage (default 3)")
    parser.add_argument("--epochs", type=int, default=1, help="train.epochs of every project (default 1)")
    parser.add_argument("--keep", type=Path, help="work here and keep the projects (default: a temporary folder)")
    args = parser.parse_args(argv)
    if not args.archive.is_file():
        parser.error(f"--archive {args.archive}: no such file")
    if args.epochs < 1:
        parser.error("--epochs must be at least 1")
    if args.rounds is not None and (args.stage is None or args.rounds < 1):
        parser.error("--rounds needs --stage and must be at least 1")
    if args.stage is not None and args.temperatures is not None:
        parser.error("--temperatures and --stage: a round is either an experiment or a stage's rerun")
    if args.stage is not None and args.stage not in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]:
        parser.error(f"--stage {args.stage}: no such stage in dvc.yaml")
    if shutil.which("dvc") is None:
        parser.error("no `dvc` on PATH: activate the project's environment (. .venv/bin/activate)")
    variants = [Variant(WORKSPACE, None), *args.variant]
    if len({v.label for v in variants}) < len(variants):
        parser.error(f"variant labels must differ (and not be {WORKSPACE!r})")
    for variant in args.variant:
        found = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{variant.commit}^{{commit}}"], cwd=ROOT,
                               capture_output=True, check=False)
        if found.returncode != 0:
            parser.error(f"--variant {variant.label}={variant.commit}: no such commit")
    base = args.keep or Path(tempfile.mkdtemp(prefix="edit-loop-"))
    projects = {}
    for index, variant in enumerate(variants):
        project = checkout(variant, base / f"variant-{index}")
        configure(project, args.archive, args.md5, args.format, args.epochs)
        env = {**os.environ, "DVC_NO_ANALYTICS": "true", "MLFLOW_DISABLE_TELEMETRY": "true", **variant.env}
        env.pop("MLFLOW_TRACKING_URI", None)
        print(f"{variant.label}: first dvc repro in {project}", flush=True)
        seconds = timed(["dvc", "repro"], project, env, project / "benchmark.log")
        print(f"{variant.label}: dvc repro took {seconds:.1f} s (not in the medians)", flush=True)
        projects[variant.label] = project, env
    for round_index, command in enumerate(round_commands(args.stage, args.rounds, args.temperatures), 1):
        for variant in variants:
            project, env = projects[variant.label]
            stop_leftovers(project)
            variant.seconds.append(timed(command, project, env, project / "benchmark.log"))
            print(f"round {round_index}: {variant.label}: {' '.join(command[1:])}: {variant.seconds[-1]:.1f} s",
                  flush=True)
    stop_leftovers(base)
    print(summary(variants))
    if args.keep is None:
        shutil.rmtree(base)
    return variants


if __name__ == "__main__":
    main()
