"""The canary report and transitions in words: pure functions over stored rows.

:func:`build_report` turns what the store keeps about one cycle (its row, its
snapshot and its transition records, as plain dicts) into the canary report
that ``vvtv-autopilot report`` prints and ``ctl.report`` returns; a web page can
call it on the same rows. :func:`transition_reason` says in words why a
transition happened (the service's log, ``history`` and the report's timeline
use it). No I/O, no clock.
"""

from __future__ import annotations

from typing import Any, Iterable

__all__ = ["build_report", "render_report", "transition_reason", "short"]


def short(version: Any, n: int = 12) -> str:
    return str(version)[:n] if version else "-"


def _num(x: Any, fmt: str = ".4g") -> str:
    if x is None:
        return "-"
    try:
        return format(float(x), fmt)
    except (TypeError, ValueError):
        return str(x)


def _pct(x: Any, digits: int = 2) -> str:
    return "-" if x is None else f"{100 * float(x):+.{digits}f}%"


def _changes_text(changes: Iterable[dict[str, Any]]) -> str:
    return ", ".join(f"{c.get('parameter_name')} {_num(c.get('old_value'))} -> {_num(c.get('new_value'))}"
                     for c in changes) or "no change"


def transition_reason(to: str, trigger: str, detail: dict[str, Any] | None) -> str:
    """Why a transition happened, in one line a person can read."""
    d = detail or {}
    if trigger == "start":
        return f"started by {d.get('origin')} ({d.get('actor') or 'scheduler'})"
    if trigger == "bounds_ok":
        return f"proposal {_changes_text(d.get('changes') or [])} within {d.get('rule', 'the bounds')}"
    if trigger == "golden_passed":
        plan = d.get("canary_plan") or {}
        return (f"golden set passed ({d.get('cases_run', 0)} cases)"
                + (f"; canary plan: {plan.get('action')}, {_num(plan.get('duration_minutes'))} min: {plan.get('reason')}"
                   if plan else ""))
    if trigger == "golden_failed":
        failures = "; ".join(f"{f.get('case')}: {f.get('reason')}" for f in d.get("failures") or [])
        return "golden set failed: " + (failures or d.get("error") or "no reason given")
    if trigger == "canary_started":
        return (f"canary {short(d.get('version_id'))} on {100 * float(d.get('traffic_percentage') or 0):.0f}% "
                f"of traffic until {d.get('deadline')}")
    if trigger == "canary_apply_failed":
        return f"VVTV did not apply the canary ({d.get('error')}); precautionary rollback of the canary arm"
    if trigger == "judge":
        decision = d.get("decision") or {}
        why = decision.get("reason") or d.get("reason") or ""
        return f"gate: {d.get('recommendation')} ({d.get('rule')}): {why}".rstrip(": ")
    if trigger == "deployed":
        return f"VVTV runs {short(d.get('version_id'))} live (was {short(d.get('previous_version'))})"
    if trigger == "extend":
        return f"{d.get('rule')}; new deadline {d.get('deadline')}"
    for key in ("reason", "error", "rule"):
        if d.get(key):
            return str(d[key])
    return trigger


def _by_state(transitions: list[dict[str, Any]], to: str) -> dict[str, Any] | None:
    return next((t for t in reversed(transitions) if t.get("to") == to), None)


