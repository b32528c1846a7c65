"""The dashboard's HTML: pure functions from data to markup (escaped), charts inline as SVG.

Nothing here reads the store or the clock: :mod:`infra.web` gathers the data, these
functions lay it out. Every asset (``web/style.css``, ``web/live.js``) ships in the package.
"""

from __future__ import annotations

import math
from datetime import datetime
from html import escape
from typing import Any, Iterable, Sequence

from ..schemas.messages import parse_time
from ..statemachine.replay import Look, WhatIf
from .charts import Band, Chart, Series, chart, day_label, pct
from .report import short, transition_reason
from .webdata import CycleSummary

OUTCOME_CLASS = {"Deployed": "ok", "RolledBack": "bad", "Failed": "bad", "Aborted": "warn", "NoChange": "muted"}


def e(value: Any) -> str:
    return escape("" if value is None else str(value))


def num(x: Any, fmt: str = ".4g") -> str:
    if x is None:
        return "–"
    try:
        v = float(x)
    except (TypeError, ValueError):
        return e(x)
    return "–" if not math.isfinite(v) else format(v, fmt)


def fpct(x: Any, digits: int = 2) -> str:
    if x is None:
        return "–"
    return f"{100 * float(x):+.{digits}f}%"


def ts(at: str | None) -> float:
    return parse_time(at).timestamp() if at else float("nan")


def when(at: str | None) -> str:
    if not at:
        return "–"
    return parse_time(at).strftime("%Y-%m-%d %H:%M:%S")


def page(title: str, body: str, *, refresh: float | None = None, live_url: str | None = None) -> str:
    attrs = f' data-refresh="{refresh}" data-live="{e(live_url)}"' if refresh and live_url else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<link rel="stylesheet" href="/static/style.css"></head><body{attrs}>'
            f'<header><a href="/" class="brand">vvtv-autopilot</a><nav><a href="/">dashboard</a>'
            f'<a href="/metrics">/metrics</a></nav><span class="ro">read-only</span></header>'
            f'<main>{body}</main><script src="/static/live.js"></script></body></html>')


