"""Metric batches in the core: which canary and control batches count for a
running cycle, and how live batches fill the next cycle's analysis window.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest

from core_driver import T0, at, booted
from vvtv_autopilot.schemas.messages import rfc3339


def test_canary_batches_of_another_version_are_not_counted():
    d = booted()
    cid, _ = d.to_canary()
    vals = d.rng.normal(1.0, 0.1, 50)
    s = d.metric("selection_entropy", "canary", "not-the-candidate", vals, at(5))
    assert s.counters == {"ignored_arm_samples": 50} and not s.cycle_rows
    assert "selection_entropy" not in d.ap.running().data.canary
    s = d.metric("selection_entropy", "canary", d.candidate, vals, at(5))
    assert s.counters == {"canary_samples": 50} and s.cycle_rows
    s = d.metric("selection_entropy", "canary", None, vals, at(6))   # unlabelled: counted
    assert s.counters == {"canary_samples": 50}
    s = d.metric("selection_entropy", "control", None, vals, at(6))
    assert s.counters == {"canary_samples": 50}
    s = d.metric("selection_entropy", "shadow", None, vals, at(6))
    assert s.counters == {"ignored_arm_samples": 50}
    data = d.ap.running().data
    assert data.canary["selection_entropy"].n == 100 and data.control["selection_entropy"].n == 50


def test_arm_batches_without_a_canary_are_ignored():
    d = booted()
    s = d.metric("selection_entropy", "canary", None, [1.0, 2.0], at(1))
    assert s.counters == {"ignored_arm_samples": 2}


def test_unconfigured_kpi_is_counted_as_ignored():
    d = booted()
    cid, _ = d.to_canary()
    s = d.metric("watch_time", "canary", d.candidate, [1.0, 2.0, 3.0], at(5))
    assert s.counters == {"ignored_kpi": 1}
    s = d.metric("watch_time", "live", None, [1.0, 2.0, 3.0], at(5))
    assert s.counters == {"ignored_kpi": 1}
    assert "watch_time" not in d.ap.running().data.canary and "watch_time" not in d.ap.state.live


def test_live_batches_feed_the_next_cycles_analysis_window():
    d = booted()
    rng = np.random.default_rng(3)
    old = rng.normal(5.0, 1.0, 40)            # 30 hours before the cycle: outside the 24 h window
    recent = [rng.normal(1.0, 0.1, 100), rng.normal(1.2, 0.1, 60)]
    d.metric("selection_entropy", "live", None, old, rfc3339(T0 - timedelta(hours=30)))
    d.metric("selection_entropy", "live", None, recent[0], rfc3339(T0 - timedelta(hours=3, minutes=10)))
    s = d.metric("selection_entropy", "live", None, recent[1], rfc3339(T0 - timedelta(minutes=20)))
    assert s.counters == {"live_samples": 60}
    buckets = d.ap.state.live["selection_entropy"]
    assert sorted(buckets) == [rfc3339(T0 - timedelta(hours=30)), rfc3339(T0 - timedelta(hours=4)),
                               rfc3339(T0 - timedelta(hours=1))]
    # live batches do not touch a canary
    s = d.command("run-now", at(1))
    analysis = d.ap.running().data.analysis
    assert analysis["window_hours"] == 24
    se = analysis["kpis"]["selection_entropy"]
    both = np.concatenate(recent)
    assert se["n"] == 160
    assert se["mean"] == pytest.approx(both.mean(), rel=1e-12)
    assert se["variance"] == pytest.approx(both.var(ddof=1), rel=1e-9)
    assert analysis["kpis"]["error_rate"]["n"] == 0
    assert s.transitions[0].detail["analysis"] == analysis


def test_live_buckets_are_pruned_beyond_the_window():
    d = booted(analysis_window_hours=2)
    for h in range(10):
        d.metric("error_rate", "live", None, [0.01, 0.02], rfc3339(T0 + timedelta(hours=h, minutes=30)))
    buckets = d.ap.state.live["error_rate"]
    assert len(buckets) <= 2 + 2
    assert max(buckets) == rfc3339(T0 + timedelta(hours=9))
