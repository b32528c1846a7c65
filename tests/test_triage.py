"""Weekly incident triage: schedule edge cases, categories, the patch threshold, suggested
bounds (inside the hard limits, containing the last known-good value), and issue drafts."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from vvtv_autopilot.handlers import triage as T
from vvtv_autopilot.handlers.bounds import ParameterBounds
from vvtv_autopilot.handlers.drift import CycleSummary, DriftEvent
from vvtv_autopilot.schemas.config import IncidentTriageConfig
from vvtv_autopilot.schemas.messages import rfc3339

UTC = timezone.utc
NOW = datetime(2026, 11, 29, 2, 0, tzinfo=UTC)          # a Sunday, 02:00
CFG = IncidentTriageConfig()
PARAM = "selection.diversity_weight"


def at(days_before: float) -> str:
    return rfc3339(NOW - timedelta(days=days_before))


def cyc(cid: str, days_before: float, outcome: str, *, params=(PARAM,), error=None, harmed=(), rule=None):
    return CycleSummary(cycle_id=cid, ended_at=at(days_before), outcome=outcome, error=error,
                        gate_rule=rule, harmed_kpis=list(harmed), parameters=list(params))


def bounds(lo=0.25, hi=0.35, cur=0.3, lkg=0.3, hard=(0.1, 0.6), name=PARAM) -> ParameterBounds:
    return ParameterBounds(parameter_name=name, min_value=lo, max_value=hi, current_value=cur,
                           hard_min=hard[0], hard_max=hard[1], last_known_good=lkg, last_updated=at(30))


def drift_event(days_before: float, params=(PARAM,), n=0) -> DriftEvent:
    t = at(days_before)
    act = {"kind": "ContractBounds", "parameters": list(params)}
    return DriftEvent(event_id=f"PredictionErrorHigh:{t}:{n}", event_type="PredictionErrorHigh", detected_at=t,
                      metrics={"trigger": "cusum"}, action_taken=act, actions=[act, {"kind": "TriggerIncidentTriage"}])


# --- schedule --------------------------------------------------------------------------------


@pytest.mark.parametrize("now, schedule, expected", [
    # exactly at the time: strictly after, so next week
    (datetime(2026, 11, 29, 2, 0, tzinfo=UTC), "Sunday 02:00", datetime(2026, 12, 6, 2, 0, tzinfo=UTC)),
    # a microsecond before
    (datetime(2026, 11, 29, 1, 59, 59, 999999, tzinfo=UTC), "Sunday 02:00", datetime(2026, 11, 29, 2, 0, tzinfo=UTC)),
    # a second after
    (datetime(2026, 11, 29, 2, 0, 1, tzinfo=UTC), "Sunday 02:00", datetime(2026, 12, 6, 2, 0, tzinfo=UTC)),
    # across the week boundary: Sunday night -> Monday just after midnight
    (datetime(2026, 11, 29, 23, 0, tzinfo=UTC), "Monday 00:30", datetime(2026, 11, 30, 0, 30, tzinfo=UTC)),
    # Saturday -> Sunday, and across a year boundary
    (datetime(2026, 12, 26, 12, 0, tzinfo=UTC), "Sunday 02:00", datetime(2026, 12, 27, 2, 0, tzinfo=UTC)),
    (datetime(2026, 12, 28, 0, 0, tzinfo=UTC), "sunday 02:00", datetime(2027, 1, 3, 2, 0, tzinfo=UTC)),
    # the same weekday, earlier in the day
    (datetime(2026, 11, 25, 1, 0, tzinfo=UTC), "Wednesday 23:59", datetime(2026, 11, 25, 23, 59, tzinfo=UTC)),
    # another offset: 2026-11-29 03:30+02:00 is 01:30Z, before 02:00Z
    (datetime(2026, 11, 29, 3, 30, tzinfo=timezone(timedelta(hours=2))), "Sunday 02:00",
     datetime(2026, 11, 29, 2, 0, tzinfo=UTC)),
])
def test_next_weekly_at(now, schedule, expected):
    got = T.next_weekly_at(now, schedule)
    assert got == expected and got.tzinfo == UTC and got > now


def test_next_weekly_at_refuses_bad_input():
    with pytest.raises(ValueError):
        T.next_weekly_at(datetime(2026, 1, 1), "Sunday 02:00")
    for bad in ("Sun 02:00", "Sunday 24:00", "Sunday", "Sunday 2:00"):
        with pytest.raises(ValueError):
            T.next_weekly_at(NOW, bad)


@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)),
       st.sampled_from(T._DAYS), st.integers(0, 23), st.integers(0, 59))
def test_next_weekly_at_properties(naive, day, hour, minute):
    now = naive.replace(tzinfo=UTC)
    got = T.next_weekly_at(now, f"{day.capitalize()} {hour:02d}:{minute:02d}")
    assert now < got <= now + timedelta(days=7)
    assert (got.weekday(), got.hour, got.minute, got.second, got.microsecond) == (T._DAYS.index(day), hour, minute, 0, 0)


# --- categories ----------------------------------------------------------------------------


def test_categorize_failures():
    history = [
        cyc("harm", 1, "RolledBack", harmed=["error_rate"], rule="harm beyond margin"),
        cyc("timeout", 2, "Failed", error="timeout: active work exceeded max_execution_time_minutes=10 in Canary"),
        cyc("apply", 2.5, "Failed", error="canary apply failed: disk full"),
        cyc("live", 3, "RolledBack", error="live apply failed: boom"),
        cyc("golden", 4, "Failed", error="golden-set validation failed"),
        cyc("ok", 1, "Deployed"),
        cyc("none", 1, "NoChange"),
        cyc("abort", 1, "Aborted", error="aborted by operator"),
        cyc("old", 8, "RolledBack"),                 # outside the 7-day window
        cyc("edge", 7, "RolledBack"),                # exactly at start: excluded (half-open)
        cyc("end", 0, "Failed", error="canary apply failed: x"),   # exactly at end: included
    ]
    events = [drift_event(1), drift_event(9)]
    out = T.categorize_failures(history, events, start=NOW - timedelta(days=7), end=NOW)
    ids = {k: [f.cycle_id for f in v] for k, v in out.items()}
    assert set(out) == set(T.CATEGORIES)
    assert ids["PerformanceDegradation"] == ["harm"]
    assert ids["StabilityIssues"] == ["live", "apply", "timeout", "end"]     # time order
    assert ids["ValidationFailures"] == ["golden"]
    assert ids["CanaryRollbacks"] == ["live", "harm"]
    assert ids["DriftDetection"] == [drift_event(1).event_id]
    assert out["DriftDetection"][0].parameters == [PARAM]
    assert "timeout" in out["StabilityIssues"][2].detail and "apply failure" in out["StabilityIssues"][1].detail
    assert "error_rate" in out["PerformanceDegradation"][0].detail


# --- patch suggestions ---------------------------------------------------------------------


def test_patch_threshold_counts_distinct_incidents():
    b = {PARAM: bounds(), "other": bounds(name="other")}
    # 'harm' falls in two categories but is one incident: 2 incidents < 3
    two = [cyc("harm", 1, "RolledBack", harmed=["k"]), cyc("g", 2, "Failed", error="golden-set validation failed")]
    f2 = T.categorize_failures(two, [], start=NOW - timedelta(days=7), end=NOW)
    assert T.generate_patch_suggestions(f2, b, CFG) == []
    three = two + [cyc("rb", 3, "RolledBack", params=(PARAM, "other"))]
    f3 = T.categorize_failures(three, [], start=NOW - timedelta(days=7), end=NOW)
    (s,) = T.generate_patch_suggestions(f3, b, CFG)
    assert s.parameter == PARAM and s.failures == 3 and s.incidents == ["g", "harm", "rb"]
    assert s.category == "CanaryRollbacks"                       # 2 of its incidents
    assert s.confidence == pytest.approx(3 / 6)
    assert "3 incidents" in s.rationale and "last known-good" in s.rationale
    six = three + [cyc(f"x{i}", 1, "RolledBack") for i in range(4)]
    f6 = T.categorize_failures(six, [drift_event(2)], start=NOW - timedelta(days=7), end=NOW)
    (s6,) = T.generate_patch_suggestions(f6, b, CFG)
    assert s6.failures == 8 and s6.confidence == 1.0
    # a parameter without bounds gets no suggestion; the threshold is the config's
    assert T.generate_patch_suggestions(f3, {}, CFG) == []
    assert [x.parameter for x in T.generate_patch_suggestions(
        f3, b, IncidentTriageConfig(failure_threshold_for_patch=1))] == ["other", PARAM]


def test_suggested_bounds_contract_toward_last_known_good():
    assert T.suggested_range(bounds(0.2, 0.4, lkg=0.3)) == pytest.approx((0.225, 0.375))
    assert T.suggested_range(bounds(0.2, 0.4, lkg=0.2)) == pytest.approx((0.2, 0.35))
    # last known-good outside the sliding range: the range first stretches to contain it
    assert T.suggested_range(bounds(0.3, 0.4, cur=0.35, lkg=0.2)) == pytest.approx((0.2, 0.35))


@given(st.floats(-1e6, 1e6), st.floats(1e-6, 1e6), st.floats(0, 1), st.floats(0, 1), st.floats(-0.5, 1.5),
       st.floats(0, 0.99))
def test_suggested_bounds_within_hard_limits_and_contain_last_known_good(hmin, span, a, b, k, c):
    hmax = hmin + span
    lo, hi = sorted((hmin + a * span, hmin + b * span))
    lkg = hmin + k * span                          # may even lie outside the hard limits (stale row)
    pb = bounds(lo, hi, cur=lo, lkg=lkg, hard=(hmin, hmax))
    nlo, nhi = T.suggested_range(pb, c)
    anchor = min(max(lkg, hmin), hmax)
    assert hmin <= nlo <= anchor <= nhi <= hmax
    assert nhi - nlo <= max(hi, anchor) - min(lo, anchor) + 1e-9 * span


# --- the weekly report ---------------------------------------------------------------------------


def _week():
    return [cyc(f"rb{i}", i + 0.5, "RolledBack") for i in range(3)] + [cyc("ok", 1, "Deployed")]


def test_run_weekly_triage_without_github():
    report = T.run_weekly_triage(_week(), [], {PARAM: bounds()}, CFG, now=NOW, report_id="triage-2026-W48")
    assert report.analysis_period == (at(7), rfc3339(NOW)) and report.generated_at == rfc3339(NOW)
    assert report.failure_counts["CanaryRollbacks"] == 3
    assert [s.parameter for s in report.patch_suggestions] == [PARAM]
    # drafts are there for a person even with the switch off, and nothing is to be sent
    (draft,) = report.github_issues
    assert draft.created is False and draft.number is None and PARAM in draft.title
    assert T.github_issues_effect(report, CFG, new_id=lambda p: pytest.fail("no effect when off")) == []
    (adj,) = report.bounds_adjustments
    assert adj["applied"] is False and adj["parameter"] == PARAM
    assert adj["new_range"] == list(report.patch_suggestions[0].suggested_bounds)
    encoded = msgspec.json.encode(report)
    assert msgspec.json.decode(encoded, type=T.TriageReport) == report


def test_run_weekly_triage_drafts_issues_when_enabled_never_sends():
    cfg = IncidentTriageConfig(github_integration_enabled=True,
                               github={"repository": "vvtv/ops", "labels": ["autopilot", "ops"], "assignees": ["alice"]})
    report = T.run_weekly_triage(_week(), [], {PARAM: bounds()}, cfg, now=NOW, report_id="r1")
    (issue,) = report.github_issues
    assert issue.created is False
    assert PARAM in issue.title and "r1" in issue.body
    assert issue.labels == ["autopilot", "ops", "CanaryRollbacks"] and issue.assignees == ["alice"]
    assert issue.key == f"{PARAM}/CanaryRollbacks"
    assert T.issue_marker(issue.key) in issue.body and T.report_marker("r1") in issue.body
    assert T.report_marker("r1") in issue.comment and "r1" in issue.comment
    # the switch on: one outbox effect carrying the drafts (the core decides, infra sends)
    ids = []
    (effect,) = T.github_issues_effect(report, cfg, new_id=lambda purpose: ids.append(purpose) or "e1")
    assert ids == ["github"] and effect.effect_id == "e1" and effect.kind == "github_issues"
    assert effect.body["repository"] == "vvtv/ops" and effect.body["report_id"] == "r1"
    assert effect.body["issues"] == [msgspec.to_builtins(issue)]
    empty = T.run_weekly_triage([], [], {PARAM: bounds()}, cfg, now=NOW, report_id="r2")
    assert T.github_issues_effect(empty, cfg, new_id=lambda p: "x") == []   # nothing to file
    # pure: same inputs, same report
    again = T.run_weekly_triage(_week(), [], {PARAM: bounds()}, cfg, now=NOW, report_id="r1")
    assert msgspec.json.encode(again) == msgspec.json.encode(report)
