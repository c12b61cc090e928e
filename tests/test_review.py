"""`kdistill review`'s rows against scipy, and its one-line errors."""

import os
import subprocess
import sys

import pytest
from scipy import stats

from helpers import commit_all, copy_project, sh
from kdistill.analysis.review import ReviewError, Side, compare, markdown, rows

OLD = {"42": 68.0, "43": 69.1, "44": 67.5}
NEW = {"42": 69.5, "43": 70.2, "44": 69.4}


def test_paired_difference_over_shared_seeds_is_scipys():
    row = compare("distill_kd", "KD", OLD, NEW)
    expected = stats.ttest_rel([NEW[s] for s in OLD], [OLD[s] for s in OLD]).confidence_interval(0.95)
    assert row.shared == 3 and row.welch is None
    assert (row.paired.low, row.paired.high) == pytest.approx((expected.low, expected.high))
    assert row.verdict == ("better" if expected.low > 0 else "no detectable difference")


def test_different_seeds_get_welchs_interval_and_it_decides_without_two_shared_seeds():
    old, new = {"1": 60.0, "2": 61.0, "3": 60.5}, {"3": 66.0, "4": 65.5, "5": 66.4}
    row = compare("distill_kd", "KD", old, new)
    expected = stats.ttest_ind(list(new.values()), list(old.values()), equal_var=False).confidence_interval(0.95)
    assert row.shared == 1 and row.paired.n == 1
    assert (row.welch.low, row.welch.high) == pytest.approx((expected.low, expected.high))
    assert row.verdict == "better"


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (OLD, dict(OLD), "unchanged"),
        (OLD, {s: v - 3 for s, v in OLD.items()}, "worse"),
        ({"42": 68.0}, {"42": 70.0}, "cannot tell with fewer than two seeds"),
        (None, OLD, "only in the candidate"),
        (OLD, None, "only in the baseline"),
    ],
)
def test_verdicts(old, new, expected):
    assert compare("distill_kd", "KD", old, new).verdict == expected


def test_markdown_names_the_changed_params_and_every_method():
    old = Side("HEAD", {"distill_kd.T": 2, "seeds": [42]}, {"distill_kd": {"per_seed": OLD, "mlflow_run_ids": {}}})
    new = Side("workspace", {"distill_kd.T": 4, "seeds": [42]}, {"distill_kd": {"per_seed": NEW, "mlflow_run_ids": {}}})
    text = markdown(old, new, rows(old, new))
    assert "| `distill_kd.T` | 2 | 4 |" in text and "`seeds`" not in text
    assert "| Student, CE + KD | 68.20 (n=3) | 69.70 (n=3) | 3 |" in text


def test_a_side_without_results_is_one_clear_error():
    with pytest.raises(ReviewError, match="'HEAD' has no results"):
        rows(Side("HEAD", {}), Side("workspace", {}, {"distill_kd": {"per_seed": OLD}}))


def test_a_commit_without_results_is_one_clear_error_from_the_cli(tmp_path):
    """`make review` in a fresh clone: HEAD holds no dvc.lock, so DVC finds no results file there at all."""
    project = copy_project(tmp_path / "clone")
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    sh("git", "init", "-q", cwd=project, env=env)
    commit_all(project, env, "code only")
    result = subprocess.run([sys.executable, "-m", "kdistill.cli", "review", "--baseline", "HEAD", "--candidate",
                             "workspace"], cwd=project, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "'HEAD' has no results (metrics/runs/*.json)" in result.stderr
