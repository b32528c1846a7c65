"""What the dashboard and incident review read from the store: read-only, on a connection
of their own (SQLite in WAL lets it read while the service writes), with the summaries
of ended cycles cached (an ended cycle never changes), so pages stay fast with
thousands of cycles.

Also the recorded cycle (state before, configuration, golden set, inbox, transitions)
that exact replay, what-if replay and export work on (:meth:`WebData.recorded_cycle`).
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

import aiosqlite
import msgspec

from ..handlers.golden import GoldenSet
from ..schemas.config import Config, parse_config
from ..schemas.errors import ConfigError, StoreError
from ..schemas.events import CoreEvent, Inbound, RecordedCycle, TransitionRecord
from ..statemachine.definition import TERMINAL
from ..statemachine.log_replay import CycleRow, TransitionRow
from ..statemachine.replay import Look, LookReplay, compare
from .store import resolve_cycle_id

_events = msgspec.json.Decoder(CoreEvent)
_CHUNK = 2000


def _loads(text: str | None, default: Any) -> Any:
    return default if not text else json.loads(text)


class CycleSummary(msgspec.Struct, frozen=True):
    """One cycle as the dashboard shows it."""

    cycle_id: str
    started_at: str
    completed_at: str | None
    status: str
    outcome: str | None                  # the final state (Deployed, RolledBack, ...), None while running
    recommendation: str | None           # the gate's, when a canary was judged
    reason: str                          # in words
    changes: list[dict[str, Any]]        # parameter_name, old_value, new_value
    version_id: str | None               # the candidate card's version
    predicted: dict[str, list[float]]    # kpi -> [delta, uncertainty] (relative lift)
    realized: dict[str, list[float]]     # kpi -> [lift, lower, upper]
    live_means: dict[str, float]         # kpi -> the live window's mean at the cycle's start


def summarize_cycle(row: tuple) -> CycleSummary:
    cycle_id, started_at, completed_at, status, analysis, changes, result, error = row
    analysis, changes, result = _loads(analysis, {}), _loads(changes, []), _loads(result, {})
    gate = result.get("gate") or {}
    predicted: dict[str, list[float]] = {}
    for change in changes:
        for kpi, impact in ((change.get("expected_impact") or {}).get("kpis") or {}).items():
            predicted.setdefault(kpi, [float(impact.get("delta", 0.0)), float(impact.get("uncertainty", 0.0))])
    realized = {}
    for k in gate.get("kpis") or []:
        interval = k.get("interval") or [None, None]
        if k.get("lift") is not None and None not in interval:
            realized[k["kpi"]] = [float(k["lift"]), float(interval[0]), float(interval[1])]
    live = {kpi: float(s["mean"]) for kpi, s in (analysis.get("kpis") or {}).items() if s.get("n")}
    outcome = result.get("state") if status != "running" else None
    reason = error or gate.get("reason") or ""
    if status == "running":
        reason = "running"
    elif not reason and outcome == "NoChange":
        reason = "nothing worth changing, or the proposal was refused by the bounds"
    return CycleSummary(cycle_id=cycle_id, started_at=started_at, completed_at=completed_at, status=status,
                        outcome=outcome, recommendation=gate.get("recommendation"), reason=reason,
                        changes=[{"parameter_name": c.get("parameter_name"), "old_value": c.get("old_value"),
                                  "new_value": c.get("new_value")} for c in changes],
                        version_id=result.get("version_id"), predicted=predicted, realized=realized,
                        live_means=live)


class WebData:
    def __init__(self, db: aiosqlite.Connection, path: Path):
        self._db = db
        self.path = path
        self._summaries: dict[str, CycleSummary] = {}          # ended cycles only
        self._ranges: dict[str, dict[str, Any]] = {}            # cycle -> the Bounded check per parameter
        self._looks: OrderedDict[str, tuple[list[Look], list[TransitionRecord]]] = OrderedDict()

    @classmethod
    async def open(cls, path: Path) -> "WebData":
        if not path.exists():
            raise StoreError(f"no store at {path}")
        try:
            db = await aiosqlite.connect(f"file:{path}?mode=ro", uri=True)
            await db.execute("PRAGMA busy_timeout=10000")
        except aiosqlite.Error as exc:
            raise StoreError(f"cannot open the store at {path} for reading: {exc}") from exc
        return cls(db, path)

    async def close(self) -> None:
        await self._db.close()

    async def _all(self, sql: str, args: tuple = ()) -> list[tuple]:
        return list(await (await self._db.execute(sql, args)).fetchall())

    # --- cycles -----------------------------------------------------------------------------------

    _CYCLE_COLUMNS = ("cycle_id, started_at, completed_at, status, metrics_analysis, proposed_changes, "
                      "deployment_result, error_message")

    async def summaries(self) -> list[CycleSummary]:
        """Every cycle, oldest first (ended ones from the cache)."""
        index = await self._all("SELECT cycle_id, status FROM autopilot_cycles ORDER BY started_at, cycle_id")
        missing = [cid for cid, status in index if cid not in self._summaries]
        fresh: dict[str, CycleSummary] = {}
        for i in range(0, len(missing), 500):
            chunk = missing[i:i + 500]
            rows = await self._all(f"SELECT {self._CYCLE_COLUMNS} FROM autopilot_cycles WHERE cycle_id IN "
                                   f"({','.join('?' * len(chunk))})", tuple(chunk))
            for row in rows:
                s = summarize_cycle(row)
                fresh[s.cycle_id] = s
                if s.status != "running":
                    self._summaries[s.cycle_id] = s
        return [self._summaries.get(cid) or fresh[cid] for cid, _ in index if cid in self._summaries or cid in fresh]

    async def summary(self, cycle_id: str) -> CycleSummary | None:
        if cycle_id in self._summaries:
            return self._summaries[cycle_id]
        rows = await self._all(f"SELECT {self._CYCLE_COLUMNS} FROM autopilot_cycles WHERE cycle_id = ?", (cycle_id,))
        return summarize_cycle(rows[0]) if rows else None

    async def cycle_row(self, cycle_id: str) -> dict[str, Any] | None:
        """The ``autopilot_cycles`` row as :func:`infra.report.build_report` takes it."""
        rows = await self._all(f"SELECT {self._CYCLE_COLUMNS} FROM autopilot_cycles WHERE cycle_id = ?", (cycle_id,))
        if not rows:
            return None
        r = rows[0]
        return {"cycle_id": r[0], "started_at": r[1], "completed_at": r[2], "status": r[3],
                "metrics_analysis": _loads(r[4], None), "proposed_changes": _loads(r[5], []),
                "deployment_result": _loads(r[6], {}), "error_message": r[7]}

    async def snapshot(self, cycle_id: str) -> dict[str, Any] | None:
        rows = await self._all("SELECT snapshot FROM cycle_snapshots WHERE cycle_id = ?", (cycle_id,))
        return _loads(rows[0][0], None) if rows else None

    async def cycle_config(self, cycle_id: str) -> str | None:
        rows = await self._all("SELECT config FROM cycle_snapshots WHERE cycle_id = ?", (cycle_id,))
        return rows[0][0] if rows else None

    async def parameter_ranges(self) -> dict[str, dict[str, Any]]:
        """Per cycle, the sliding range each parameter had when its proposal was bounded."""
        known = set(self._ranges)
        rows = await self._all("SELECT cycle_id, detail FROM transitions WHERE from_state = 'Analyzing' "
                               "AND to_state IN ('Bounded', 'NoChange')")
        for cycle_id, detail in rows:
            if cycle_id in known:
                continue
            checks = _loads(detail, {}).get("checks") or []
            self._ranges[cycle_id] = {c["parameter"]: {"range": c.get("range"), "value": c.get("value")}
                                      for c in checks if c.get("range")}
        return self._ranges

    async def transitions(self, cycle_id: str) -> list[TransitionRecord]:
        rows = await self._all("SELECT cycle_id, seq, from_state, to_state, trigger, at, cause, detail, machine "
                               "FROM transitions WHERE cycle_id = ? ORDER BY seq", (cycle_id,))
        return [TransitionRecord(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6]), json.loads(r[7]), r[8])
                for r in rows]

    async def drift_events(self, limit: int = 20) -> list[dict[str, Any]]:
        rows = await self._all("SELECT event_id, event_type, detected_at, metrics, action_taken, resolved_at "
                               "FROM drift_events ORDER BY detected_at DESC LIMIT ?", (limit,))
        return [{"event_id": r[0], "event_type": r[1], "detected_at": r[2], "metrics": _loads(r[3], {}),
                 "action_taken": _loads(r[4], []), "resolved_at": r[5]} for r in rows]

    async def triage_reports(self, limit: int = 5) -> list[dict[str, Any]]:
        rows = await self._all("SELECT report_id, generated_at, analysis_period_start, analysis_period_end, "
                               "failure_categories, patch_suggestions FROM triage_reports "
                               "ORDER BY generated_at DESC LIMIT ?", (limit,))
        return [{"report_id": r[0], "generated_at": r[1], "analysis_period": [r[2], r[3]],
                 "failure_categories": _loads(r[4], {}), "patch_suggestions": _loads(r[5], [])} for r in rows]

    async def counters(self) -> dict[str, int]:
        return {r[0]: r[1] for r in await self._all("SELECT name, value FROM counters")}

    async def outcome_counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """Ended cycles by outcome; judged canaries by recommendation."""
        outcomes: dict[str, int] = {}
        for (state, n) in await self._all(
                "SELECT json_extract(deployment_result, '$.state'), count(*) FROM autopilot_cycles "
                "WHERE status != 'running' GROUP BY 1"):
            outcomes[state or "unknown"] = n
        gate = {r[0]: r[1] for r in await self._all(
            "SELECT recommendation, count(*) FROM canary_deployments WHERE recommendation IS NOT NULL GROUP BY 1")}
        return outcomes, gate

    async def last_cycle_started(self) -> str | None:
        rows = await self._all("SELECT max(started_at) FROM autopilot_cycles")
        return rows[0][0] if rows else None

    async def resolve_cycle(self, prefix: str) -> str:
        """The cycle whose id is or starts with ``prefix`` (StoreError when unknown or ambiguous)."""
        return await resolve_cycle_id(self._db, prefix)

    # --- the recorded cycle, and replays of it ----------------------------------------------------------

    async def transition_log(self, cycle_id: str | None = None) -> tuple[list[TransitionRow], list[CycleRow]]:
        """The log replay's input: every stored transition ordered by cycle and seq, and the cycle
        rows (of one cycle, or of all), read in one transaction so that both are of the same moment
        while the service writes. Details stay JSON text: the log replay decodes what it needs."""
        where, args = ("WHERE cycle_id = ?", (cycle_id,)) if cycle_id is not None else ("", ())
        await self._db.execute("BEGIN")
        try:
            transitions = await self._all("SELECT cycle_id, seq, from_state, to_state, trigger, at, detail, machine "
                                          f"FROM transitions {where} ORDER BY cycle_id, seq", args)
            cycles = await self._all("SELECT cycle_id, started_at, completed_at, status, proposed_changes, "
                                     f"deployment_result, error_message FROM autopilot_cycles {where}", args)
        finally:
            await self._db.execute("COMMIT")
        return [TransitionRow(*r) for r in transitions], [CycleRow(*r) for r in cycles]


    async def _start(self, cycle_id: str) -> tuple | None:
        rows = await self._all("SELECT c.start_inbox_key, c.state_before, c.config, c.golden, i.id FROM cycle_snapshots c "
                               "JOIN inbox i ON i.key = c.start_inbox_key WHERE c.cycle_id = ?", (cycle_id,))
        return rows[0] if rows else None

    async def inbox_after(self, after_id: int, limit: int = _CHUNK, until_id: int | None = None) -> list[tuple[int, Inbound]]:
        sql = "SELECT id, key, subject, at, stream_seq, event FROM inbox WHERE id > ?"
        args: tuple = (after_id,)
        if until_id is not None:
            sql += " AND id <= ?"
            args += (until_id,)
        rows = await self._all(sql + " ORDER BY id LIMIT ?", args + (limit,))
        return [(r[0], Inbound(key=r[1], subject=r[2], at=r[3], stream_seq=r[4], event=_events.decode(r[5]))) for r in rows]

    async def recorded_cycle(self, cycle_id: str) -> RecordedCycle | None:
        """The cycle as recorded: its inbox from the event that started it through the event
        of its last transition (or to now, while it runs)."""
        start = await self._start(cycle_id)
        if start is None:
            return None
        _, state_before, config, golden, start_id = start
        transitions = await self.transitions(cycle_id)
        until = None
        if transitions and transitions[-1].to in TERMINAL:
            key = transitions[-1].cause.get("key")
            rows = await self._all("SELECT id FROM inbox WHERE key = ?", (key,)) if key else []
            until = rows[0][0] if rows else None
        inbounds: list[Inbound] = []
        last = start_id - 1
        while True:
            chunk = await self.inbox_after(last, until_id=until)
            if not chunk:
                break
            inbounds += [ib for _, ib in chunk]
            last = chunk[-1][0]
        return RecordedCycle(cycle_id=cycle_id, config=config, state_before=state_before, golden=golden,
                             inbounds=inbounds, transitions=transitions)

    async def looks_and_replay(self, cycle_id: str) -> tuple[list[Look], list[TransitionRecord]] | None:
        """Exact replay of an ended cycle from the store: every look of its gate and the replayed
        transitions (cached; None: no such cycle)."""
        if cycle_id in self._looks:
            self._looks.move_to_end(cycle_id)
            return self._looks[cycle_id]
        replay = await self.live_replay(cycle_id)
        if replay is None:
            return None
        replay_obj, _ = replay
        result = (replay_obj.looks, replay_obj.transitions)
        if replay_obj.done:
            self._looks[cycle_id] = result
            while len(self._looks) > 64:
                self._looks.popitem(last=False)
        return result

    async def live_replay(self, cycle_id: str, replay: tuple[LookReplay, int] | None = None
                          ) -> tuple[LookReplay, int] | None:
        """Start (or continue, from the inbox id it reached) the look-by-look replay of a cycle."""
        if replay is None:
            start = await self._start(cycle_id)
            if start is None:
                return None
            _, state_before, config, golden, start_id = start
            gs = None if golden is None else msgspec.json.decode(golden, type=GoldenSet)
            replay = (LookReplay(Config.model_validate_json(config), state_before.encode(), cycle_id, golden=gs),
                      start_id - 1)
        obj, last = replay
        while not obj.done:
            chunk = await self.inbox_after(last)
            if not chunk:
                break
            await asyncio.to_thread(obj.feed, [ib for _, ib in chunk])   # the core's work, off the loop
            last = chunk[-1][0]
        return obj, last


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def overlay_config(recorded: str, overrides: dict[str, Any]) -> Config:
    """A what-if configuration: ``overrides`` (a YAML tree: only the keys to change) laid over
    the configuration the cycle ran under. An invalid result raises ConfigError naming each key."""
    if not isinstance(overrides, dict):
        raise ConfigError([("<top level>", type(overrides).__name__, "must be a mapping of sections")])
    return parse_config(_merge(json.loads(recorded), overrides))


def first_divergence(recorded: list[TransitionRecord], replayed: list[TransitionRecord]) -> dict[str, Any]:
    """``exact``, or the first step where the replay differs, with both versions."""
    problems = compare(recorded, replayed)
    if not problems:
        return {"exact": True, "problems": []}
    plain = lambda t: None if t is None else msgspec.json.decode(msgspec.json.encode(t))  # noqa: E731
    for i in range(max(len(recorded), len(replayed))):
        a = recorded[i] if i < len(recorded) else None
        b = replayed[i] if i < len(replayed) else None
        if plain(a) != plain(b):
            return {"exact": False, "problems": problems, "seq": i + 1, "recorded": plain(a), "replayed": plain(b)}
    return {"exact": False, "problems": problems}