def table(head: Sequence[str], rows: Iterable[Sequence[str]], *, cls: str = "", id_: str = "") -> str:
    """``rows`` are already-escaped cells."""
    ident = f' id="{id_}"' if id_ else ""
    out = [f'<table class="{cls}"{ident}><thead><tr>' + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    for row in rows:
        out.append("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def outcome_badge(outcome: str | None) -> str:
    label = outcome or "running"
    return f'<span class="badge {OUTCOME_CLASS.get(label, "run")}">{e(label)}</span>'


def changes_text(changes: list[dict[str, Any]]) -> str:
    return ", ".join(f"{c['parameter_name']} {num(c.get('old_value'))} → {num(c.get('new_value'))}" for c in changes) or "–"


# --- the dashboard -------------------------------------------------------------------------------------


def status_section(status: dict[str, Any]) -> str:
    rows = [("state", f'<b id="state">{e(status.get("state"))}</b>'),
            ("card version", f'<code>{e(short(status.get("card_version"), 16))}</code>'),
            ("next daily run", e(when(status.get("next_daily"))))]
    if status.get("paused"):
        until = "until resume (emergency pause)" if status.get("emergency_pause") else f"until {when(status.get('paused_until'))}"
        rows.append(("pause", f'<span class="badge warn">paused</span> {e(until)} by {e(status.get("paused_by") or "–")}'))
    else:
        rows.append(("pause", "not paused"))
    last = status.get("last_cycle") or {}
    if last:
        rows.append(("last cycle", f'<a href="/cycles/{e(last.get("cycle_id"))}">{e(last.get("cycle_id"))}</a> '
                                   f'{outcome_badge(last.get("outcome"))} {e(when(last.get("completed_at")))}'))
    if status.get("last_error"):
        rows.append(("last core error", e((status["last_error"] or {}).get("error"))))
    out = ['<section id="status-box"><h2>State</h2><dl class="kv">']
    out += [f"<dt>{e(k)}</dt><dd>{v}</dd>" for k, v in rows]
    out.append("</dl>")
    overrides = status.get("overrides") or {}
    if overrides:
        out.append("<h3>Overrides</h3>")
        out.append(table(["parameter", "value", "who", "until", "why"],
                         [[e(name), num(o.get("value")), e(o.get("actor")), e(when(o.get("until"))), e(o.get("reason"))]
                          for name, o in sorted(overrides.items())], id_="overrides"))
    bounds = status.get("bounds_overrides") or {}
    if bounds:
        out.append("<h3>Bounds overrides</h3>")
        out.append(table(["parameter", "range", "detail"],
                         [[e(name), e(f"[{num(b.get('min_value'))}, {num(b.get('max_value'))}]"), e(b)]
                          for name, b in sorted(bounds.items())]))
    out.append("</section>")
    return "".join(out)


def heading(look: Look | None, kpis: dict[str, Any]) -> str:
    """Where the gate is heading, from the latest look, in words."""
    if look is None:
        return "no look yet: the first check comes after one check interval"
    d = look.decision
    if look.action != "continue":
        return f"decided: {look.action} — {d.get('reason', '')}"
    harmful = [k["kpi"] for k in d.get("kpis") or [] if k.get("verdict") in ("harm", "degradation")]
    unsure = [k["kpi"] for k in d.get("kpis") or [] if k.get("verdict") not in ("non_inferior", "improvement")]
    if harmful:
        return f"heading to rollback: {', '.join(harmful)} looks worse than its margin"
    score_lower = d.get("score_lower")
    if not unsure and score_lower is not None and score_lower > 0:
        return "heading to proceed: every KPI non-inferior and the improvement's lower bound above 0 (not yet significant at this look)"
    if unsure:
        return f"undecided: {', '.join(unsure)} not yet shown non-inferior within its margin"
    return "undecided: the improvement is not yet significant"


def kpi_look_charts(looks: list[Look], title_prefix: str = "") -> str:
    """Per KPI, the lift with its interval at every look, against the margin."""
    if not looks:
        return '<p class="muted">no look yet</p>'
    names = [k["kpi"] for k in looks[-1].decision.get("kpis") or []]
    out = []
    for name in names:
        pts, errs, labels = [], [], []
        margin, direction, mode = None, "increase", "relative"
        for look in looks:
            k = next((k for k in look.decision.get("kpis") or [] if k["kpi"] == name), None)
            if k is None or k.get("estimate") is None:
                continue
            iv = k.get("interval") or [None, None]
            pts.append((look.n, float(k["estimate"])))
            errs.append((iv[0], iv[1]))
            labels.append(f"look {look.n}: {fpct(k['estimate'])} [{fpct(iv[0])}, {fpct(iv[1])}] {k.get('verdict')}")
            margin, direction, mode = k.get("margin"), k.get("direction", "increase"), k.get("mode", "relative")
        hlines = [(0.0, "0", "#6b7280")]
        if margin is not None:
            bad = float(margin) if direction == "decrease" else -float(margin)
            hlines.append((bad, f"margin {fpct(bad, 1) if mode != 'absolute' else num(bad)}", "#dc2626"))
        out.append(chart(Chart(f"{title_prefix}{name}: lift and interval by look", [Series("lift", pts, errors=errs, labels=labels)],
                               hlines=hlines, x_format=lambda x: f"look {x:g}",
                               y_format=pct if mode != "absolute" else (lambda y: f"{y:.3g}"), width=460, height=200)))
    return '<div class="charts">' + "".join(out) + "</div>"


def live_section(status: dict[str, Any], looks: list[Look], now: datetime) -> str:
    cycle = status.get("cycle")
    out = ['<section id="live-box"><h2>Running canary</h2>']
    if not cycle:
        out.append('<p id="live-none" class="muted">no cycle running</p></section>')
        return "".join(out)
    link = f'<a href="/cycles/{e(cycle["cycle_id"])}">{e(cycle["cycle_id"])}</a>'
    if cycle.get("state") != "Canary" or not cycle.get("deadline"):
        out.append(f'<p>cycle {link} is in <b>{e(cycle.get("state"))}</b></p></section>')
        return "".join(out)
    plan = cycle.get("canary_plan") or {}
    minutes = float(plan.get("duration_minutes") or 0) or None
    deadline = parse_time(cycle["deadline"])
    started = deadline.timestamp() - minutes * 60 if minutes else None
    elapsed = now.timestamp() - started if started else None
    frac = min(1.0, max(0.0, elapsed / (minutes * 60))) if elapsed is not None and minutes else 0.0
    proposal = ", ".join(f"{k}={num(v)}" for k, v in (cycle.get("proposal") or {}).items())
    out.append(f'<p>cycle {link}: proposal {e(proposal)}</p>')
    out.append(f'<p>elapsed <b id="elapsed">{num(elapsed, ".0f")} s</b> of {num(minutes and minutes * 60, ".0f")} s, '
               f'deadline {e(when(cycle["deadline"]))} <span class="bar"><span style="width:{frac * 100:.0f}%"></span></span></p>')
    samples = cycle.get("samples") or {}
    kpis = sorted(set(samples.get("control", {})) | set(samples.get("canary", {})))
    out.append(table(["KPI", "control samples", "canary samples"],
                     [[e(k), num(samples.get("control", {}).get(k, 0), ".0f"), num(samples.get("canary", {}).get(k, 0), ".0f")]
                      for k in kpis], id_="samples"))
    last = looks[-1] if looks else None
    out.append(f'<p>gate looks so far: <b id="looks" data-looks="{len(looks)}">{len(looks)}</b>; '
               f'<span id="heading">{e(heading(last, {}))}</span></p>')
    out.append(kpi_look_charts(looks))
    out.append("</section>")
    return "".join(out)


def cycles_section(cycles: list[CycleSummary]) -> str:
    rows = []
    for c in cycles:
        rows.append([e(when(c.started_at)), f'<a href="/cycles/{e(c.cycle_id)}">{e(c.cycle_id)}</a>',
                     outcome_badge(c.outcome), f'<span class="reason">{e(c.reason)}</span>', e(changes_text(c.changes)),
                     f"<code>{e(short(c.version_id))}</code>"])
    return ('<section><h2>Recent changes</h2>'
            + table(["started", "cycle", "outcome", "reason", "changed parameters", "card version"], rows, id_="cycles")
            + "</section>")


def drift_section(drift: list[dict[str, Any]], triage: list[dict[str, Any]]) -> str:
    out = ['<section><h2>Drift events and triage</h2>']
    if drift:
        out.append(table(["detected", "finding", "action"],
                         [[e(when(d["detected_at"])), e(d["event_type"]), e(", ".join(map(str, d["action_taken"])))]
                          for d in drift], id_="drift"))
    else:
        out.append('<p class="muted">no drift event</p>')
    if triage:
        out.append(table(["report", "period", "failures", "suggestions"],
                         [[e(r["report_id"]), e(f"{when(r['analysis_period'][0])} .. {when(r['analysis_period'][1])}"),
                           e(", ".join(f"{k}: {len(v)}" for k, v in sorted(r["failure_categories"].items()) if v) or "none"),
                           e("; ".join(f"{p['parameter']} → [{num(p['suggested_bounds'][0])}, {num(p['suggested_bounds'][1])}]"
                                       for p in r["patch_suggestions"]) or "none")] for r in triage], id_="triage"))
    else:
        out.append('<p class="muted">no triage report</p>')
    out.append("</section>")
    return "".join(out)


def performance_section(cycles: list[CycleSummary], ranges: dict[str, dict[str, Any]], window_days: int,
                        now: datetime) -> str:
    out = ['<section id="performance"><h2>Performance</h2>']
    since = now.timestamp() - window_days * 86400
    recent = [c for c in cycles if c.outcome and ts(c.started_at) >= since]
    judged = [c for c in recent if c.recommendation]
    deployed = sum(c.outcome == "Deployed" for c in judged)
    inconclusive = sum(c.recommendation == "inconclusive" for c in judged)
    out.append(f'<p id="rates">over the monitoring window ({window_days} days): {len(recent)} cycles, {len(judged)} canaries judged; '
               f'deployment success rate <b>{num(100 * deployed / len(judged), ".0f") if judged else "–"}%</b>, '
               f'inconclusive share <b>{num(100 * inconclusive / len(judged), ".0f") if judged else "–"}%</b></p>')
    kpis = sorted({k for c in cycles for k in list(c.realized) + list(c.live_means)})
    charts = []
    # prediction accuracy: predicted against realized lift, per cycle
    errors = []
    for kpi in kpis:
        pred = [(ts(c.started_at), c.predicted[kpi][0]) for c in cycles if kpi in c.predicted and kpi in c.realized]
        real = [(ts(c.started_at), c.realized[kpi][0]) for c in cycles if kpi in c.predicted and kpi in c.realized]
        errs = [(c.realized[kpi][1], c.realized[kpi][2]) for c in cycles if kpi in c.predicted and kpi in c.realized]
        errors += [abs(r[1] - p[1]) for p, r in zip(pred, real)]
        if pred:
            charts.append(chart(Chart(f"{kpi}: predicted vs realized lift", [Series("predicted", pred, line=False),
                                                                             Series("realized", real, errors=errs, line=False)],
                                      hlines=[(0.0, "0", "#6b7280")], x_format=day_label, y_format=pct)))
    if errors:
        out.append(f'<p>prediction accuracy: mean absolute error {fpct(sum(errors) / len(errors))} over {len(errors)} predictions</p>')
    # KPI trends with deploys and rollbacks marked
    markers = [(ts(c.completed_at or c.started_at), f"{c.cycle_id} {c.outcome}", "#059669" if c.outcome == "Deployed" else "#dc2626")
               for c in cycles if c.outcome in ("Deployed", "RolledBack")]
    for kpi in kpis:
        pts = [(ts(c.started_at), c.live_means[kpi]) for c in cycles if kpi in c.live_means]
        charts.append(chart(Chart(f"{kpi}: live mean by cycle (green: deploy, red: rollback)", [Series(kpi, pts)],
                                  markers=markers, x_format=day_label)))
    # each parameter's sliding range over time, with its value inside it
    params = sorted({p for r in ranges.values() for p in r})
    starts = {c.cycle_id: ts(c.started_at) for c in cycles}
    for p in params:
        band, value = [], []
        for cid, r in sorted(ranges.items(), key=lambda kv: starts.get(kv[0], 0.0)):
            if p in r and cid in starts and r[p].get("range"):
                lo, hi = r[p]["range"]
                band.append((starts[cid], lo, hi))
                if r[p].get("value") is not None:
                    value.append((starts[cid], float(r[p]["value"])))
        charts.append(chart(Chart(f"{p}: sliding range and proposed value", [Series("value", value)],
                                  bands=[Band("sliding range", band)], x_format=day_label)))
    out.append('<div class="charts">' + "".join(charts) + "</div></section>")
    return "".join(out)


def dashboard(status: dict[str, Any], looks: list[Look], cycles: list[CycleSummary], ranges: dict[str, dict[str, Any]],
              drift: list[dict[str, Any]], triage: list[dict[str, Any]], *, window_days: int, now: datetime,
              refresh: float, recent: int = 30, performance: str | None = None) -> str:
    body = (f'<div class="grid"><div id="status">{status_section(status)}</div>'
            f'<div id="live">{live_section(status, looks, now)}</div></div>'
            + cycles_section(list(reversed(cycles[-recent:])))
            + drift_section(drift, triage)
            + (performance if performance is not None else performance_section(cycles, ranges, window_days, now)))
    return page("vvtv-autopilot dashboard", body, refresh=refresh, live_url="/fragment/live")


def live_fragment(status: dict[str, Any], looks: list[Look], now: datetime) -> str:
    """What the open dashboard refreshes by itself (``live.js``)."""
    return (f'<div id="status">{status_section(status)}</div>'
            f'<div id="live">{live_section(status, looks, now)}</div>')


# --- incident review -------------------------------------------------------------------------------


def report_section(report: dict[str, Any]) -> str:
    """The canary report (built by :func:`infra.report.build_report`) as tables."""
    out = ['<section id="report"><h2>Canary report</h2>']
    p = report.get("proposal") or {}
    proposal = ", ".join(f"{c['parameter']} {num(c['old'])} → {num(c['new'])}" for c in p.get("changes") or []) or "none"
    out.append(f'<p>proposal: {e(proposal)}'
               f' — candidate <code>{e(short(p.get("candidate_version"), 16))}</code>, base <code>{e(short(p.get("base_version"), 16))}</code></p>')
    g = report.get("gate")
    if g:
        out.append(f'<p class="gate">gate: <b>{e(str(g.get("recommendation")).upper())}</b> by rule “{e(g.get("rule"))}” at '
                   f'{e(when(g.get("decided_at")))}: {e(g.get("reason"))}</p>')
        if g.get("score") is not None:
            out.append(f'<p>weighted improvement score {fpct(g.get("score"))} (lower bound {fpct(g.get("score_lower"))}, '
                       f'p={num(g.get("p_improvement"), ".3g")}); α sequential {num(g.get("alpha_sequential"), ".3g")}, '
                       f'fixed {num(g.get("alpha_fixed"), ".3g")}; {num(100 * float(g.get("elapsed_fraction") or 0), ".0f")}% of the window</p>')
    kpis = report.get("kpis") or []
    if kpis:
        def eff(k: dict[str, Any], v: Any) -> str:
            return num(v) if k.get("mode") == "absolute" else fpct(v)

        rows = []
        for k in kpis:
            iv = k.get("interval") or [None, None]
            pred = k.get("predicted") or {}
            rows.append([e(k["kpi"]), e(k.get("role")), f'{num(k["control"].get("mean"))} <small>(n={e(k["control"].get("n"))})</small>',
                         f'{num(k["canary"].get("mean"))} <small>(n={e(k["canary"].get("n"))})</small>',
                         eff(k, k.get("estimate")), f"[{eff(k, iv[0])}, {eff(k, iv[1])}]", num(k.get("margin"), ".3g"),
                         num(k.get("p_harm"), ".3g"), num(k.get("p_noninferior"), ".3g"),
                         f'<b class="verdict">{e(k.get("verdict"))}</b>', f'<small>{e(k.get("rule"))}</small>',
                         (f"{fpct(pred.get('delta'))} ± {fpct(pred.get('uncertainty'))}" if pred else "–")])
        out.append(table(["KPI", "role", "control mean", "canary mean", "lift", "interval", "margin", "p(harm)",
                          "p(non-inferior)", "verdict", "deciding rule", "predicted"], rows, id_="report-table"))
    elif not g:
        out.append('<p class="muted">no canary was judged in this cycle</p>')
    out.append("</section>")
    return "".join(out)


def timeline_section(transitions: list[dict[str, Any]]) -> str:
    rows = []
    for t in transitions:
        d = t.get("detail") or {}
        numbers = ""
        dec = d.get("decision") or {}
        if dec:
            numbers = (f"score {fpct(dec.get('score'))}, p(improvement)={num(dec.get('p_improvement'), '.3g')}; "
                       + "; ".join(f"{k['kpi']} {fpct(k.get('estimate'))} [{fpct((k.get('interval') or [None])[0])}, "
                                   f"{fpct((k.get('interval') or [None, None])[1])}] {k.get('verdict')}" for k in dec.get("kpis") or []))
        cause = t.get("cause") or {}
        rows.append([e(t["seq"]), e(when(t["at"])), f'{e(t["from"])} → <b>{e(t["to"])}</b>', e(t["trigger"]),
                     f'<small>{e(cause.get("subject"))}<br>{e(cause.get("key"))}</small>',
                     e(transition_reason(t["to"], t["trigger"], d)), f"<small>{e(numbers)}</small>"])
    return ('<section><h2>Timeline</h2>'
            + table(["seq", "at", "move", "trigger", "cause", "why", "decision's numbers"], rows, id_="timeline")
            + "</section>")


def _nlog(p: Any) -> float:
    try:
        v = float(p)
    except (TypeError, ValueError):
        return float("nan")
    return -math.log10(max(v, 1e-300)) if v > 0 else 300.0


def evidence_section(looks: list[Look]) -> str:
    out = ['<section id="evidence"><h2>The gate\'s evidence over the looks</h2>'
           '<p class="muted">Only the deciding look is stored; every look here is derived by exact replay of the '
           'cycle\'s recorded inbox (replay reproduces every look).</p>']
    if not looks:
        out.append('<p class="muted">no look: the cycle did not run a canary</p></section>')
        return "".join(out)
    out.append(kpi_look_charts(looks))
    # each test's statistic (-log10 p, sequential) against its boundary (-log10 alpha_sequential)
    series = []
    alpha = looks[-1].decision.get("alpha_sequential")
    names = [k["kpi"] for k in looks[-1].decision.get("kpis") or []]
    series.append(Series("improvement", [(lk.n, _nlog(lk.decision.get("p_improvement_sequential"))) for lk in looks]))
    for name in names:
        for test in ("harm", "noninferior"):
            pts = []
            for lk in looks:
                k = next((k for k in lk.decision.get("kpis") or [] if k["kpi"] == name), {})
                pts.append((lk.n, _nlog(k.get(f"p_{test}_sequential"))))
            series.append(Series(f"{name} {test}", pts))
    out.append('<div class="charts">' + chart(Chart(
        "each test's −log10 p (anytime mixture) against its boundary", series,
        hlines=[(_nlog(alpha), f"boundary α={num(alpha, '.3g')}", "#dc2626")] if alpha else [],
        x_format=lambda x: f"look {x:g}", y_format=lambda y: f"{y:.1f}", width=640, height=240)) + "</div>")
    rows = []
    for lk in looks:
        d = lk.decision
        rows.append([e(lk.n), e(when(lk.at)), num(d.get("elapsed_fraction"), ".2f"), f"<b>{e(lk.action)}</b>",
                     num(d.get("p_improvement"), ".3g"),
                     e("; ".join(f"{k['kpi']}: harm {num(k.get('p_harm'), '.2g')}, non-inf {num(k.get('p_noninferior'), '.2g')}"
                                 for k in d.get("kpis") or []))])
    out.append(table(["look", "at", "elapsed", "decision", "p(improvement)", "per KPI p-values"], rows, id_="looks-table"))
    out.append("</section>")
    return "".join(out)


def _transition_cells(t: dict[str, Any] | None) -> str:
    if t is None:
        return "<i>none</i>"
    return e({k: t.get(k) for k in ("seq", "from", "to", "trigger", "at", "cause", "detail")})


def replay_section(result: dict[str, Any]) -> str:
    out = ['<section id="replay"><h2>Exact replay</h2>']
    if result.get("exact"):
        out.append('<p><span class="badge ok" id="replay-result">exact</span> the recorded inbox, replayed through a '
                   'fresh core from the state before the cycle, reproduces every transition.</p>')
    else:
        out.append(f'<p><span class="badge bad" id="replay-result">differs</span> first divergence at seq {e(result.get("seq"))}: '
                   f'{e("; ".join(result.get("problems", [])[:3]))}</p>')
        out.append('<div class="side"><div><h3>recorded</h3><pre>' + _transition_cells(result.get("recorded"))
                   + '</pre></div><div><h3>replayed</h3><pre>' + _transition_cells(result.get("replayed")) + "</pre></div></div>")
    out.append("</section>")
    return "".join(out)


def what_if_form(cycle_id: str, config: dict[str, Any]) -> str:
    a = config["autopilot"]
    rows = [f'<label>confidence <input name="confidence" value="{e(a["statistical_confidence_threshold"])}"></label>',
            f'<label>canary length (minutes) <input name="canary_minutes" value="{e(a["canary_duration_minutes"])}"></label>',
            f'<label>check interval (minutes) <input name="check_minutes" value="{e(a["check_interval_minutes"])}"></label>']
    for name, k in sorted(config["kpis"].items()):
        rows.append(f'<label>{e(name)} margin <input name="margin.{e(name)}" value="{e(k.get("margin"))}"></label>'
                    f'<label>{e(name)} weight <input name="weight.{e(name)}" value="{e(k.get("weight"))}"></label>')
    return (f'<section id="what-if-form"><h2>What if?</h2><p>Re-run this cycle\'s recorded inputs under another configuration '
            f'(edit the numbers, or upload a YAML file whose keys override the recorded configuration).</p>'
            f'<form method="post" action="/cycles/{e(cycle_id)}/what-if" enctype="multipart/form-data">'
            f'<div class="form">{"".join(rows)}</div>'
            f'<label>or a configuration file <input type="file" name="config" accept=".yaml,.yml,.json"></label> '
            f'<button type="submit" id="what-if-run">run what-if</button></form>'
            f'<p><a href="/cycles/{e(cycle_id)}/export.jsonl">export this cycle as JSON lines</a> '
            f'(<code>vvtv-autopilot replay --from-file FILE</code> replays it anywhere)</p></section>')


def review(summary: CycleSummary, report: dict[str, Any], transitions: list[dict[str, Any]], looks: list[Look],
           replay: dict[str, Any], config: dict[str, Any]) -> str:
    body = (f'<h1>Cycle {e(summary.cycle_id)} {outcome_badge(summary.outcome)}</h1>'
            f'<p class="reason">{e(summary.reason)}</p>'
            f'<p>started {e(when(summary.started_at))}, ended {e(when(summary.completed_at))}; '
            f'changes {e(changes_text(summary.changes))}</p>'
            + report_section(report) + timeline_section(transitions) + evidence_section(looks)
            + replay_section(replay) + what_if_form(summary.cycle_id, config))
    return page(f"cycle {summary.cycle_id}", body)


def what_if_page(cycle_id: str, result: WhatIf, edits: list[str]) -> str:
    changed = result.outcome != result.recorded_outcome
    out = [f'<h1>What-if for <a href="/cycles/{e(cycle_id)}">{e(cycle_id)}</a></h1>',
           f'<p>under: {e("; ".join(edits) or "the recorded configuration")}</p>',
           f'<p id="what-if-outcome">recorded outcome {outcome_badge(result.recorded_outcome)} → what-if outcome '
           f'{outcome_badge(result.outcome or "unfinished")} '
           + ("<b>(the outcome changes)</b>" if changed else "(same outcome)") + "</p>"]
    if result.same:
        out.append('<p id="what-if-same">every decision is the same as recorded</p>')
    rows = []
    for d in result.differences:
        def cell(side: dict[str, Any] | None) -> str:
            if side is None:
                return "<i>no step</i>"
            extra = ", ".join(f"{k}={num(v, '.3g') if isinstance(v, float) else e(v)}" for k, v in side.items()
                              if k not in ("from", "to", "trigger"))
            return f'{e(side.get("from"))} → <b>{e(side.get("to"))}</b> ({e(side.get("trigger"))})<br><small>{extra}</small>'
        rows.append([e(d.seq), e(d.what), cell(d.recorded), cell(d.what_if)])
    if rows:
        out.append("<h2>Where the decisions differ, step by step</h2>")
        out.append(table(["seq", "what", "recorded", "what-if"], rows, id_="differences"))
    out.append("<h2>The what-if's transitions</h2>")
    out.append(table(["seq", "at", "move", "trigger", "why"],
                     [[e(t.seq), e(when(t.at)), f"{e(t.from_)} → <b>{e(t.to)}</b>", e(t.trigger),
                       e(transition_reason(t.to, t.trigger, t.detail))] for t in result.transitions], id_="what-if-transitions"))
    for note in result.notes + result.assumed:
        out.append(f'<p class="muted">{e(note)}</p>')
    return page(f"what-if {cycle_id}", "".join(out))


def error_page(status: int, message: str) -> str:
    return page(f"{status}", f'<h1>{status}</h1><p class="error" id="error">{e(message)}</p>')
