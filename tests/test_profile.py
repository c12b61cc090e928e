"""A stage's record says where its seconds went: phases timed exclusively, adding up to the total."""

from __future__ import annotations

import time

import pytest

import kdistill
from kdistill.pipeline import Stopwatch


def test_nested_phases_count_for_the_inner_one_only_and_everything_adds_up(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])
    monkeypatch.setattr(kdistill, "LOADING_SINCE", 97.0)  # 3 s of imports before the first line of work
    clock = Stopwatch()
    with clock("tracking"):
        now[0] += 1
        with clock("training"):
            now[0] += 10
            with clock("model export"):
                now[0] += 2
        now[0] += 0.5
    with clock("training"):
        now[0] += 5
    now[0] += 0.25  # covered by no phase
    profile = clock.profile(epochs=12.0)
    assert profile == {"start-up": 3.0, "tracking": 1.5, "model export": 2.0, "epochs": 12.0,
                       "checkpoints and per-epoch logging": 3.0, "other": 0.25, "total": 21.75}
    assert sum(v for k, v in profile.items() if k != "total") == pytest.approx(profile["total"])
