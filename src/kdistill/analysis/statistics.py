"""Honest statistics over seeds: Student-t intervals, paired by seed where both sides share seeds.

A method is called better or worse only when its whole 95% interval lies on one side of zero;
with one seed nothing can be told, and the tutorial's own gaps between methods are within noise.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from scipy.special import stdtrit

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float  # nan with fewer than two values: no interval can be estimated
    high: float
    n: int

    @classmethod
    def of(cls, values: list[float], confidence: float = CONFIDENCE) -> Interval:
        """The mean of ``values`` and its Student-t interval (for paired differences: the paired t-test's)."""
        mean = statistics.fmean(values)
        if len(values) < 2:
            return cls(mean, math.nan, math.nan, len(values))
        sem = statistics.stdev(values) / math.sqrt(len(values))
        # Student-t's quantile straight from scipy.special: scipy.stats would add its heavy imports to every report.
        half = float(stdtrit(len(values) - 1, 0.5 + confidence / 2)) * sem
        return cls(mean, mean - half, mean + half, len(values))

    @classmethod
    def welch(cls, new: list[float], old: list[float], confidence: float = CONFIDENCE) -> Interval:
        """mean(new) - mean(old) with Welch's interval: unpaired, unequal variances."""
        from scipy import stats  # only a review of experiments with different seeds needs it

        mean = statistics.fmean(new) - statistics.fmean(old)
        if min(len(new), len(old)) < 2:
            return cls(mean, math.nan, math.nan, min(len(new), len(old)))
        if stats.tvar(new) == stats.tvar(old) == 0:
            return cls(mean, mean, mean, min(len(new), len(old)))
        result = stats.ttest_ind(new, old, equal_var=False).confidence_interval(confidence)
        return cls(mean, float(result.low), float(result.high), min(len(new), len(old)))

    def excludes_zero(self) -> bool | None:
        return None if math.isnan(self.low) else (self.low > 0 or self.high < 0)

    def text(self) -> str:
        if math.isnan(self.low):
            return f"{self.mean:.2f}"
        return f"{self.mean:.2f} [{self.low:.2f}, {self.high:.2f}]"


def verdict(difference: Interval, better: str = "helps", worse: str = "hurts") -> str:
    if difference.excludes_zero() is None:
        return f"cannot tell ({difference.n} seed)"
    if not difference.excludes_zero():
        return "no detectable difference"
    return better if difference.low > 0 else worse
