"""Weekly incident triage (README, "Anti-drift monitor and incident triage"): what
went wrong this week, and which bounds to tighten.

Pure: every function takes the history, the drift events, the bounds and
``now`` as arguments; nothing reads the clock, touches the network or writes a
file. :func:`run_weekly_triage` returns a :class:`TriageReport` (one row of
``triage_reports``). Its GitHub issues are *drafts* (``created=False``): this
module never sends anything. Drafts are written whether or not
``github_integration_enabled`` is set (with the switch off they are for a
person to read or file by hand); with the switch on,
:func:`github_issues_effect` turns them into one ``github_issues`` outbox
effect that infra sends (``infra/github.py``). Each draft carries two stable
markers in its body (HTML comments, invisible on GitHub): the issue key
``<parameter>/<category>`` and the report id, by which a retried or replayed
send finds what it already filed. Its ``bounds_adjustments`` are suggestions
for a human (``applied=False``); nothing here changes a bound.

Rules, exactly:

* **Window**: cycles whose ``ended_at`` and drift events whose ``detected_at``
  lie in ``(start, end]`` (half-open, so consecutive weekly windows never count
  a failure twice).
* **Categories** (a cycle may fall into several):

  - ``PerformanceDegradation``: the gate found harm in at least one KPI
    (``harmed_kpis``);
  - ``StabilityIssues``: an error that is not the golden set's (a timeout, an
    apply failure, anything else that made a cycle Failed), on any outcome, so
    a live apply failure that was rolled back counts here too;
  - ``ValidationFailures``: the golden-set validation failed;
  - ``CanaryRollbacks``: the cycle ended RolledBack;
  - ``DriftDetection``: a drift event; its parameters are those of its
    ``ContractBounds`` action.

  Aborted cycles (an operator's act) are not failures unless they carry harm.
* **Patch threshold**: a parameter involved in at least
  ``failure_threshold_for_patch`` distinct incidents (a cycle or a drift event,
  counted once however many categories it falls in) gets one
  :class:`PatchSuggestion`. Its category is the one with most of its incidents
  (ties: the order of :data:`CATEGORIES`).
* **Suggested bounds**: the current sliding range contracted toward the last
  known-good value ``a`` by ``PATCH_CONTRACTION`` (25 %):
  ``lo' = a - 0.75 (a - lo)``, ``hi' = a + 0.75 (hi - a)`` (after widening the
  range to contain ``a`` if needed), clipped to the hard limits. It always lies
  within the hard limits and contains ``a``.
* **Confidence**: ``min(1, count / (2 * failure_threshold_for_patch))``.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable, Mapping, Sequence

import msgspec

from ..schemas.config import IncidentTriageConfig
from ..schemas.events import Effect
from ..schemas.messages import parse_time, rfc3339
from .bounds import ParameterBounds
from .drift import CycleSummary, DriftEvent

CATEGORIES = ("PerformanceDegradation", "StabilityIssues", "ValidationFailures", "CanaryRollbacks",
              "DriftDetection")
PATCH_CONTRACTION = 0.25
_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_GOLDEN = re.compile(r"golden", re.IGNORECASE)
_TIMEOUT = re.compile(r"timed? ?out|timeout", re.IGNORECASE)
_APPLY = re.compile(r"apply", re.IGNORECASE)


class FailureInstance(msgspec.Struct, frozen=True, kw_only=True):
    cycle_id: str                   # the cycle, or the drift event's id for DriftDetection
    at: str                         # RFC 3339
    category: str
    parameters: list[str]
    detail: str


class PatchSuggestion(msgspec.Struct, frozen=True, kw_only=True):
    category: str
    parameter: str
    suggested_bounds: tuple[float, float]
    rationale: str
    confidence: float
    current_bounds: tuple[float, float] = (0.0, 0.0)
    last_known_good: float = 0.0
    failures: int = 0
    incidents: list[str] = []       # the cycle / event ids counted


class GitHubIssue(msgspec.Struct, frozen=True, kw_only=True):
    title: str
    body: str
    labels: list[str]
    created: bool = False           # a draft: this module never sends it (infra sets True once filed)
    key: str = ""                   # "<parameter>/<category>": one open issue per key
    assignees: list[str] = []
    comment: str = ""               # what to post instead when an open issue with this key exists
    # Set by infra after sending (stored in triage_reports.github_issues):
    action: str | None = None       # "created" | "commented" | "failed"
    number: int | None = None
    url: str | None = None          # the issue's (or the comment's) html_url
    error: str | None = None


class TriageReport(msgspec.Struct, frozen=True, kw_only=True):
    report_id: str
    generated_at: str
    analysis_period: tuple[str, str]
    failure_categories: dict[str, list[FailureInstance]]
    patch_suggestions: list[PatchSuggestion]
    github_issues: list[GitHubIssue]
    bounds_adjustments: list[dict[str, Any]]
    failure_counts: dict[str, int] = {}


# --- schedule ------------------------------------------------------------------------------


def parse_weekly(weekly_schedule_utc: str) -> tuple[int, int, int]:
    """``"Sunday 02:00"`` -> (weekday 0=Monday..6=Sunday, hour, minute)."""
    parts = weekly_schedule_utc.split()
    if len(parts) != 2 or parts[0].lower() not in _DAYS:
        raise ValueError(f"weekly schedule {weekly_schedule_utc!r} must be '<Weekday> HH:MM'")
    m = re.fullmatch(r"([01]\d|2[0-3]):([0-5]\d)", parts[1])
    if not m:
        raise ValueError(f"weekly schedule {weekly_schedule_utc!r}: time must be HH:MM (00:00 to 23:59)")
    return _DAYS.index(parts[0].lower()), int(m.group(1)), int(m.group(2))


def next_weekly_at(now: datetime, weekly_schedule_utc: str) -> datetime:
    """The next instant strictly after ``now`` that falls on the schedule's weekday and UTC time."""
    if now.tzinfo is None:
        raise ValueError("`now` must be timezone-aware (UTC)")
    weekday, hour, minute = parse_weekly(weekly_schedule_utc)
    now = now.astimezone(timezone.utc)
    day = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    candidate = day + timedelta(days=(weekday - now.weekday()) % 7)
    if candidate <= now:
        candidate += timedelta(days=7)
    return candidate


