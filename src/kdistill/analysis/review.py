"""`kdistill review`: what a change did to each method, and whether that is more than seed noise.

Both sides are read through DVC's API (params and metrics at a git revision, a DVC experiment or
the workspace) and compared per method: the difference paired by seed over the seeds both sides
share, Welch's unpaired interval when their seeds differ, and a verdict. The output is Markdown
for a pull request.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kdistill.analysis.statistics import Interval, verdict
from kdistill.control.params import flatten
from kdistill.control.registry import TRAININGS
from kdistill.errors import KdistillError
from kdistill.layout import Layout

WORKSPACE = "workspace"


class ReviewError(KdistillError):
    """A side cannot be reviewed (unknown revision, no results); the message says which and why."""


@dataclass
class Side:
    name: str  # as the user wrote it: HEAD, main, an experiment name, workspace
    params: dict[str, Any]
    results: dict[str, dict] = field(default_factory=dict)  # stage -> {"per_seed": ..., "mlflow_run_ids": ...}


def _runs_path(layout: Layout, stage: str) -> str:
    return layout.runs(stage).relative_to(layout.root).as_posix()


def read_side(root: Path, name: str) -> Side:
    """Params and per-seed results at ``name`` (a git revision, a DVC experiment or ``workspace``)."""
    import dvc.api
    from dvc.exceptions import PathMissingError
    from dvc.repo import Repo
    from dvc.scm import RevError, resolve_rev

    layout = Layout(root)
    if name == WORKSPACE:
        params = flatten(yaml.safe_load(layout.params.read_text()))
        results = {stage: json.loads(layout.runs(stage).read_text()) for stage in TRAININGS
                   if layout.runs(stage).is_file()}
        return Side(name, params, results)
    with Repo(str(root)) as repo:
        try:
            rev = resolve_rev(repo.scm, name)
        except RevError:
            raise ReviewError(f"{name!r} is neither a git revision nor a DVC experiment here") from None
    params = flatten(dvc.api.params_show(repo=str(root), rev=rev))
    results = {}
    for stage in TRAININGS:
        try:
            results[stage] = json.loads(dvc.api.read(_runs_path(layout, stage), repo=str(root), rev=rev))
        except (FileNotFoundError, PathMissingError):  # a stage not run there, or no dvc.lock at all
            continue
    return Side(name, params, results)


@dataclass(frozen=True)
class Row:
    stage: str
    label: str
    baseline: Interval | None
    candidate: Interval | None
    shared: int
    paired: Interval | None
    welch: Interval | None
    verdict: str


def compare(stage: str, label: str, old: Mapping[str, float] | None, new: Mapping[str, float] | None) -> Row:
    """One method's row: both sides' means, paired and Welch differences, the verdict."""
    if old is None or new is None:
        side = "candidate" if old is None else "baseline"
        return Row(stage, label, old and Interval.of(list(old.values())), new and Interval.of(list(new.values())),
                   0, None, None, f"only in the {side}")
    shared = sorted(set(old) & set(new), key=int)
    paired = Interval.of([new[s] - old[s] for s in shared]) if shared else None
    welch = Interval.welch(list(new.values()), list(old.values())) if set(old) != set(new) else None
    if dict(old) == dict(new):
        judged = "unchanged"
    else:
        basis = paired if paired is not None and paired.n >= 2 else welch or paired
        judged = verdict(basis, "better", "worse")
        if judged.startswith("cannot tell"):
            judged = "cannot tell with fewer than two seeds"
    return Row(stage, label, Interval.of(list(old.values())), Interval.of(list(new.values())), len(shared), paired,
               welch, judged)


def rows(baseline: Side, candidate: Side) -> list[Row]:
    stages = [s for s in TRAININGS if s in baseline.results or s in candidate.results]
    if not baseline.results:
        raise ReviewError(f"{baseline.name!r} has no results (metrics/runs/*.json): run the pipeline there, "
                          "or name a revision or experiment that has them")
    if not candidate.results:
        raise ReviewError(f"{candidate.name!r} has no results (metrics/runs/*.json): run the pipeline there, "
                          "or name a revision or experiment that has them")
    return [compare(stage, TRAININGS[stage].label, baseline.results.get(stage, {}).get("per_seed"),
                    candidate.results.get(stage, {}).get("per_seed")) for stage in stages]


def _run_links(side: Side, stage: str) -> str:
    ids = side.results.get(stage, {}).get("mlflow_run_ids", {})
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri.startswith(("http://", "https://")):
        return ", ".join(run_id[:8] for run_id in ids.values())
    return ", ".join(f"[{run_id[:8]}]({uri.rstrip('/')}/#/runs/{run_id})" for run_id in ids.values())


def markdown(baseline: Side, candidate: Side, table: list[Row]) -> str:
    changed = sorted(key for key in set(baseline.params) | set(candidate.params)
                     if baseline.params.get(key) != candidate.params.get(key))
    lines = [f"# Review: `{baseline.name}` → `{candidate.name}`", "", "## Params that differ", ""]
    if changed:
        lines += [f"| param | {baseline.name} | {candidate.name} |", "|---|---|---|"]
        lines += [f"| `{key}` | {baseline.params.get(key, '—')} | {candidate.params.get(key, '—')} |" for key in changed]
    else:
        lines.append("None.")
    lines += ["", "## Methods (test accuracy %, mean over seeds; differences in points, 95% CI)", "",
              f"| method | {baseline.name} | {candidate.name} | shared seeds | paired difference | Welch difference "
              f"| verdict | MLflow runs ({baseline.name} / {candidate.name}) |",
              "|---|---:|---:|---:|---|---|---|---|"]
    for row in table:
        cells = [row.label, _mean(row.baseline), _mean(row.candidate), str(row.shared),
                 row.paired.text() if row.paired else "—", row.welch.text() if row.welch else "—", row.verdict,
                 f"{_run_links(baseline, row.stage) or '—'} / {_run_links(candidate, row.stage) or '—'}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "A method is *better* or *worse* only when its whole 95% interval lies on one side of zero: the "
              "paired interval over shared seeds (same initial weights and batch order), else Welch's. Same "
              "per-seed results on both sides: *unchanged*."]
    return "\n".join(lines) + "\n"


def _mean(interval: Interval | None) -> str:
    return "—" if interval is None else f"{interval.mean:.2f} (n={interval.n})"


def review(root: Path, baseline: str, candidate: str) -> tuple[str, list[Row]]:
    old, new = read_side(root, baseline), read_side(root, candidate)
    table = rows(old, new)
    return markdown(old, new, table), table
