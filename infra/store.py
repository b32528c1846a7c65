"""The SQLite store: the source of truth (JetStream is the transport).

One transaction per inbound message or batch: inbox (dedupe), transitions,
outbox, domain rows and the core's snapshot are written together, then the
bus message is acknowledged. WAL, ``synchronous=FULL``, a versioned schema.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, Iterable

import aiosqlite
import msgspec

from ..schemas.errors import StoreError
from ..schemas.events import CoreEvent, Effect, Inbound, TransitionRecord
from ..statemachine.step import Step

SCHEMA_VERSION = 1

_SCHEMA = """
-- The seed's five tables, as written.
CREATE TABLE IF NOT EXISTS autopilot_cycles (
    cycle_id TEXT PRIMARY KEY,
    started_at TEXT NOT NULL,
    completed_at TEXT,
    status TEXT NOT NULL, -- 'running', 'completed', 'failed', 'rolled_back'
    metrics_analysis TEXT, -- JSON
    proposed_changes TEXT, -- JSON
    deployment_result TEXT, -- JSON
    error_message TEXT
);
CREATE TABLE IF NOT EXISTS parameter_bounds (
    parameter_name TEXT PRIMARY KEY,
    min_value REAL NOT NULL,
    max_value REAL NOT NULL,
    current_value REAL NOT NULL,
    stability_days INTEGER DEFAULT 0,
    rollback_count INTEGER DEFAULT 0,
    last_updated TEXT NOT NULL,
    bounds_history TEXT -- JSON array of adjustments
);
CREATE TABLE IF NOT EXISTS canary_deployments (
    canary_id TEXT PRIMARY KEY,
    cycle_id TEXT NOT NULL,
    started_at TEXT NOT NULL,
    completed_at TEXT,
    traffic_percentage REAL NOT NULL,
    control_metrics TEXT, -- JSON
    canary_metrics TEXT, -- JSON
    statistical_significance REAL,
    recommendation TEXT, -- 'proceed', 'rollback', 'inconclusive'
    FOREIGN KEY (cycle_id) REFERENCES autopilot_cycles(cycle_id)
);
CREATE TABLE IF NOT EXISTS drift_events (
    event_id TEXT PRIMARY KEY,
    event_type TEXT NOT NULL,
    detected_at TEXT NOT NULL,
    metrics TEXT, -- JSON
    action_taken TEXT NOT NULL,
    resolved_at TEXT
);
CREATE TABLE IF NOT EXISTS triage_reports (
    report_id TEXT PRIMARY KEY,
    generated_at TEXT NOT NULL,
    analysis_period_start TEXT NOT NULL,
    analysis_period_end TEXT NOT NULL,
    failure_categories TEXT, -- JSON
    patch_suggestions TEXT, -- JSON
    github_issues TEXT -- JSON
);