# --- categorization --------------------------------------------------------------------------


def _event_parameters(e: DriftEvent) -> list[str]:
    params: set[str] = set()
    for action in [e.action_taken, *e.actions]:
        if isinstance(action, dict) and action.get("kind") == "ContractBounds":
            params.update(str(p) for p in action.get("parameters", []) or [])
    return sorted(params)


def _cycle_categories(c: CycleSummary) -> list[tuple[str, str]]:
    """(category, detail) for each category the cycle falls in."""
    out: list[tuple[str, str]] = []
    if c.harmed_kpis:
        out.append(("PerformanceDegradation", f"{c.outcome}: harm in {', '.join(sorted(c.harmed_kpis))}"
                    + (f" ({c.gate_rule})" if c.gate_rule else "")))
    error = c.error or ""
    golden = bool(_GOLDEN.search(error))
    if error and not golden and (c.outcome == "Failed" or _TIMEOUT.search(error) or _APPLY.search(error)):
        kind = "timeout" if _TIMEOUT.search(error) else "apply failure" if _APPLY.search(error) else "failure"
        out.append(("StabilityIssues", f"{c.outcome} ({kind}): {error}"))
    elif c.outcome == "Failed" and not error:
        out.append(("StabilityIssues", "Failed without an error message"))
    if golden:
        out.append(("ValidationFailures", f"{c.outcome}: {error}"))
    if c.outcome == "RolledBack":
        out.append(("CanaryRollbacks", "rolled back: " + (c.gate_rule or error or "gate recommendation")))
    return out


def categorize_failures(history: Sequence[CycleSummary], drift_events: Sequence[DriftEvent], *,
                        start: datetime, end: datetime) -> dict[str, list[FailureInstance]]:
    """Every failure in ``(start, end]``, by category (all five keys present, each list in time order)."""
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("`start` and `end` must be timezone-aware (UTC)")
    out: dict[str, list[tuple[datetime, str, FailureInstance]]] = {k: [] for k in CATEGORIES}
    seen: set[str] = set()
    for c in history:
        if c.cycle_id in seen:
            continue
        t = parse_time(c.ended_at)
        if not (start < t <= end):
            continue
        seen.add(c.cycle_id)
        for category, detail in _cycle_categories(c):
            out[category].append((t, c.cycle_id, FailureInstance(
                cycle_id=c.cycle_id, at=rfc3339(t), category=category,
                parameters=sorted(set(c.parameters)), detail=detail)))
    seen_events: set[str] = set()
    for e in drift_events:
        if e.event_id in seen_events:
            continue
        t = parse_time(e.detected_at)
        if not (start < t <= end):
            continue
        seen_events.add(e.event_id)
        action = e.action_taken.get("kind", "?") if isinstance(e.action_taken, dict) else "?"
        trigger = e.metrics.get("trigger") if isinstance(e.metrics, dict) else None
        out["DriftDetection"].append((t, e.event_id, FailureInstance(
            cycle_id=e.event_id, at=rfc3339(t), category="DriftDetection", parameters=_event_parameters(e),
            detail=f"{e.event_type}" + (f" ({trigger})" if trigger else "") + f" -> {action}")))
    return {k: [fi for _, _, fi in sorted(v, key=lambda x: (x[0], x[1]))] for k, v in out.items()}


