"""The anti-drift monitor (README, "Anti-drift monitor and incident triage"): is the
autopilot still trustworthy?

Pure: :func:`check_for_drift` takes the cycle history, the monitor's previous
:class:`DriftState`, the configuration and ``now`` (never the clock), and
returns the new state plus the :class:`DriftEvent` records it raised (one row
of ``drift_events`` each). Nothing here does I/O or draws random numbers.

Each cycle in the history is *scored* once: the sequential statistics (CUSUM,
consecutive failures) see each cycle exactly once, in ``ended_at`` order, no
matter how often the history is passed in again (``DriftState.seen``). The
windowed rules (mean prediction error, rollback rate) look at the whole window
but are only evaluated when a call scored new evidence, so re-checking an
unchanged history never repeats an event.

The rules, exactly:

* **PredictionErrorHigh** (action ``ContractBounds`` on the parameters involved,
  then ``TriggerIncidentTriage``), either trigger:

  - *cusum*: per scored cycle, every KPI with a prediction (``predicted``,
    ``predicted_sd``) and a measurement (``realized``, ``realized_se``) gives
    ``z = s * (realized - predicted) / sqrt(sd^2 + se^2)`` with ``s = +1`` for
    an "increase" KPI and ``-1`` for a "decrease" one (``directions``), so a
    positive z always means "better than predicted" and an optimistic optimizer
    pushes every KPI the same way. The cycle's statistic is Stouffer's
    ``Z = sum(z) / sqrt(m)`` (N(0, 1) for a calibrated optimizer), winsorized at
    ``±Z_CLIP`` so one wild cycle cannot alarm alone. A two-sided CUSUM
    ``S+ = max(0, S+ + Z - k)``, ``S- = max(0, S- - Z - k)`` with ``k = 0.5``
    fires when either exceeds ``h = 4.5``; both then restart at 0. (Why not the
    usual h ≈ 4: measured here, two-sided with h = 4 a calibrated optimizer raises a
    false alarm within 30 daily cycles 14 % of the time; h = 4.5 gives about
    8 % and still catches a 1.5 sd bias after 5 cycles on average.)
  - *mean_error*: :func:`calculate_prediction_error` over the last
    ``monitoring_window_days`` (only cycles that ended after the last
    PredictionErrorHigh: the rule restarts after firing, like the CUSUM) exceeds
    ``prediction_error_threshold_pct`` with at least ``min_predictions`` pairs,
    **and** (``noise_aware=True``, the default) the errors are larger than the
    stated uncertainties explain: ``sum(z^2)`` beyond the chi-square
    ``1 - NOISE_ALPHA`` quantile with as many degrees of freedom as pairs.
    Relative errors of small lifts are mostly noise (a perfectly calibrated
    optimizer predicting +2 % ± 1 % against a canary measuring ± 1 % has a mean
    relative error of about 56 %, so the seed's 30 % alone would fire every
    day); pairs without an uncertainty fall back to the threshold alone.

* **RollbackRateHigh** (``PauseAutopilot``): :func:`calculate_rollback_rate`
  over the window exceeds ``rollback_rate_threshold_pct`` with at least
  ``min_deployments`` canaries (Deployed + RolledBack) in it. Evaluated when a
  call scored a new canary; once it has fired within the window it fires again
  only on a new rollback.
* **ConsecutiveFailures** (``PauseAutopilot``): ``CONSECUTIVE_FAILURES`` (3)
  Failed / RolledBack cycles in a row (Deployed and NoChange break the run,
  Aborted, an operator's act, neither counts nor breaks); the run restarts
  after firing.
* **SystemInstability** (``PauseAutopilot``): at least ``INSTABILITY_ALERTS``
  (3) critical alerts (RFC 3339 times) in the 24 hours up to ``now``. Each
  alert counts toward one event only (``instability_mark``).

Pause length: ``pause_duration_hours * 2^n`` where ``n`` is the number of
pauses this monitor ordered within the last ``monitoring_window_days``, capped
at ``max_pause_duration_days * 24``. Every pause rule shares this ladder, and
all pause events raised by one call carry the same length and count as one
pause (three rollbacks in a row trip two rules at once, not two rungs).

``event_id`` is ``f"{event_type}:{detected_at}:{n}"`` with ``n`` the event's
index in the call: deterministic, so a replay writes the same rows.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any, Iterable, Sequence

import msgspec
from scipy import stats as _sps

from ..schemas.config import DriftMonitoringConfig
from ..schemas.messages import parse_time, rfc3339

CUSUM_K = 0.5
CUSUM_H = 4.5
Z_CLIP = 4.0
NOISE_ALPHA = 0.001
CONSECUTIVE_FAILURES = 3
INSTABILITY_ALERTS = 3
INSTABILITY_WINDOW = timedelta(hours=24)
SEEN_LIMIT = 1000
"""How many scored cycle ids the state keeps (older ones are covered by ``seen_floor``)."""
PARAMS_LIMIT = 200
REL_EPS = 1e-3
"""Floor of ``|predicted|`` in the relative error: lifts are relative (0.02 = +2 %), so 0.1 %."""

CANARY_OUTCOMES = ("Deployed", "RolledBack")
FAILURE_OUTCOMES = ("Failed", "RolledBack")
RESET_OUTCOMES = ("Deployed", "NoChange")

EVENT_TYPES = ("PredictionErrorHigh", "RollbackRateHigh", "ConsecutiveFailures", "SystemInstability")


class CycleSummary(msgspec.Struct, frozen=True, kw_only=True):
    """What the monitor needs of one finished cycle."""

    cycle_id: str
    ended_at: str                                   # RFC 3339
    outcome: str                                    # Deployed | RolledBack | NoChange | Failed | Aborted
    error: str | None = None
    gate_rule: str | None = None
    harmed_kpis: list[str] = []
    parameters: list[str] = []                      # parameters the cycle changed
    predicted: dict[str, float] = {}                # kpi -> predicted relative lift (optimizer)
    predicted_sd: dict[str, float] = {}             # kpi -> its standard deviation
    realized: dict[str, float] = {}                 # kpi -> measured lift (gate)
    realized_se: dict[str, float] = {}              # kpi -> its standard error
    directions: dict[str, str] = {}                 # kpi -> "increase" | "decrease" (default increase)


class DriftState(msgspec.Struct, frozen=True, kw_only=True):
    """The monitor's memory between checks (persist it as JSON)."""

    cusum_high: float = 0.0
    cusum_low: float = 0.0
    cusum_n: int = 0                                # cycles in the CUSUM since its last restart
    cusum_parameters: list[str] = []                # parameters of those cycles
    consecutive_failures: int = 0
    failure_run: list[str] = []                     # cycle ids of the current run
    pauses_in_window: int = 0                       # pauses ordered within the window (at the last check)
    last_pause_hours: float = 0.0
    pause_times: list[str] = []                     # when this monitor ordered pauses (pruned to the window)
    last_rollback_alarm_at: str | None = None
    prediction_reset_at: str | None = None          # mean-error rule counts cycles ended after this
    instability_mark: str | None = None             # alerts at or before this were already counted
    seen: list[str] = []                            # cycle ids already scored (last SEEN_LIMIT)
    seen_floor: str | None = None                   # cycles ended at or before this count as scored


class DriftEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One row of ``drift_events``."""

    event_id: str
    event_type: str
    detected_at: str
    metrics: dict[str, Any]
    action_taken: dict[str, Any]                    # the primary action
    actions: list[dict[str, Any]] = []              # every action, in order (action_taken first)
    resolved_at: str | None = None


# --- actions -------------------------------------------------------------------------------


def pause_action(hours: float) -> dict[str, Any]:
    return {"kind": "PauseAutopilot", "duration_hours": float(hours)}


def contract_action(parameters: Iterable[str]) -> dict[str, Any]:
    return {"kind": "ContractBounds", "parameters": sorted(set(parameters))}


TRIGGER_TRIAGE: dict[str, Any] = {"kind": "TriggerIncidentTriage"}
CONTINUE_MONITORING: dict[str, Any] = {"kind": "ContinueMonitoring"}


# --- helpers -------------------------------------------------------------------------------


def _utc(now: datetime) -> datetime:
    if now.tzinfo is None:
        raise ValueError("`now` must be timezone-aware (UTC)")
    return now


def _ended(c: CycleSummary) -> datetime:
    return parse_time(c.ended_at)


def _timed(history: Iterable[CycleSummary]) -> list[tuple[datetime, CycleSummary]]:
    return [(_ended(c), c) for c in history]


def _window(timed: Sequence[tuple[datetime, CycleSummary]], window_days: float, now: datetime,
            after: datetime | None = None) -> list[CycleSummary]:
    now = _utc(now)
    lo = now - timedelta(days=window_days)
    if after is not None and after > lo:
        lo = after
    return [c for t, c in timed if lo < t <= now]


def _in_window(history: Sequence[CycleSummary], window_days: float, now: datetime,
               after: datetime | None = None) -> list[CycleSummary]:
    """Cycles that ended in ``(now - window_days, now]`` (and after ``after`` when given)."""
    return _window(_timed(history), window_days, now, after)


def _sign(c: CycleSummary, kpi: str) -> float:
    return -1.0 if c.directions.get(kpi, "increase") == "decrease" else 1.0


def _finite(*xs: float | None) -> bool:
    return all(x is not None and isinstance(x, (int, float)) and math.isfinite(x) for x in xs)


def standardized_errors(c: CycleSummary) -> dict[str, float]:
    """Per KPI with a prediction, a measurement and a positive combined sd:
    ``z = s * (realized - predicted) / sqrt(sd^2 + se^2)`` (positive: better than predicted)."""
    out: dict[str, float] = {}
    for kpi in sorted(c.predicted):
        p, r = c.predicted.get(kpi), c.realized.get(kpi)
        sd, se = c.predicted_sd.get(kpi), c.realized_se.get(kpi)
        if not _finite(p, r, sd, se):
            continue
        scale = math.sqrt(float(sd) ** 2 + float(se) ** 2)
        if scale <= 0:
            continue
        out[kpi] = _sign(c, kpi) * (float(r) - float(p)) / scale
    return out


def cycle_statistic(c: CycleSummary) -> float | None:
    """Stouffer's combination of the cycle's standardized errors, winsorized at ±Z_CLIP."""
    zs = standardized_errors(c)
    if not zs:
        return None
    z = sum(zs.values()) / math.sqrt(len(zs))
    return max(-Z_CLIP, min(Z_CLIP, z))


def cusum_step(high: float, low: float, z: float, k: float = CUSUM_K) -> tuple[float, float]:
    """One step of the two-sided CUSUM on a standardized value ``z``."""
    return max(0.0, high + z - k), max(0.0, low - z - k)


def _pairs(history: Iterable[CycleSummary]) -> list[tuple[CycleSummary, str, float, float]]:
    """(cycle, kpi, predicted, realized) for every KPI with both, in a stable order."""
    out = []
    for c in history:
        for kpi in sorted(c.predicted):
            p, r = c.predicted.get(kpi), c.realized.get(kpi)
            if _finite(p, r):
                out.append((c, kpi, float(p), float(r)))
    return out


def calculate_prediction_error(history: Sequence[CycleSummary], window_days: float, now: datetime, *,
                               after: datetime | None = None, eps: float = REL_EPS) -> float | None:
    """Mean over (cycle, KPI) pairs in the window of ``|predicted - realized| / max(|predicted|, eps)``,
    in percent; None when no cycle in the window has both a prediction and a measurement."""
    return _mean_rel_error(_in_window(history, window_days, now, after), eps)


def _mean_rel_error(cycles: Iterable[CycleSummary], eps: float = REL_EPS) -> float | None:
    pairs = _pairs(cycles)
    if not pairs:
        return None
    return 100.0 * sum(abs(p - r) / max(abs(p), eps) for _, _, p, r in pairs) / len(pairs)


def calculate_rollback_rate(history: Sequence[CycleSummary], window_days: float, now: datetime, *,
                            min_count: int = 1) -> float | None:
    """Percentage of the window's canaries (Deployed + RolledBack) that were rolled back;
    None when the window holds fewer than ``min_count`` (at least 1) canaries."""
    return _rollback_rate(_in_window(history, window_days, now), min_count)


def _rollback_rate(cycles: Iterable[CycleSummary], min_count: int = 1) -> float | None:
    canaries = [c for c in cycles if c.outcome in CANARY_OUTCOMES]
    if len(canaries) < max(1, min_count):
        return None
    return 100.0 * sum(c.outcome == "RolledBack" for c in canaries) / len(canaries)


def pause_hours(cfg: DriftMonitoringConfig, previous_pauses: int) -> float:
    """``pause_duration_hours * 2^previous_pauses``, capped at ``max_pause_duration_days * 24``."""
    cap = cfg.max_pause_duration_days * 24.0
    n = max(0, previous_pauses)
    if n >= 64:
        return float(cap)
    return float(min(cfg.pause_duration_hours * (2.0 ** n), cap))


def _bounded_params(params: Iterable[str]) -> list[str]:
    return sorted(set(params))[:PARAMS_LIMIT]


# --- the check -----------------------------------------------------------------------------


def check_for_drift(history: Sequence[CycleSummary], state: DriftState, cfg: DriftMonitoringConfig, *,
                    now: datetime, critical_alerts: Sequence[str] = (), min_deployments: int = 5,
                    min_predictions: int = 3, noise_aware: bool = True) -> tuple[DriftState, list[DriftEvent]]:
    """Score the cycles not seen before, evaluate every rule at ``now``; return the new state and
    the events raised (see the module docstring for the rules)."""
    now = _utc(now)
    at = rfc3339(now)
    window = timedelta(days=cfg.monitoring_window_days)
    timed = sorted(((t, c) for t, c in _timed(history) if t <= now), key=lambda tc: (tc[0], tc[1].cycle_id))
    ids: set[str] = set()
    timed = [tc for tc in timed if not (tc[1].cycle_id in ids or ids.add(tc[1].cycle_id))]  # one per id
    ordered = [c for _, c in timed]
    when = {id(c): t for t, c in timed}

    seen = list(state.seen)
    seen_set = set(seen)
    floor = parse_time(state.seen_floor) if state.seen_floor else None
    fresh = [c for t, c in timed if c.cycle_id not in seen_set and (floor is None or t > floor)]

    pending: list[tuple[str, dict[str, Any], list[dict[str, Any]]]] = []  # (type, metrics, actions)
    pause_rules: list[int] = []                                          # indexes into pending

    # --- sequential statistics over the new cycles ----------------------------------------
    high, low, n_cusum = state.cusum_high, state.cusum_low, state.cusum_n
    cusum_params = list(state.cusum_parameters)
    run, run_ids = state.consecutive_failures, list(state.failure_run)
    reset_at = state.prediction_reset_at
    for c in fresh:
        z = cycle_statistic(c)
        if z is not None:
            high, low = cusum_step(high, low, z)
            n_cusum += 1
            cusum_params = _bounded_params(cusum_params + list(c.parameters))
            if high > CUSUM_H or low > CUSUM_H:
                side = "high" if high > CUSUM_H else "low"
                pending.append(("PredictionErrorHigh", {
                    "trigger": "cusum", "side": side,
                    "meaning": ("realized better than predicted" if side == "high"
                                else "realized worse than predicted"),
                    "cusum_high": round(high, 6), "cusum_low": round(low, 6),
                    "cycles_in_cusum": n_cusum, "last_z": round(z, 6), "cycle_id": c.cycle_id,
                    "k": CUSUM_K, "h": CUSUM_H,
                }, [contract_action(cusum_params), TRIGGER_TRIAGE]))
                high, low, n_cusum, cusum_params = 0.0, 0.0, 0, []
                reset_at = c.ended_at
        if c.outcome in FAILURE_OUTCOMES:
            run += 1
            run_ids = (run_ids + [c.cycle_id])[-CONSECUTIVE_FAILURES:]
            if run >= CONSECUTIVE_FAILURES:
                pause_rules.append(len(pending))
                pending.append(("ConsecutiveFailures", {
                    "consecutive_failures": run, "threshold": CONSECUTIVE_FAILURES, "cycle_ids": run_ids,
                    "last_outcome": c.outcome, "last_error": c.error,
                }, []))
                run, run_ids = 0, []
        elif c.outcome in RESET_OUTCOMES:
            run, run_ids = 0, []

    # --- mean prediction error over the window (new evidence only) -----------------------
    new_pairs = _pairs(fresh)
    if new_pairs and not any(p[0] == "PredictionErrorHigh" for p in pending):
        after = parse_time(reset_at) if reset_at else None
        in_win = _window(timed, cfg.monitoring_window_days, now, after)
        pairs = _pairs(in_win)
        err = _mean_rel_error(in_win)
        if err is not None and len(pairs) >= min_predictions and err > cfg.prediction_error_threshold_pct:
            zs = [z for c in in_win for z in standardized_errors(c).values()]
            chi2 = sum(z * z for z in zs)
            explained = None
            if noise_aware and zs:
                crit = float(_sps.chi2.ppf(1.0 - NOISE_ALPHA, len(zs)))
                explained = chi2 <= crit
            if not explained:
                params = _bounded_params(p for c in in_win for p in c.parameters)
                metrics: dict[str, Any] = {
                    "trigger": "mean_error", "prediction_error_pct": round(err, 6),
                    "threshold_pct": cfg.prediction_error_threshold_pct, "pairs": len(pairs),
                    "window_days": cfg.monitoring_window_days,
                    "cycle_ids": sorted({c.cycle_id for c in in_win if _pairs([c])}),
                }
                if zs:
                    metrics.update({"sum_z2": round(chi2, 6), "standardized_pairs": len(zs),
                                    "chi2_critical": round(float(_sps.chi2.ppf(1.0 - NOISE_ALPHA, len(zs))), 6)})
                pending.append(("PredictionErrorHigh", metrics, [contract_action(params), TRIGGER_TRIAGE]))
                high, low, n_cusum, cusum_params = 0.0, 0.0, 0, []
                reset_at = at

    # --- rollback rate over the window --------------------------------------------------
    last_rb = state.last_rollback_alarm_at
    new_canaries = [c for c in fresh if c.outcome in CANARY_OUTCOMES]
    if new_canaries:
        canaries = [c for c in _window(timed, cfg.monitoring_window_days, now) if c.outcome in CANARY_OUTCOMES]
        rate = _rollback_rate(canaries, min_deployments)
        fired_recently = last_rb is not None and parse_time(last_rb) > now - window
        new_rollback = any(c.outcome == "RolledBack" for c in new_canaries)
        if rate is not None and rate > cfg.rollback_rate_threshold_pct and (new_rollback or not fired_recently):
            pause_rules.append(len(pending))
            pending.append(("RollbackRateHigh", {
                "rollback_rate_pct": round(rate, 6), "threshold_pct": cfg.rollback_rate_threshold_pct,
                "canaries": len(canaries), "rollbacks": sum(c.outcome == "RolledBack" for c in canaries),
                "min_deployments": min_deployments, "window_days": cfg.monitoring_window_days,
                "rolled_back": [c.cycle_id for c in canaries if c.outcome == "RolledBack"],
            }, []))
            last_rb = at

    # --- critical alerts in the last 24 h ------------------------------------------------
    mark = parse_time(state.instability_mark) if state.instability_mark else None
    alerts = sorted(t for t in (parse_time(a) for a in critical_alerts)
                    if now - INSTABILITY_WINDOW <= t <= now and (mark is None or t > mark))
    instability_mark = state.instability_mark
    if len(alerts) >= INSTABILITY_ALERTS:
        pause_rules.append(len(pending))
        pending.append(("SystemInstability", {
            "critical_alerts_24h": len(alerts), "threshold": INSTABILITY_ALERTS,
            "first_alert": rfc3339(alerts[0]), "last_alert": rfc3339(alerts[-1]),
        }, []))
        instability_mark = rfc3339(alerts[-1])

    # --- one pause length for every pause ordered by this call ---------------------------
    pause_times = [t for t in state.pause_times if parse_time(t) > now - window]
    previous = len(pause_times)
    hours = pause_hours(cfg, previous)
    for i in pause_rules:
        kind, metrics, _ = pending[i]
        metrics = dict(metrics, pauses_in_window=previous, pause_hours=hours,
                       max_pause_hours=cfg.max_pause_duration_days * 24.0)
        pending[i] = (kind, metrics, [pause_action(hours)])
    if pause_rules:
        pause_times.append(at)

    events = [DriftEvent(event_id=f"{kind}:{at}:{n}", event_type=kind, detected_at=at, metrics=metrics,
                         action_taken=actions[0], actions=actions)
              for n, (kind, metrics, actions) in enumerate(pending)]

    # --- remember what was scored (bounded) ---------------------------------------------
    seen_floor = state.seen_floor
    seen.extend(c.cycle_id for c in fresh)
    if len(seen) > SEEN_LIMIT:
        evicted = set(seen[:-SEEN_LIMIT])
        seen = seen[-SEEN_LIMIT:]
        ends = [when[id(c)] for c in ordered if c.cycle_id in evicted]
        if ends:
            top = max(ends)
            if floor is None or top > floor:
                seen_floor = rfc3339(top)

    new_state = DriftState(
        cusum_high=high, cusum_low=low, cusum_n=n_cusum, cusum_parameters=cusum_params,
        consecutive_failures=run, failure_run=run_ids,
        pauses_in_window=len(pause_times), last_pause_hours=hours if pause_rules else state.last_pause_hours,
        pause_times=pause_times, last_rollback_alarm_at=last_rb, prediction_reset_at=reset_at,
        instability_mark=instability_mark, seen=seen, seen_floor=seen_floor,
    )
    return new_state, events
