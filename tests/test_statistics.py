"""Intervals and verdicts against values computed independently: scipy's own tests, and by hand."""

import math

import numpy as np
import pytest
from scipy import stats

from kdistill.analysis.statistics import Interval, verdict


def test_interval_is_scipys_one_sample_t_interval():
    values = [62.1, 63.4, 61.8, 64.0, 62.9]
    expected = stats.ttest_1samp(values, 0).confidence_interval(0.95)
    interval = Interval.of(values)
    assert (interval.low, interval.high) == pytest.approx((expected.low, expected.high))
    assert interval.mean == pytest.approx(np.mean(values)) and interval.n == 5


def test_paired_interval_by_hand():
    # differences 1, 2, 3: mean 2, sd 1, sem 1/sqrt(3), t(0.975, 2) = 4.302653
    interval = Interval.of([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)
    assert (interval.low, interval.high) == pytest.approx((2 - half, 2 + half), rel=1e-9)


@pytest.mark.parametrize(
    ("differences", "expected"),
    [
        ([1.0, 1.2, 0.9, 1.1, 1.05], "helps"),
        ([-1.0, -1.2, -0.9, -1.1, -1.05], "hurts"),
        ([1.0, -1.0, 0.5, -0.4, 0.1], "no detectable difference"),
        ([0.7], "cannot tell (1 seed)"),
    ],
)
def test_verdicts(differences, expected):
    assert verdict(Interval.of(differences)) == expected
    if len(differences) > 1:  # the verdict is exactly whether scipy's paired t-test rejects at 5%
        rejects = stats.ttest_1samp(differences, 0).pvalue < 0.05
        assert (expected in ("helps", "hurts")) == rejects


def test_identical_differences_have_a_zero_width_interval():
    interval = Interval.of([0.5, 0.5, 0.5])
    assert (interval.low, interval.high) == (0.5, 0.5) and verdict(interval) == "helps"


def test_welch_interval_is_scipys():
    new, old = [70.1, 70.9, 69.8, 71.2], [68.0, 69.5, 68.7]
    expected = stats.ttest_ind(new, old, equal_var=False).confidence_interval(0.95)
    interval = Interval.welch(new, old)
    assert interval.mean == pytest.approx(np.mean(new) - np.mean(old))
    assert (interval.low, interval.high) == pytest.approx((expected.low, expected.high))
    assert verdict(Interval.welch([70.0], old), "better", "worse") == "cannot tell (1 seed)"