# --- patch suggestions -----------------------------------------------------------------------


def suggested_range(b: ParameterBounds, contraction: float = PATCH_CONTRACTION) -> tuple[float, float]:
    """The sliding range contracted toward the last known-good value, within the hard limits."""
    a = min(max(b.last_known_good, b.hard_min), b.hard_max)
    lo, hi = min(b.min_value, a), max(b.max_value, a)
    keep = 1.0 - contraction
    nlo, nhi = a - keep * (a - lo), a + keep * (hi - a)
    nlo = min(max(nlo, b.hard_min), a)
    nhi = max(min(nhi, b.hard_max), a)
    return float(nlo), float(nhi)


def _incidents_by_parameter(failures: Mapping[str, Sequence[FailureInstance]]) -> dict[str, dict[str, list[str]]]:
    """parameter -> category -> incident ids (distinct per category)."""
    out: dict[str, dict[str, list[str]]] = {}
    for category in [*CATEGORIES, *sorted(set(failures) - set(CATEGORIES))]:
        for fi in failures.get(category, ()):
            for p in fi.parameters:
                ids = out.setdefault(p, {}).setdefault(category, [])
                if fi.cycle_id not in ids:
                    ids.append(fi.cycle_id)
    return out


def generate_patch_suggestions(failures: Mapping[str, Sequence[FailureInstance]],
                               bounds: Mapping[str, ParameterBounds],
                               cfg: IncidentTriageConfig, *,
                               contraction: float = PATCH_CONTRACTION) -> list[PatchSuggestion]:
    """One suggestion per parameter involved in at least ``failure_threshold_for_patch`` distinct
    incidents and known to ``bounds`` (a parameter without bounds cannot be given any), by name."""
    threshold = cfg.failure_threshold_for_patch
    order = {c: i for i, c in enumerate(CATEGORIES)}
    out: list[PatchSuggestion] = []
    for parameter, by_cat in sorted(_incidents_by_parameter(failures).items()):
        incidents = sorted({i for ids in by_cat.values() for i in ids})
        count = len(incidents)
        if count < threshold or parameter not in bounds:
            continue
        b = bounds[parameter]
        category = min(by_cat, key=lambda c: (-len(by_cat[c]), order.get(c, len(order)), c))
        new = suggested_range(b, contraction)
        summary = ", ".join(f"{len(by_cat[c])} {c}" for c in sorted(by_cat, key=lambda c: (order.get(c, 99), c)))
        rationale = (f"{parameter} was involved in {count} incidents in the analysis window ({summary}); "
                     f"threshold {threshold}. Contract the sliding range [{b.min_value:.6g}, {b.max_value:.6g}] "
                     f"by {contraction:.0%} toward the last known-good value {b.last_known_good:.6g}: "
                     f"[{new[0]:.6g}, {new[1]:.6g}] (hard limits [{b.hard_min:.6g}, {b.hard_max:.6g}]).")
        out.append(PatchSuggestion(
            category=category, parameter=parameter, suggested_bounds=new, rationale=rationale,
            confidence=min(1.0, count / (2.0 * threshold)), current_bounds=(float(b.min_value), float(b.max_value)),
            last_known_good=float(b.last_known_good), failures=count, incidents=incidents))
    return out


def issue_marker(key: str) -> str:
    """The stable marker of an issue key (``<parameter>/<category>``) in an issue's body."""
    return f"<!-- vvtv-autopilot:issue {key} -->"


def report_marker(report_id: str) -> str:
    """The marker of the triage report that filed (or commented on) an issue."""
    return f"<!-- vvtv-autopilot:report {report_id} -->"


