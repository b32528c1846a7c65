"""``vvtv-autopilot replay``: exact replay, what-if replay, export and replay from a file.

    replay CYCLE_ID [--json]                          exact replay against the record (infra/review.py)
    replay CYCLE_ID --what-if CONFIG [--json]         the recorded inputs under another configuration
    replay --all [--what-if CONFIG] [--json]          every stored cycle, summarized
    replay --all --log [--json]                       every stored cycle rebuilt from its transition log
    replay CYCLE_ID --log [--json]                    one cycle rebuilt from its transition log
    replay CYCLE_ID --export FILE                     the recorded cycle as JSON lines
    replay --from-file FILE [--what-if CONFIG]        replay an exported cycle (on any machine)

CONFIG is a YAML file whose keys override the configuration the cycle ran under (e.g. only
``autopilot: {statistical_confidence_threshold: 0.999}``). ``--log`` is the log replay
(statemachine/log_replay.py): each cycle rebuilt from its stored transitions alone, every move
checked against the machine's definition and the result against the cycle's row; no decision is
re-made, so it runs at tens of thousands of transitions a second, where the exact replay (the
default) re-decides every step through the core. A CYCLE_ID may be a unique prefix. Reads the
store read-only: it may run beside the service. Exit codes: 0 done (a what-if that differs is
still done), 1 the exact replay differs, a log is inconsistent, or the cycle is unknown or
ambiguous, 2 a bad file, configuration or combination of options.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import msgspec
import yaml

from ..schemas.config import Config
from ..schemas.errors import ConfigError, RecordingError
from ..schemas.events import RecordedCycle, decode_recorded_cycle, encode_recorded_cycle
from ..statemachine.log_replay import replay_logs, summarize_logs
from ..statemachine.replay import WhatIf, compare, replay_recorded, summarize_what_ifs, what_if
from .reads import resolve_cycle
from .webdata import WebData, first_divergence, overlay_config


def _read_overrides(path: Path) -> dict[str, Any]:
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError([("--what-if", str(path), f"cannot be read: {exc.strerror}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([("--what-if", str(path), f"is not valid YAML: {exc}")]) from None
    if not isinstance(tree, dict):
        raise ConfigError([("--what-if", str(path), "must be a mapping of sections")])
    return tree


def _side(side: dict[str, Any] | None) -> str:
    if side is None:
        return "(no step)"
    extra = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in side.items()
                     if k not in ("from", "to", "trigger"))
    return f"{side['from']} -> {side['to']} ({side['trigger']}) {extra}".rstrip()


def what_if_text(r: WhatIf, config_name: str) -> str:
    verdict = "the outcome changes" if r.outcome != r.recorded_outcome else "same outcome"
    lines = [f"what-if for {r.cycle_id} under {config_name}: recorded {r.recorded_outcome} -> "
             f"what-if {r.outcome or 'unfinished'} ({verdict})"]
    if r.same:
        lines.append("every decision is the same as recorded")
    for d in r.differences:
        lines.append(f"step {d.seq}: {d.what}")
        lines.append(f"    recorded: {_side(d.recorded)}")
        lines.append(f"    what-if:  {_side(d.what_if)}")
    lines += [f"note: {n}" for n in r.notes] + [f"assumed: {a}" for a in r.assumed]
    return "\n".join(lines)


def _exact(rec: RecordedCycle) -> dict[str, Any]:
    replayed = replay_recorded(rec)
    result = first_divergence(rec.transitions, replayed)
    result.update(cycle_id=rec.cycle_id, recorded=len(rec.transitions), replayed=len(replayed))
    return result


def _exact_text(result: dict[str, Any], rec: RecordedCycle) -> str:
    lines = [f"{t.seq:>3} {t.at}  {t.from_:>10} -> {t.to:<10} {t.trigger}" for t in rec.transitions]
    if result["exact"]:
        lines.append("replay: exact")
    else:
        lines.append(f"replay DIFFERS, first at seq {result.get('seq')}:\n  " + "\n  ".join(result["problems"]))
        lines.append(f"  recorded: {json.dumps(result.get('recorded'), sort_keys=True)[:600]}")
        lines.append(f"  replayed: {json.dumps(result.get('replayed'), sort_keys=True)[:600]}")
    return "\n".join(lines)


def _print(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str) if args.json else text)


async def replay(config: Config, args: argparse.Namespace) -> int:
    overrides = _read_overrides(args.what_if) if args.what_if else None
    if args.from_file:
        try:
            rec = decode_recorded_cycle(Path(args.from_file).read_bytes())
        except OSError as exc:
            raise ConfigError([("--from-file", str(args.from_file), f"cannot be read: {exc.strerror}")]) from None
        except RecordingError as exc:
            raise ConfigError([("--from-file", str(args.from_file), str(exc))]) from None
        return _one(args, rec, overrides)
    path = Path(config.storage.data_dir) / "autopilot.db"
    data = await WebData.open(path)
    try:
        if getattr(args, "log", False):
            return await _log(args, data)
        if args.all:
            return await _all(args, data, overrides)
        if not args.cycle_id:
            raise ConfigError([("replay", None, "give a CYCLE_ID, --all or --from-file FILE")])
        cycle_id = await resolve_cycle(data, args.cycle_id)     # a unique prefix will do
        rec = await data.recorded_cycle(cycle_id)
        if rec is None:
            print(f"cycle {cycle_id} has no recorded start to replay from")
            return 1
        if args.export:
            Path(args.export).write_bytes(encode_recorded_cycle(rec))
            _print(args, {"cycle_id": rec.cycle_id, "file": str(args.export), "inbounds": len(rec.inbounds),
                          "transitions": len(rec.transitions)},
                   f"exported {rec.cycle_id}: {len(rec.inbounds)} inbound events and {len(rec.transitions)} transitions "
                   f"to {args.export}")
            return 0
        return _one(args, rec, overrides)
    finally:
        await data.close()


def _one(args: argparse.Namespace, rec: RecordedCycle, overrides: dict[str, Any] | None) -> int:
    if overrides is not None:
        result = what_if(rec, overlay_config(rec.config, overrides))
        _print(args, msgspec.to_builtins(result), what_if_text(result, str(args.what_if)))
        return 0
    result = _exact(rec)
    _print(args, result, _exact_text(result, rec))
    return 0 if result["exact"] else 1


async def _all(args: argparse.Namespace, data: WebData, overrides: dict[str, Any] | None) -> int:
    results: list[WhatIf] = []
    inexact: list[str] = []
    total = 0
    for summary in await data.summaries():
        if summary.outcome is None:
            continue   # still running
        rec = await data.recorded_cycle(summary.cycle_id)
        if rec is None:
            continue
        total += 1
        if overrides is not None:
            results.append(what_if(rec, overlay_config(rec.config, overrides)))
        elif compare(rec.transitions, replay_recorded(rec)):
            inexact.append(rec.cycle_id)
    if overrides is not None:
        summary = summarize_what_ifs(results)
        summary["differing"] = [{"cycle_id": r.cycle_id, "recorded": r.recorded_outcome, "what_if": r.outcome,
                                 "first_difference": r.differences[0].what if r.differences else None}
                                for r in results if not r.same]
        lines = [f"{summary['cycles']} cycles replayed under {args.what_if}; {summary['same_decisions']} with the "
                 f"same decisions"] + summary["summary"]
        lines += [f"  {d['cycle_id']}: {d['recorded']} -> {d['what_if'] or 'unfinished'} ({d['first_difference']})"
                  for d in summary["differing"]]
        _print(args, summary, "\n".join(lines))
        return 0
    _print(args, {"cycles": total, "exact": total - len(inexact), "differ": inexact},
           f"{total} cycles replayed: {total - len(inexact)} exact" + (f", DIFFER: {', '.join(inexact)}" if inexact else ""))
    return 0 if not inexact else 1


async def _log(args: argparse.Namespace, data: WebData) -> int:
    """``replay --all --log`` / ``replay CYCLE_ID --log``: rebuild cycles from their transition logs."""
    if not args.all and not args.cycle_id:
        raise ConfigError([("replay --log", None, "give a CYCLE_ID or --all")])
    cycle_id = None if args.all else await resolve_cycle(data, args.cycle_id)
    rows, cycles = await data.transition_log(cycle_id)
    results = replay_logs(rows, cycles)
    if cycle_id is not None:
        r = results[0]
        lines = [f"{t.seq:>3} {t.at}  {t.from_:>10} -> {t.to:<10} {t.trigger}" for t in rows]
        p = r.projection
        if r.consistent:
            lines.append(f"log replay of {r.cycle_id}: consistent ({r.transitions} transitions; "
                         f"{p.outcome or p.stage + ', running'}" + (f", gate {p.gate_recommendation} ({p.gate_rule})"
                                                                   if p.gate_recommendation else "") + ")")
        else:
            lines.append(f"log replay of {r.cycle_id}: INCONSISTENT\n  " + "\n  ".join(str(x) for x in r.problems))
        _print(args, {"cycle_id": r.cycle_id, "transitions": r.transitions, "consistent": r.consistent,
                      "problems": [str(x) for x in r.problems], "other_machine": r.other_machine,
                      "projection": msgspec.to_builtins(p)}, "\n".join(lines))
        return 0 if r.consistent else 1
    summary = summarize_logs(results)
    lines = [summary["summary"]]
    for bad in summary["inconsistent"]:
        lines.append(f"  {bad['cycle_id']}:")
        lines += [f"    {p}" for p in bad["problems"]]
        if bad["more"]:
            lines.append(f"    ... and {bad['more']} more")
    _print(args, summary, "\n".join(lines))
    return 0 if not summary["inconsistent"] else 1