def build_report(cycle: dict[str, Any], transitions: list[dict[str, Any]],
                 snapshot: dict[str, Any] | None = None) -> dict[str, Any]:
    """The canary report of one cycle.

    ``cycle``: its ``autopilot_cycles`` row (``cycle_id``, ``started_at``, ``completed_at``,
    ``status``, ``proposed_changes``, ``deployment_result``, ``error_message``);
    ``transitions``: its records as dicts (``seq``, ``from``, ``to``, ``trigger``, ``at``,
    ``detail``); ``snapshot``: its ``CycleData`` as a dict, if kept."""
    snap = snapshot or {}
    result = cycle.get("deployment_result") or {}
    changes = cycle.get("proposed_changes") or snap.get("changes") or []
    bounded = _by_state(transitions, "Bounded")
    validated = _by_state(transitions, "Validated")
    canary = next((t for t in transitions if t.get("trigger") == "canary_started"), None)
    gated = _by_state(transitions, "Gated")
    last = transitions[-1] if transitions else None
    gd = (gated or {}).get("detail") or {}
    decision = gd.get("decision") or {}
    predicted = (changes[0].get("expected_impact") if changes else None) or snap.get("prediction") or {}
    kpis = []
    for k in decision.get("kpis") or []:
        pred = (predicted.get("kpis") or {}).get(k.get("kpi")) or {}
        kpis.append({
            "kpi": k.get("kpi"), "direction": k.get("direction"), "critical": k.get("critical"),
            "role": "guardrail" if k.get("critical") else "success metric",
            "control": {"mean": k.get("control_mean"), "n": k.get("n_control")},
            "canary": {"mean": k.get("canary_mean"), "n": k.get("n_canary")},
            "mode": k.get("mode"), "lift": k.get("lift"), "estimate": k.get("estimate"), "interval": k.get("interval"),
            "margin": k.get("margin"), "p_value": k.get("p_value"), "p_harm": k.get("p_harm"),
            "p_noninferior": k.get("p_noninferior"), "srm_p": k.get("srm_p"),
            "verdict": k.get("verdict"), "rule": k.get("rule"),
            "predicted": {"delta": pred.get("delta"), "uncertainty": pred.get("uncertainty"), "lower": pred.get("lower")}
            if pred else None,
            "realized": k.get("estimate"),
        })
    plan = ((validated or {}).get("detail") or {}).get("canary_plan") or snap.get("canary_plan")
    report = {
        "cycle_id": cycle.get("cycle_id"),
        "origin": snap.get("origin") or (((transitions[0] if transitions else {}).get("detail")) or {}).get("origin"),
        "actor": snap.get("actor"),
        "started_at": cycle.get("started_at"), "completed_at": cycle.get("completed_at"),
        "outcome": result.get("state") or (last or {}).get("to"), "status": cycle.get("status"),
        "error": cycle.get("error_message"),
        "proposal": {
            "changes": [{"parameter": c.get("parameter_name"), "old": c.get("old_value"), "new": c.get("new_value"),
                         "change_type": c.get("change_type"), "confidence": c.get("confidence")} for c in changes],
            "source": (((bounded or {}).get("detail") or {}).get("proposal") or {}),
            "candidate_version": result.get("version_id") or snap.get("candidate_version"),
            "base_version": snap.get("base_version"),
            "predicted": predicted or None,
        },
        "canary_plan": plan,
        "canary": None if canary is None else {
            "started_at": canary.get("at"), "deadline": (canary.get("detail") or {}).get("deadline"),
            "traffic_percentage": (canary.get("detail") or {}).get("traffic_percentage"),
            "version_id": (canary.get("detail") or {}).get("version_id"),
            "extended": any(t.get("trigger") == "extend" for t in transitions),
        },
        "gate": None if gated is None else {
            "recommendation": gd.get("recommendation"), "rule": gd.get("rule"),
            "reason": decision.get("reason") or gd.get("reason") or (gd.get("decision") or {}).get("reason"),
            "actor": gd.get("actor"), "method": decision.get("method"),
            "confidence_level": decision.get("confidence_level"),
            "alpha_sequential": decision.get("alpha_sequential"), "alpha_fixed": decision.get("alpha_fixed"),
            "elapsed_fraction": decision.get("elapsed_fraction"), "fixed_look": decision.get("fixed_look"),
            "score": decision.get("score"), "score_lower": decision.get("score_lower"),
            "p_improvement": decision.get("p_improvement"), "srm_p": decision.get("srm_p"),
            "improvement_pct": decision.get("improvement_pct"), "degradation_pct": decision.get("degradation_pct"),
            "decided_at": gated.get("at"),
        },
        "kpis": kpis,
        "timeline": [{"seq": t.get("seq"), "at": t.get("at"), "from": t.get("from"), "to": t.get("to"),
                      "trigger": t.get("trigger"),
                      "reason": transition_reason(t.get("to", ""), t.get("trigger", ""), t.get("detail"))}
                     for t in transitions],
    }
    return report


def _interval(k: dict[str, Any]) -> str:
    iv = k.get("interval")
    if not iv:
        return "-"
    if k.get("mode") == "absolute":
        return f"[{_num(iv[0])}, {_num(iv[1])}]"
    return f"[{_pct(iv[0])}, {_pct(iv[1])}]"


def _effect(k: dict[str, Any]) -> str:
    return _num(k.get("estimate")) if k.get("mode") == "absolute" else _pct(k.get("estimate"))