def draft_github_issues(suggestions: Iterable[PatchSuggestion], *, period: tuple[str, str],
                        report_id: str, labels: Sequence[str] = ("autopilot", "triage"),
                        assignees: Sequence[str] = ()) -> list[GitHubIssue]:
    """Issue drafts (never sent here) for a human to review, with the comment to post instead
    when an open issue for the same parameter and category already exists."""
    out = []
    for s in suggestions:
        key = f"{s.parameter}/{s.category}"
        markers = [issue_marker(key), report_marker(report_id)]
        body = "\n".join([
            f"Weekly autopilot triage `{report_id}` ({period[0]} .. {period[1]}).",
            "",
            f"**Parameter:** `{s.parameter}`",
            f"**Category:** {s.category}",
            f"**Incidents:** {s.failures} ({', '.join(s.incidents)})",
            f"**Current sliding range:** [{s.current_bounds[0]:.6g}, {s.current_bounds[1]:.6g}]",
            f"**Suggested range:** [{s.suggested_bounds[0]:.6g}, {s.suggested_bounds[1]:.6g}]",
            f"**Last known-good value:** {s.last_known_good:.6g}",
            f"**Confidence:** {s.confidence:.2f}",
            "",
            s.rationale,
            "",
            "Suggested by the autopilot's weekly triage; nothing was changed automatically.",
            "",
            *markers,
        ])
        comment = "\n".join([
            f"Seen again by weekly autopilot triage `{report_id}` ({period[0]} .. {period[1]}): "
            f"{s.failures} incidents ({', '.join(s.incidents)}).",
            "",
            f"**Suggested range:** [{s.suggested_bounds[0]:.6g}, {s.suggested_bounds[1]:.6g}] "
            f"(current [{s.current_bounds[0]:.6g}, {s.current_bounds[1]:.6g}], "
            f"last known-good {s.last_known_good:.6g}, confidence {s.confidence:.2f})",
            "",
            *markers,
        ])
        out.append(GitHubIssue(
            title=f"[autopilot triage] tighten bounds of {s.parameter} ({s.failures} {s.category} incidents)",
            body=body, labels=list(dict.fromkeys([*labels, s.category])), created=False, key=key,
            assignees=list(assignees), comment=comment))
    return out


def github_issues_effect(report: TriageReport, cfg: IncidentTriageConfig, *,
                         new_id: Callable[[str], str]) -> list[Effect]:
    """With ``github_integration_enabled``: one ``github_issues`` effect that files the report's
    drafts (infra sends it from the outbox); otherwise, or with nothing to file, none.
    ``new_id(purpose)`` gives the effect id (called only when there is an effect)."""
    if not cfg.github_integration_enabled or not report.github_issues or cfg.github.repository is None:
        return []
    return [Effect(new_id("github"), "github_issues", {
        "report_id": report.report_id, "repository": cfg.github.repository,
        "issues": [msgspec.to_builtins(i) for i in report.github_issues]})]


def run_weekly_triage(history: Sequence[CycleSummary], drift_events: Sequence[DriftEvent],
                      bounds: Mapping[str, ParameterBounds], cfg: IncidentTriageConfig, *,
                      now: datetime, report_id: str) -> TriageReport:
    """The weekly report over ``(now - analysis_window_days, now]``."""
    if now.tzinfo is None:
        raise ValueError("`now` must be timezone-aware (UTC)")
    start = now - timedelta(days=cfg.analysis_window_days)
    period = (rfc3339(start), rfc3339(now))
    failures = categorize_failures(history, drift_events, start=start, end=now)
    suggestions = generate_patch_suggestions(failures, bounds, cfg)
    issues = draft_github_issues(suggestions, period=period, report_id=report_id, labels=cfg.github.labels,
                                 assignees=cfg.github.assignees)
    adjustments = [{
        "parameter": s.parameter, "kind": "contraction", "category": s.category,
        "old_range": list(s.current_bounds), "new_range": list(s.suggested_bounds),
        "anchor": s.last_known_good, "contraction": PATCH_CONTRACTION,
        "reason": f"{s.failures} incidents (threshold {cfg.failure_threshold_for_patch})",
        "confidence": s.confidence, "applied": False,
    } for s in suggestions]
    return TriageReport(
        report_id=report_id, generated_at=rfc3339(now), analysis_period=period, failure_categories=failures,
        patch_suggestions=suggestions, github_issues=issues, bounds_adjustments=adjustments,
        failure_counts={k: len(v) for k, v in failures.items()})
