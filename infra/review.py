"""Incident review for people: ``history``, ``bounds``, ``report``, ``triage``, ``replay``
and the text of ``status``.

A read asks the running service over the bus (``ctl.<verb>``, :mod:`.reads` answers it),
so it works from any host with the operator's permissions; when no service answers
and the store is here (``--data-dir`` of a stopped service), it reads the store
directly, with the same functions. Either way the output is the same.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Awaitable, Callable

from ..schemas.config import Config
from ..schemas.errors import BusError, ReadRefused
from . import reads
from .history import ParameterHistory
from .report import render_report, short
from .store import Store

Ask = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]


def _body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if getattr(args, "limit", None) is not None:
        body["limit"] = args.limit
    if getattr(args, "versions", False):
        body["versions"] = True
    if getattr(args, "cycle_id", None):
        body["cycle_id"] = args.cycle_id
    return body


async def run_read(config: Config, args: argparse.Namespace, ask: Ask) -> int:
    verb, body = args.command, _body(args)
    store_path = Path(config.storage.data_dir) / "autopilot.db"
    try:
        reply = await ask(verb, body)
    except BusError as unreachable:
        if not store_path.exists():
            raise BusError(f"{unreachable}; and no store at {store_path} to read instead "
                           "(pass --data-dir of the service's data folder, or reach its bus)") from None
        print(f"(no running service answered; read from the store at {store_path})", file=sys.stderr)
        async with await Store.open(store_path) as store:
            hist = ParameterHistory(Path(config.storage.data_dir) / "history", config.card_path)
            try:
                data = await reads.read(store, hist, verb, body)
            except ReadRefused as exc:
                print(f"refused: {exc}")
                return 1
    else:
        if not reply.get("ok"):
            print(f"refused: {reply.get('error')}")
            return 1
        data = reply.get("data")
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, default=str))
    else:
        print(RENDER[verb if not (verb == "history" and body.get("versions")) else "versions"](data))
    if verb == "replay" and not data.get("exact"):
        return 1
    return 0


# --- text --------------------------------------------------------------------------------------------


def history_text(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no cycle yet"
    out = [f"{'cycle':<24} {'outcome':<11} {'gate':<12} {'changes':<34} why"]
    for r in rows:
        changes = ", ".join(f"{c['parameter_name']}={c['new_value']:.4g}" for c in r["changes"]) or "-"
        out.append(f"{r['cycle_id']:<24} {str(r['outcome'] or r['status']):<11} {str(r['gate'] or '-'):<12} "
                   f"{changes:<34} {r.get('why') or r.get('error') or ''}")
    return "\n".join(out)


def versions_text(rows: list[dict[str, Any]]) -> str:
    out = []
    for v in rows:
        mark = "*" if v["current"] else " "
        out.append(f"{mark} {v['version_id'][:16]}  {v['timestamp']}  {v.get('rationale', '')[:70]}")
    out.append("(* live; `rollback ID` takes any unique prefix of 4+ digits)")
    return "\n".join(out)


def bounds_text(rows: list[dict[str, Any]]) -> str:
    out = [f"{'parameter':<32}{'range':<24}{'current':>9}{'stable days':>13}{'rollbacks':>11}"]
    for r in rows:
        out.append(f"{r['parameter_name']:<32}{'[%.4g, %.4g]' % (r['min_value'], r['max_value']):<24}"
                   f"{r['current_value']:>9.4g}{r['stability_days']:>13}{r['rollback_count']:>11}")
        for adj in r["bounds_history"][-3:]:
            out.append(f"    {adj['at']}  {adj['kind']:<12} {adj['reason']}")
    return "\n".join(out)


def _issue_line(issue: dict) -> str:
    """One GitHub issue of a report, in words: filed (number, link), commented, pending, failed, or a draft."""
    title = issue.get("title", "")
    action = issue.get("action")
    if action == "created":
        return f"GitHub issue #{issue.get('number')} created: {issue.get('url')}  {title}"
    if action == "commented":
        return f"GitHub issue #{issue.get('number')} still open, commented: {issue.get('url')}  {title}"
    if action == "failed":
        return f"GitHub issue NOT filed ({issue.get('error')}): {title}"
    return f"draft issue (not sent: github_integration_enabled is off, or sending is pending): {title}"


def _action_text(action: Any) -> str:
    """A drift action in words (the store keeps a list of dicts)."""
    items = action if isinstance(action, list) else [action]
    parts = []
    for a in items:
        if not isinstance(a, dict):
            parts.append(str(a))
            continue
        name = a.get("action") or a.get("kind") or "action"
        rest = ", ".join(f"{k} {v}" for k, v in a.items() if k not in ("action", "kind", "reason") and v not in (None, [], {}))
        parts.append(name + (f" ({rest})" if rest else "") + (f": {a['reason']}" if a.get("reason") else ""))
    return "; ".join(parts)


def triage_text(data: dict[str, Any]) -> str:
    reports, drift = data.get("reports") or [], data.get("drift_events") or []
    out = []
    if not reports:
        out.append("no triage report yet (the weekly one runs at incident_triage.weekly_schedule_utc; --run asks for one now)")
    for r in reports:
        out.append(f"{r['report_id']}  {r['analysis_period'][0]} .. {r['analysis_period'][1]}")
        for category, items in sorted(r["failure_categories"].items()):
            cycles = ", ".join(str(i.get("cycle_id", i) if isinstance(i, dict) else i) for i in items[:4])
            out.append(f"    {category:<24} {len(items)}" + (f"  ({cycles}{', ...' if len(items) > 4 else ''})" if items else ""))
        for p in r["patch_suggestions"]:
            out.append(f"    suggest {p['parameter']} in [{p['suggested_bounds'][0]:.4g}, {p['suggested_bounds'][1]:.4g}]"
                       f" ({p['category']}, confidence {p['confidence']:.2f}): {p['rationale']}")
        for issue in r["github_issues"]:
            out.append("    " + _issue_line(issue))
    if drift:
        out.append("drift events:")
        for e in drift:
            out.append(f"    {e['detected_at']}  {e['event_type']:<20} {_action_text(e['action_taken'])}")
    return "\n".join(out)


def replay_text(data: dict[str, Any]) -> str:
    out = [f"{t['seq']:>3} {t['at']}  {t['from']:>10} -> {t['to']:<10} {t.get('reason') or t['trigger']}"
           for t in data["transitions"]]
    out.append(f"replay of {data['cycle_id']}: exact ({data['recorded']} transitions)" if data["exact"]
               else "replay DIFFERS:\n  " + "\n  ".join(data["differences"]))
    return "\n".join(out)


RENDER: dict[str, Callable[[Any], str]] = {"history": history_text, "versions": versions_text, "bounds": bounds_text,
                                           "triage": triage_text, "replay": replay_text, "report": render_report}


def status_text(s: dict[str, Any]) -> str:
    """``status`` in words: what runs, since when, until when, and why the last thing ended."""
    out = [f"state: {s.get('state')}  cycle: {s.get('cycle_id') or '-'}  card: {short(s.get('card_version'), 16)}"]
    svc = s.get("service") or {}
    if svc:
        out.append(f"service: instance {svc.get('instance_id')}, pid {svc.get('pid')}, up since {svc.get('started_at')}"
                   + (f", role {s.get('role')}" if s.get("role") else ""))
    c = s.get("cycle")
    if c:
        out.append(f"cycle {c.get('cycle_id')} ({c.get('origin')}) in {c.get('state')} since {c.get('started_at')}"
                   + (f"; deadline {c.get('deadline')}" if c.get("deadline") else ""))
        samples = c.get("samples") or {}
        for arm in ("control", "canary"):
            if samples.get(arm):
                out.append(f"  {arm:<8} " + ", ".join(f"{k} n={v}" for k, v in sorted(samples[arm].items())))
        g = s.get("gate_so_far") or {}
        if g.get("reason"):
            out.append(f"  gate so far: {g.get('action')} - {g.get('reason')}")
    if s.get("paused"):
        out.append(f"paused until {s.get('paused_until') or 'resume'} by {s.get('paused_by')}")
    if s.get("pending_live"):
        p = s["pending_live"]
        out.append(f"waiting for VVTV: {p.get('kind')} to {short(p.get('version_id'))} asked by {p.get('actor')} at {p.get('asked_at')}")
    for name, o in sorted((s.get("overrides") or {}).items()):
        out.append(f"override: {name} = {o.get('value')} until {o.get('until')} by {o.get('actor')}")
    last = s.get("last_cycle")
    if last:
        out.append(f"last cycle: {last.get('cycle_id')} {last.get('outcome')} at {last.get('completed_at')}"
                   + (f": {last.get('error')}" if last.get("error") else ""))
    if s.get("last_error"):
        e = s["last_error"]
        out.append(f"last internal error: {e.get('at')} on {e.get('subject')}: {e.get('error')}")
    if s.get("next_daily"):
        out.append(f"next daily cycle: {s.get('next_daily')}")
    return "\n".join(out)
