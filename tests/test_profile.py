"""A stage's record says where its seconds went: nested phases timed exclusively, the rest called "other"."""

from __future__ import annotations

import time

import kdistill
from kdistill.pipeline.training import Stopwatch


def test_nested_phases_count_for_the_inner_one_only(monkeypatch):
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