def render_report(r: dict[str, Any]) -> str:
    """The report as text (the CLI prints this; ``--json`` prints the dict)."""
    out = [f"cycle {r['cycle_id']}  {r.get('outcome')}  ({r.get('origin')}, {r.get('actor') or '-'})",
           f"  started {r.get('started_at')}  ended {r.get('completed_at') or '-'}"]
    if r.get("error"):
        out.append(f"  why: {r['error']}")
    p = r.get("proposal") or {}
    out.append("")
    out.append("proposal: " + (", ".join(f"{c['parameter']} {_num(c['old'])} -> {_num(c['new'])}" for c in p.get("changes") or [])
                              or "none"))
    src = p.get("source") or {}
    if src:
        out.append(f"  from {src.get('source')}" + (f" ({src.get('method')}): {src.get('reason')}" if src.get("method") else
                                                     f" by {src.get('actor')}"))
    out.append(f"  version {short(p.get('candidate_version'), 16)} (base {short(p.get('base_version'), 16)})")
    plan = r.get("canary_plan")
    if plan:
        out.append("")
        out.append(f"canary plan (at Validated): {plan.get('action')}, {_num(plan.get('duration_minutes'))} min "
                   f"(planned {_num(plan.get('planned_minutes'))}): {plan.get('reason')}")
        power = plan.get("power") or {}
        if power.get("score_mde") is not None:
            out.append(f"  improvement score MDE {_pct(power['score_mde'])} at {100 * float(power.get('target_power', 0.8)):.0f}% power")
        for g in power.get("guardrails") or []:
            pw = "-" if g.get("power") is None else f"{100 * g['power']:.0f}%"
            out.append(f"  guardrail {g.get('kpi')}: power {pw} at margin {g.get('margin')} ({g.get('margin_kind')})"
                       + (f"; {g['note']}" if g.get("note") else ""))
    c = r.get("canary")
    if c:
        out.append("")
        out.append(f"canary: {short(c.get('version_id'), 16)} on {100 * float(c.get('traffic_percentage') or 0):.0f}% "
                   f"from {c.get('started_at')} to deadline {c.get('deadline')}" + (" (extended once)" if c.get("extended") else ""))
    g = r.get("gate")
    if g:
        out.append("")
        out.append(f"gate: {str(g.get('recommendation')).upper()} by rule '{g.get('rule')}' at {g.get('decided_at')}")
        if g.get("reason"):
            out.append(f"  {g['reason']}")
        if g.get("method"):
            out.append(f"  method {g.get('method')}, confidence {g.get('confidence_level')}, alpha sequential "
                       f"{_num(g.get('alpha_sequential'), '.3g')} / fixed {_num(g.get('alpha_fixed'), '.3g')}, "
                       f"{_num(100 * float(g.get('elapsed_fraction') or 0), '.0f')}% of the window")
        if g.get("score") is not None:
            out.append(f"  weighted improvement score {_pct(g.get('score'))} (lower bound {_pct(g.get('score_lower'))}, "
                       f"p={_num(g.get('p_improvement'), '.3g')})")
    if r.get("kpis"):
        out.append("")
        head = f"{'kpi':<20}{'role':<16}{'control (n)':>22}{'canary (n)':>22}{'lift':>10}  {'interval':<22}{'margin':>8}{'p':>10}  verdict"
        out.append(head)
        for k in r["kpis"]:
            ctl_, can = k["control"], k["canary"]
            out.append(f"{k['kpi']:<20}{k['role']:<16}"
                       f"{_num(ctl_.get('mean')) + ' (' + str(ctl_.get('n')) + ')':>22}"
                       f"{_num(can.get('mean')) + ' (' + str(can.get('n')) + ')':>22}"
                       f"{_effect(k):>10}  {_interval(k):<22}{_num(k.get('margin'), '.3g'):>8}"
                       f"{_num(k.get('p_value'), '.2g'):>10}  {k.get('verdict')}")
            out.append(f"{'':<20}p(harm)={_num(k.get('p_harm'), '.3g')}  p(non-inferior)={_num(k.get('p_noninferior'), '.3g')}"
                       f"  srm p={_num(k.get('srm_p'), '.3g')}  rule: {k.get('rule')}")
        if any(k.get("predicted") for k in r["kpis"]):
            out.append("")
            out.append("predicted vs realized (relative effect unless the KPI is absolute):")
            for k in r["kpis"]:
                pr = k.get("predicted")
                if pr:
                    out.append(f"  {k['kpi']:<20} predicted {_pct(pr.get('delta'))} ± {_pct(pr.get('uncertainty'))}"
                               f"   realized {_effect(k)}")
    if r.get("timeline"):
        out.append("")
        out.append("timeline:")
        for t in r["timeline"]:
            out.append(f"  {t['seq']:>2} {t['at']}  {t['from']:>9} -> {t['to']:<10} {t['reason']}")
    return "\n".join(out)
