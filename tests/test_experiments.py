"""Experiments on the real pipeline (a tiny CIFAR-10-layout archive, 1 epoch, two seeds): diffs between
commits, and `kdistill review` of two experiments."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from conftest import PIPELINE_SEEDS
from helpers import BIN, commit_all, repro, set_param, sh
from kdistill.control.registry import METHODS, TRAININGS

pytestmark = pytest.mark.e2e
SEEDS = PIPELINE_SEEDS
TRAINING_STAGES = list(TRAININGS)


def test_params_and_metrics_diff_between_two_commits(restored):
    project, env, _ = restored
    commit_all(project, env, "baseline results")  # the first run's, at the default T=2
    set_param(project, "distill_kd.T", 8)  # a temperature no other test uses: DVC's run-cache cannot restore it
    assert repro(project, env) == {"check_params", "distill_kd", "report"}
    commit_all(project, env, "T=8")
    params_diff = json.loads(sh(str(BIN / "dvc"), "params", "diff", "HEAD~1", "HEAD", "--json", cwd=project, env=env))
    changed = params_diff["params.yaml"]
    assert list(changed) == ["distill_kd.T"] and (changed["distill_kd.T"]["old"], changed["distill_kd.T"]["new"]) == (2, 8)
    metrics_diff = json.loads(sh(str(BIN / "dvc"), "metrics", "diff", "HEAD~1", "HEAD", "--all", "--json",
                                 cwd=project, env=env))
    kd = metrics_diff["metrics/distill_kd.json"]
    assert "test_accuracy" in kd and kd["test_accuracy"]["new"] == json.loads(
        (project / "metrics" / "distill_kd.json").read_text())["test_accuracy"]
    assert "metrics/train_teacher.json" not in metrics_diff or not any(
        "diff" in v and v["diff"] for v in metrics_diff["metrics/train_teacher.json"].values())


def test_review_compares_two_experiments_over_three_seeds(restored):
    import dvc.api

    project, env, _ = restored
    commit_all(project, env, "before the review")
    # Only distill_kd (and what it depends on) runs: the other methods keep their two seeds on both sides.
    for name, temperature in (("kd-t2", 2), ("kd-t4", 4)):
        output = sh(str(BIN / "dvc"), "exp", "run", "-n", name, "-S", "seeds=[42,7,3]", "-S",
                    f"distill_kd.T={temperature}", "distill_kd", cwd=project, env=env)
        # The teacher is upstream of distill_kd: a change of the students' seeds must not retrain it.
        assert set(re.findall(r"Running stage '(\w+)'", output)) == {"check_params", "distill_kd"}, output
    review = [sys.executable, "-m", "kdistill.cli", "review", "--baseline", "kd-t2", "--candidate", "kd-t4"]
    result = subprocess.run([*review, "--fail-on-regression"], cwd=project, capture_output=True, text=True,
                            env={**env, "PYTHONPATH": "src"}, timeout=300)
    text = result.stdout
    assert "| `distill_kd.T` | 2 | 4 |" in text and "`seeds`" not in text, text

    def per_seed(rev: str) -> dict[str, float]:
        return json.loads(dvc.api.read("metrics/runs/distill_kd.json", repo=str(project), rev=rev))["per_seed"]

    old, new = per_seed("kd-t2"), per_seed("kd-t4")
    assert sorted(old) == sorted(new) == ["3", "42", "7"]
    seeds = sorted(old)
    paired = stats.ttest_rel([new[s] for s in seeds], [old[s] for s in seeds])
    kd_row = next(line for line in text.splitlines() if line.startswith("| Student, CE + KD |"))
    cells = [cell.strip() for cell in kd_row.strip("|").split("|")]
    assert cells[1:4] == [f"{np.mean(list(old.values())):.2f} (n=3)", f"{np.mean(list(new.values())):.2f} (n=3)", "3"]
    if np.isfinite(paired.statistic):
        low, high = paired.confidence_interval(0.95)
        assert cells[4] == f"{np.mean([new[s] - old[s] for s in seeds]):.2f} [{low:.2f}, {high:.2f}]"
        worse = high < 0
    else:
        worse = np.mean([new[s] - old[s] for s in seeds]) < 0
    assert result.returncode == (1 if worse else 0), result.stderr
    for label in (m.label for name, m in METHODS.items() if name != "distill_kd"):
        assert f"| {label} |" in text and "unchanged" in next(line for line in text.splitlines()
                                                             if line.startswith(f"| {label} |"))
    unknown = subprocess.run([*review[:-1], "no-such-experiment"], cwd=project, capture_output=True, text=True,
                             env={**env, "PYTHONPATH": "src"}, timeout=300)
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr
    assert "'no-such-experiment' is neither a git revision nor a DVC experiment" in unknown.stderr