-- Ours: the audit log, exactly-once recording and crash resume.
CREATE TABLE IF NOT EXISTS transitions (
    cycle_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    from_state TEXT NOT NULL,
    to_state TEXT NOT NULL,
    trigger TEXT NOT NULL,
    at TEXT NOT NULL,
    cause TEXT NOT NULL,   -- JSON: subject, stream sequence, inbox key
    detail TEXT NOT NULL,  -- JSON: the decision's inputs and outputs
    machine TEXT NOT NULL, -- hash of the machine definition
    PRIMARY KEY (cycle_id, seq)
);
CREATE TABLE IF NOT EXISTS inbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    subject TEXT NOT NULL,
    at TEXT NOT NULL,
    stream_seq INTEGER,
    event TEXT NOT NULL    -- the core event as the core saw it (replay input)
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    effect_id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    subject TEXT,
    body TEXT NOT NULL,
    created_at TEXT NOT NULL,
    sent_at TEXT
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox(sent_at) WHERE sent_at IS NULL;
CREATE TABLE IF NOT EXISTS cycle_snapshots (
    cycle_id TEXT PRIMARY KEY,
    snapshot TEXT NOT NULL,          -- CycleData as JSON, after its latest step
    start_inbox_key TEXT,            -- the event that started it (replay starts there)
    state_before TEXT,               -- the autopilot's state just before that event
    config TEXT,                     -- the configuration it ran under
    golden TEXT                      -- the built-in golden set it ran with (golden.mode: builtin)
);
CREATE TABLE IF NOT EXISTS autopilot_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    state TEXT NOT NULL,
    active_cycle_id TEXT
);
CREATE TABLE IF NOT EXISTS commands (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    verb TEXT NOT NULL,
    via TEXT NOT NULL,
    actor TEXT,
    reason TEXT,
    body TEXT NOT NULL,
    ok INTEGER NOT NULL,
    error TEXT
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
-- What each github_issues effect has filed so far (a resend skips these).
CREATE TABLE IF NOT EXISTS github_issue_log (
    effect_id TEXT NOT NULL,
    issue_key TEXT NOT NULL,         -- "<parameter>/<category>"
    report_id TEXT NOT NULL,
    result TEXT NOT NULL,            -- JSON: action, number, url
    at TEXT NOT NULL,
    PRIMARY KEY (effect_id, issue_key)
);
-- High availability: the last journal entry this replica's store reflects.
CREATE TABLE IF NOT EXISTS replica (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    journal_seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
"""

_enc = msgspec.json.Encoder()
_SET_JOURNAL_SEQ = ("INSERT INTO replica VALUES (1, ?) ON CONFLICT(id) DO UPDATE SET journal_seq = excluded.journal_seq")


def _json(value: Any) -> str | None:
    return None if value is None else _enc.encode(value).decode()


async def resolve_cycle_id(db: aiosqlite.Connection, prefix: str) -> str:
    """The cycle whose id is or starts with ``prefix`` (a unique prefix, as git accepts), on any
    connection to a store (the service's, or a read-only one); :class:`StoreError` naming the
    candidates when it is unknown or ambiguous."""
    rows = await (await db.execute(
        "SELECT cycle_id FROM autopilot_cycles WHERE cycle_id >= ? AND cycle_id < ? ORDER BY cycle_id LIMIT 6",
        (prefix, prefix + "\uffff"))).fetchall()
    ids = [r[0] for r in rows]
    if prefix in ids:
        return prefix
    if not ids:
        raise StoreError(f"no cycle {prefix!r} in the store (`history` lists them)")
    if len(ids) > 1:
        raise StoreError(f"cycle id {prefix!r} is ambiguous: it starts {', '.join(ids[:5])}"
                         + (" ..." if len(ids) > 5 else "") + "; give more characters")
    return ids[0]


class CycleStart(msgspec.Struct, frozen=True):
    cycle_id: str
    inbox_key: str
    state_before: bytes
    config: str
    golden: str | None = None


class Store:
    def __init__(self, db: aiosqlite.Connection, path: Path):
        self._db = db
        self.path = path
        # One connection: a transaction must not take in another task's statements
        # (the GitHub sender writes while the service commits).
        self._tx = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path) -> "Store":
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            db = await aiosqlite.connect(path, isolation_level=None)
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=FULL")
            await db.execute("PRAGMA foreign_keys=OFF")
            await db.execute("PRAGMA busy_timeout=10000")
            await db.executescript(_SCHEMA)
            rows = await (await db.execute("SELECT version FROM schema_version")).fetchall()
            if not rows:
                await db.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
            elif rows[0][0] > SCHEMA_VERSION:
                raise StoreError(f"{path}: schema version {rows[0][0]} is newer than this program ({SCHEMA_VERSION})")
        except aiosqlite.Error as exc:
            raise StoreError(f"cannot open the store at {path}: {exc}") from exc
        return cls(db, path)

    async def close(self) -> None:
        await self._db.close()

    async def __aenter__(self) -> "Store":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- the one transaction per inbound event or batch ---------------------------------------

    async def seen(self, keys: Iterable[str]) -> set[str]:
        keys = list(keys)
        found: set[str] = set()
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            marks = ",".join("?" * len(chunk))
            rows = await (await self._db.execute(f"SELECT key FROM inbox WHERE key IN ({marks})", chunk)).fetchall()
            found.update(r[0] for r in rows)
        return found

    async def commit(self, steps: list[Step], *, state: bytes | None, active_cycle_id: str | None,
                     cycle_snapshots: dict[str, bytes], cycle_starts: list[CycleStart],
                     journal_seq: int | None = None) -> None:
        """``journal_seq``: the journal entry these steps are (README, "Deployment:
        replicas"), recorded in the same transaction."""
        db = self._db
        inbox, transitions, outbox, cycles, canaries, commands, replies = [], [], [], {}, {}, [], []
        counters: dict[str, int] = {}
        bounds: dict[str, Any] = {}
        drift, triage = [], []
        for step in steps:
            ib = step.inbound
            inbox.append((ib.key, ib.subject, ib.at, ib.stream_seq, _enc.encode(ib.event).decode()))
            for t in step.transitions:
                transitions.append((t.cycle_id, t.seq, t.from_, t.to, t.trigger, t.at, _json(t.cause), _json(t.detail), t.machine))
            for e in step.effects:
                outbox.append((e.effect_id, e.kind, e.subject, _json(e.body), ib.at))
            for row in step.cycle_rows:
                cycles[row["cycle_id"]] = row
            for row in step.canary_rows:
                canaries[row["canary_id"]] = row
            if step.command is not None:
                c = step.command
                commands.append((c["at"], c["verb"], c["via"], c["actor"], c["reason"], _json(c["body"]), int(c["ok"]), c["error"]))
            bounds.update(step.bounds_rows)
            drift += [(e.event_id, e.event_type, e.detected_at, _json(e.metrics), _json(e.actions or [e.action_taken]),
                       e.resolved_at) for e in step.drift_rows]
            triage += [(r.report_id, r.generated_at, r.analysis_period[0], r.analysis_period[1],
                        _json(r.failure_categories), _json(r.patch_suggestions), _json(r.github_issues))
                       for r in step.triage_rows]
            for name, n in step.counters.items():
                counters[name] = counters.get(name, 0) + n
            effect_id = getattr(ib.event, "effect_id", None)
            if effect_id is not None and ib.key.startswith("reply:"):
                replies.append((ib.at, effect_id))
        async with self._tx:
            await self._commit(inbox, transitions, outbox, replies, cycles, canaries, commands, counters, bounds,
                               drift, triage, cycle_starts, cycle_snapshots, state, active_cycle_id, journal_seq)

    async def _commit(self, inbox, transitions, outbox, replies, cycles, canaries, commands, counters, bounds,
                      drift, triage, cycle_starts, cycle_snapshots, state, active_cycle_id, journal_seq=None) -> None:
        db = self._db
        try:
            await db.execute("BEGIN IMMEDIATE")
            await db.executemany("INSERT INTO inbox(key, subject, at, stream_seq, event) VALUES (?,?,?,?,?)", inbox)
            await db.executemany("INSERT INTO transitions VALUES (?,?,?,?,?,?,?,?,?)", transitions)
            await db.executemany("INSERT OR IGNORE INTO outbox(effect_id, kind, subject, body, created_at) VALUES (?,?,?,?,?)", outbox)
            await db.executemany("UPDATE outbox SET sent_at = ? WHERE effect_id = ? AND sent_at IS NULL", replies)
            await db.executemany(
                "INSERT INTO autopilot_cycles VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(cycle_id) DO UPDATE SET "
                "completed_at=excluded.completed_at, status=excluded.status, metrics_analysis=excluded.metrics_analysis, "
                "proposed_changes=excluded.proposed_changes, deployment_result=excluded.deployment_result, "
                "error_message=excluded.error_message",
                [(r["cycle_id"], r["started_at"], r["completed_at"], r["status"], _json(r["metrics_analysis"]),
                  _json(r["proposed_changes"]), _json(r["deployment_result"]), r["error_message"]) for r in cycles.values()])
            await db.executemany(
                "INSERT INTO canary_deployments VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT(canary_id) DO UPDATE SET "
                "completed_at=excluded.completed_at, control_metrics=excluded.control_metrics, "
                "canary_metrics=excluded.canary_metrics, statistical_significance=excluded.statistical_significance, "
                "recommendation=excluded.recommendation",
                [(r["canary_id"], r["cycle_id"], r["started_at"], r["completed_at"], r["traffic_percentage"],
                  _json(r["control_metrics"]), _json(r["canary_metrics"]), r["statistical_significance"],
                  r["recommendation"]) for r in canaries.values()])
            await db.executemany("INSERT INTO commands(at, verb, via, actor, reason, body, ok, error) VALUES (?,?,?,?,?,?,?,?)", commands)
            await db.executemany(
                "INSERT INTO counters VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                list(counters.items()))
            await db.executemany(
                "INSERT INTO parameter_bounds VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(parameter_name) DO UPDATE SET "
                "min_value=excluded.min_value, max_value=excluded.max_value, current_value=excluded.current_value, "
                "stability_days=excluded.stability_days, rollback_count=excluded.rollback_count, "
                "last_updated=excluded.last_updated, bounds_history=excluded.bounds_history",
                [(b.parameter_name, b.min_value, b.max_value, b.current_value, b.stability_days, b.rollback_count,
                  b.last_updated, _json(b.history)) for b in bounds.values()])
            await db.executemany("INSERT OR REPLACE INTO drift_events VALUES (?,?,?,?,?,?)", drift)
            await db.executemany("INSERT OR REPLACE INTO triage_reports VALUES (?,?,?,?,?,?,?)", triage)
            for start in cycle_starts:
                await db.execute(
                    "INSERT INTO cycle_snapshots(cycle_id, snapshot, start_inbox_key, state_before, config, golden) "
                    "VALUES (?,?,?,?,?,?)",
                    (start.cycle_id, "{}", start.inbox_key, start.state_before.decode(), start.config, start.golden))
            await db.executemany("UPDATE cycle_snapshots SET snapshot = ? WHERE cycle_id = ?",
                                 [(snap.decode(), cid) for cid, snap in cycle_snapshots.items()])
            if state is not None:
                await db.execute("INSERT INTO autopilot_state VALUES (1, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                                 "state=excluded.state, active_cycle_id=excluded.active_cycle_id",
                                 (state.decode(), active_cycle_id))
            if journal_seq is not None:
                await db.execute(_SET_JOURNAL_SEQ, (journal_seq,))
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise

    # --- outbox -------------------------------------------------------------------------------

    async def pending_effects(self, limit: int = 500) -> list[Effect]:
        rows = await (await self._db.execute(
            "SELECT effect_id, kind, subject, body FROM outbox WHERE sent_at IS NULL ORDER BY id LIMIT ?", (limit,))).fetchall()
        return [Effect(r[0], r[1], json.loads(r[3]), subject=r[2]) for r in rows]

    async def mark_sent(self, effect_ids: list[str], at: str, *, journal_seq: int | None = None) -> None:
        if journal_seq is None:
            await self._db.executemany("UPDATE outbox SET sent_at = ? WHERE effect_id = ?", [(at, e) for e in effect_ids])
            return
        async with self._tx:
            db = self._db
            try:
                await db.execute("BEGIN IMMEDIATE")
                await db.executemany("UPDATE outbox SET sent_at = ? WHERE effect_id = ? AND sent_at IS NULL",
                                     [(at, e) for e in effect_ids])
                await db.execute(_SET_JOURNAL_SEQ, (journal_seq,))
                await db.execute("COMMIT")
            except BaseException:
                await db.execute("ROLLBACK")
                raise

    # --- replication (README, "Deployment: replicas") -------------------------------------------

    async def journal_seq(self) -> int:
        """The last journal entry this store reflects (0: none)."""
        row = await (await self._db.execute("SELECT journal_seq FROM replica WHERE id = 1")).fetchone()
        return 0 if row is None else int(row[0])

    async def set_journal_seq(self, seq: int) -> None:
        async with self._tx:
            await self._db.execute(_SET_JOURNAL_SEQ, (seq,))

    async def backup_to(self, path: Path) -> None:
        """A consistent copy of the whole store (``VACUUM INTO``), for a snapshot."""
        path.unlink(missing_ok=True)
        async with self._tx:
            await self._db.execute("VACUUM INTO ?", (str(path),))

    # --- GitHub issues (the relay's github_issues effects) ----------------------------------------

    async def github_done(self, effect_id: str) -> dict[str, dict[str, Any]]:
        """What this effect has already filed: issue key -> result."""
        rows = await (await self._db.execute(
            "SELECT issue_key, result FROM github_issue_log WHERE effect_id = ?", (effect_id,))).fetchall()
        return {r[0]: json.loads(r[1]) for r in rows}

    async def record_github_issue(self, effect_id: str, key: str, report_id: str, result: dict[str, Any], at: str) -> None:
        async with self._tx:
            await self._db.execute("INSERT OR REPLACE INTO github_issue_log VALUES (?,?,?,?,?)",
                                   (effect_id, key, report_id, _json(result), at))

    async def finish_github(self, effect_id: str, report_id: str, issues: list[dict[str, Any]],
                            alert: Effect | None, at: str) -> None:
        """In one transaction: the issues' results into ``triage_reports.github_issues``, the
        operator alert (if any) into the outbox, and the effect marked sent."""
        async with self._tx:
            db = self._db
            try:
                await db.execute("BEGIN IMMEDIATE")
                await db.execute("UPDATE triage_reports SET github_issues = ? WHERE report_id = ?",
                                 (_json(issues), report_id))
                if alert is not None:
                    await db.execute("INSERT OR IGNORE INTO outbox(effect_id, kind, subject, body, created_at) "
                                     "VALUES (?,?,?,?,?)", (alert.effect_id, alert.kind, alert.subject, _json(alert.body), at))
                await db.execute("UPDATE outbox SET sent_at = ? WHERE effect_id = ? AND sent_at IS NULL", (at, effect_id))
                await db.execute("COMMIT")
            except BaseException:
                await db.execute("ROLLBACK")
                raise

    async def add_counter(self, name: str, n: int = 1) -> None:
        await self._db.execute("INSERT INTO counters VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + excluded.value", (name, n))

    # --- reads ----------------------------------------------------------------------------------

    async def load_state(self) -> tuple[bytes | None, bytes | None]:
        row = await (await self._db.execute("SELECT state, active_cycle_id FROM autopilot_state WHERE id = 1")).fetchone()
        if row is None:
            return None, None
        snapshot = None
        if row[1]:
            snap = await (await self._db.execute("SELECT snapshot FROM cycle_snapshots WHERE cycle_id = ?", (row[1],))).fetchone()
            snapshot = snap[0].encode() if snap else None
        return row[0].encode(), snapshot

    async def transitions(self, cycle_id: str) -> list[TransitionRecord]:
        rows = await (await self._db.execute(
            "SELECT cycle_id, seq, from_state, to_state, trigger, at, cause, detail, machine FROM transitions "
            "WHERE cycle_id = ? ORDER BY seq", (cycle_id,))).fetchall()
        return [TransitionRecord(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6]), json.loads(r[7]), r[8]) for r in rows]

    async def cycles(self, limit: int = 50) -> list[dict[str, Any]]:
        rows = await (await self._db.execute(
            "SELECT cycle_id, started_at, completed_at, status, proposed_changes, deployment_result, error_message "
            "FROM autopilot_cycles ORDER BY cycle_id DESC LIMIT ?", (limit,))).fetchall()
        out = []
        for r in rows:
            result = json.loads(r[5]) if r[5] else {}
            out.append({"cycle_id": r[0], "started_at": r[1], "completed_at": r[2], "status": r[3],
                        "outcome": result.get("state"), "changes": json.loads(r[4]) if r[4] else [],
                        "version_id": result.get("version_id"),
                        "gate": (result.get("gate") or {}).get("recommendation"), "error": r[6],
                        "gate_reason": (result.get("gate") or {}).get("reason")})
        return out

    async def cycle_start(self, cycle_id: str) -> CycleStart | None:
        row = await (await self._db.execute(
            "SELECT start_inbox_key, state_before, config, golden FROM cycle_snapshots WHERE cycle_id = ?",
            (cycle_id,))).fetchone()
        return None if row is None else CycleStart(cycle_id, row[0], row[1].encode(), row[2], row[3])

    async def inbox_from(self, key: str) -> list[Inbound]:
        row = await (await self._db.execute("SELECT id FROM inbox WHERE key = ?", (key,))).fetchone()
        if row is None:
            return []
        rows = await (await self._db.execute(
            "SELECT key, subject, at, stream_seq, event FROM inbox WHERE id >= ? ORDER BY id", (row[0],))).fetchall()
        decoder = msgspec.json.Decoder(CoreEvent)
        return [Inbound(key=r[0], subject=r[1], at=r[2], stream_seq=r[3], event=decoder.decode(r[4])) for r in rows]

    async def bounds(self) -> list[dict[str, Any]]:
        rows = await (await self._db.execute(
            "SELECT parameter_name, min_value, max_value, current_value, stability_days, rollback_count, "
            "last_updated, bounds_history FROM parameter_bounds ORDER BY parameter_name")).fetchall()
        return [{"parameter_name": r[0], "min_value": r[1], "max_value": r[2], "current_value": r[3],
                 "stability_days": r[4], "rollback_count": r[5], "last_updated": r[6],
                 "bounds_history": json.loads(r[7]) if r[7] else []} for r in rows]

    async def triage_reports(self, limit: int = 5) -> list[dict[str, Any]]:
        rows = await (await self._db.execute(
            "SELECT report_id, generated_at, analysis_period_start, analysis_period_end, failure_categories, "
            "patch_suggestions, github_issues FROM triage_reports ORDER BY generated_at DESC LIMIT ?", (limit,))).fetchall()
        return [{"report_id": r[0], "generated_at": r[1], "analysis_period": [r[2], r[3]],
                 "failure_categories": json.loads(r[4] or "{}"), "patch_suggestions": json.loads(r[5] or "[]"),
                 "github_issues": json.loads(r[6] or "[]")} for r in rows]

    async def drift_events(self, limit: int = 20) -> list[dict[str, Any]]:
        rows = await (await self._db.execute(
            "SELECT event_id, event_type, detected_at, metrics, action_taken, resolved_at FROM drift_events "
            "ORDER BY detected_at DESC LIMIT ?", (limit,))).fetchall()
        return [{"event_id": r[0], "event_type": r[1], "detected_at": r[2], "metrics": json.loads(r[3] or "{}"),
                 "action_taken": json.loads(r[4]), "resolved_at": r[5]} for r in rows]

    async def counters(self) -> dict[str, int]:
        rows = await (await self._db.execute("SELECT name, value FROM counters")).fetchall()
        return {r[0]: r[1] for r in rows}

    # --- reads for the operator's console (``history``, ``report``: local or over the bus) ------------

    @property
    def read_lock(self) -> asyncio.Lock:
        """Held by a read served while the service runs, so it never sees another task's open transaction."""
        return self._tx

    async def resolve_cycle(self, prefix: str) -> str:
        """The cycle whose id is or starts with ``prefix`` (a unique prefix, as git accepts)."""
        return await resolve_cycle_id(self._db, prefix)

    async def cycle_row(self, cycle_id: str) -> dict[str, Any] | None:
        r = await (await self._db.execute(
            "SELECT cycle_id, started_at, completed_at, status, metrics_analysis, proposed_changes, deployment_result, "
            "error_message FROM autopilot_cycles WHERE cycle_id = ?", (cycle_id,))).fetchone()
        if r is None:
            return None
        return {"cycle_id": r[0], "started_at": r[1], "completed_at": r[2], "status": r[3],
                "metrics_analysis": json.loads(r[4]) if r[4] else None,
                "proposed_changes": json.loads(r[5]) if r[5] else [],
                "deployment_result": json.loads(r[6]) if r[6] else {}, "error_message": r[7]}

    async def cycle_snapshot(self, cycle_id: str) -> dict[str, Any] | None:
        r = await (await self._db.execute("SELECT snapshot FROM cycle_snapshots WHERE cycle_id = ?", (cycle_id,))).fetchone()
        return json.loads(r[0]) if r and r[0] else None

    async def last_transitions(self, cycle_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Per cycle, its last transition (to, trigger, detail): why it ended where it is."""
        out: dict[str, dict[str, Any]] = {}
        for cid in cycle_ids:
            r = await (await self._db.execute(
                "SELECT to_state, trigger, detail, at FROM transitions WHERE cycle_id = ? ORDER BY seq DESC LIMIT 1",
                (cid,))).fetchone()
            if r is not None:
                out[cid] = {"to": r[0], "trigger": r[1], "detail": json.loads(r[2]), "at": r[3]}
        return out

    async def commands_log(self, limit: int = 50) -> list[dict[str, Any]]:
        rows = await (await self._db.execute(
            "SELECT at, verb, via, actor, reason, ok, error FROM commands ORDER BY id DESC LIMIT ?", (limit,))).fetchall()
        return [{"at": r[0], "verb": r[1], "via": r[2], "actor": r[3], "reason": r[4], "ok": bool(r[5]), "error": r[6]} for r in rows]
