"""Incident review from the store: ``history`` and ``replay CYCLE_ID``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import msgspec

from ..handlers.golden import GoldenSet
from ..schemas.config import Config
from ..schemas.errors import ReplayMismatch, StoreError
from ..statemachine.replay import replay_cycle, verify
from .history import ParameterHistory
from .store import Store


def _store_path(config: Config) -> Path:
    path = Path(config.storage.data_dir) / "autopilot.db"
    if not path.exists():
        raise StoreError(f"no store at {path}: pass --data-dir of a service that has run")
    return path


async def history(config: Config, args: argparse.Namespace) -> int:
    if args.versions:
        hist = ParameterHistory(Path(config.storage.data_dir) / "history", config.card_path)
        current = hist.current_version_id()
        rows = [v.to_dict() | {"current": v.version_id == current} for v in hist.get_version_history(args.limit)]
        if args.json:
            print(json.dumps(rows, indent=2, default=str))
        else:
            for v in rows:
                mark = "*" if v["current"] else " "
                print(f"{mark} {v['version_id'][:16]}  {v['timestamp']}  {v.get('rationale', '')[:60]}")
        return 0
    async with await Store.open(_store_path(config)) as store:
        rows = await store.cycles(args.limit)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"{'cycle':<24} {'outcome':<11} {'gate':<12} changes")
        for r in rows:
            changes = ", ".join(f"{c['parameter_name']}={c['new_value']}" for c in r["changes"]) or "-"
            print(f"{r['cycle_id']:<24} {str(r['outcome']):<11} {str(r['gate'] or '-'):<12} {changes}")
    return 0


async def bounds(config: Config, args: argparse.Namespace) -> int:
    async with await Store.open(_store_path(config)) as store:
        rows = await store.bounds()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'parameter':<32}{'range':<24}{'current':>9}{'stable days':>13}{'rollbacks':>11}")
    for r in rows:
        print(f"{r['parameter_name']:<32}{'[%.4g, %.4g]' % (r['min_value'], r['max_value']):<24}"
              f"{r['current_value']:>9.4g}{r['stability_days']:>13}{r['rollback_count']:>11}")
        for adj in r["bounds_history"][-3:]:
            print(f"    {adj['at']}  {adj['kind']:<12} {adj['reason']}")
    return 0


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


async def triage(config: Config, args: argparse.Namespace) -> int:
    async with await Store.open(_store_path(config)) as store:
        reports = await store.triage_reports(args.limit)
        drift = await store.drift_events(20)
    if args.json:
        print(json.dumps({"reports": reports, "drift_events": drift}, indent=2))
        return 0
    if not reports:
        print("no triage report yet (the weekly one runs at incident_triage.weekly_schedule_utc; --run asks for one now)")
    for r in reports:
        print(f"{r['report_id']}  {r['analysis_period'][0]} .. {r['analysis_period'][1]}")
        for category, items in sorted(r["failure_categories"].items()):
            print(f"    {category:<24} {len(items)}")
        for p in r["patch_suggestions"]:
            print(f"    suggest {p['parameter']} in [{p['suggested_bounds'][0]:.4g}, {p['suggested_bounds'][1]:.4g}]"
                  f" ({p['category']}, confidence {p['confidence']:.2f}): {p['rationale']}")
        for issue in r["github_issues"]:
            print("    " + _issue_line(issue))
    if drift:
        print("drift events:")
        for e in drift:
            print(f"    {e['detected_at']}  {e['event_type']:<20} {e['action_taken']}")
    return 0


async def replay(config: Config, args: argparse.Namespace) -> int:
    async with await Store.open(_store_path(config)) as store:
        start = await store.cycle_start(args.cycle_id)
        if start is None:
            print(f"no cycle {args.cycle_id} in the store")
            return 1
        inbounds = await store.inbox_from(start.inbox_key)
        recorded = await store.transitions(args.cycle_id)
    golden = None if start.golden is None else msgspec.json.decode(start.golden, type=GoldenSet)
    replayed = replay_cycle(Config.model_validate_json(start.config), start.state_before, inbounds, args.cycle_id,
                            golden=golden)
    try:
        verify(recorded, replayed, args.cycle_id)
        problems: list[str] = []
    except ReplayMismatch as mismatch:
        problems = mismatch.problems
    result = {"cycle_id": args.cycle_id, "recorded": len(recorded), "replayed": len(replayed),
              "exact": not problems, "differences": problems,
              "transitions": [{"seq": t.seq, "from": t.from_, "to": t.to, "trigger": t.trigger, "at": t.at} for t in recorded]}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for t in recorded:
            print(f"{t.seq:>3} {t.at}  {t.from_:>10} -> {t.to:<10} {t.trigger}")
        print("replay: exact" if not problems else "replay DIFFERS:\n  " + "\n  ".join(problems))
    return 0 if not problems else 1
