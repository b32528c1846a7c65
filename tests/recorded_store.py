"""A real SQLite store holding a simulated world's cycles, written by infra/store.py.

:func:`fill_store` commits every step of a :class:`sim_harness.SimWorld` as the service
commits it (inbox, transitions, cycle rows, snapshots, the state before each cycle), so
replays and reads work on the store exactly as they would on a service's.
:func:`clone_cycles` adds copies of the stored cycles under fresh ids (times shifted back by
the simulated span, details unchanged, the recorded inbox shared), for a store of 1,000
cycles without simulating 1,000 days. Used by tests, bench/bench_replay.py and bench/bench_web.py.
"""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path

import msgspec

from sim_harness import SimWorld
from vvtv_autopilot.infra.store import CycleStart, Store
from vvtv_autopilot.schemas.messages import parse_time, rfc3339

_enc = msgspec.json.Encoder()


async def fill_store(path: Path, world: SimWorld) -> None:
    config_json = world.config.model_dump_json()
    golden_json = None if world.golden is None else _enc.encode(world.golden).decode()
    starts_at = {c.fed_index: c for c in world.cycles.values()}
    store = await Store.open(path)
    try:
        batch, starts, snaps = [], [], {}
        for i, step in enumerate(world.steps):
            batch.append(step)
            info = starts_at.get(i)
            if info is not None:
                starts.append(CycleStart(info.cycle_id, world.fed[i].key, info.state_before, config_json, golden_json))
            for row in step.cycle_rows:
                snaps[row["cycle_id"]] = _enc.encode(row["snapshot"])
            if len(batch) >= 500 or i == len(world.steps) - 1:
                await store.commit(batch, state=_enc.encode(world.ap.state), active_cycle_id=world.ap.state.active_cycle_id,
                                   cycle_snapshots=snaps, cycle_starts=starts)
                batch, starts, snaps = [], [], {}
    finally:
        await store.close()


def _shift(at: str | None, days: float) -> str | None:
    return None if at is None else rfc3339(parse_time(at) - timedelta(days=days))


def clone_cycles(path: Path, cycles: int) -> int:
    """Copies of the stored cycles (ids suffixed ``-cN``, times shifted back) until the store
    holds ``cycles`` cycles; the number of copies made."""
    db = sqlite3.connect(path)
    try:
        rows = db.execute("SELECT * FROM autopilot_cycles ORDER BY started_at").fetchall()
        if not rows:
            return 0
        span = (parse_time(rows[-1][1]) - parse_time(rows[0][1])).total_seconds() / 86400 + 1
        trans = db.execute("SELECT * FROM transitions").fetchall()
        canaries = db.execute("SELECT * FROM canary_deployments").fetchall()
        snaps = db.execute("SELECT * FROM cycle_snapshots").fetchall()
        copies, total = 0, len(rows)
        while total < cycles:
            copies += 1
            k, days = f"-c{copies}", span * copies
            take = rows[: cycles - total]
            ids = {r[0] for r in take}
            db.executemany("INSERT INTO autopilot_cycles VALUES (?,?,?,?,?,?,?,?)",
                           [(r[0] + k, _shift(r[1], days), _shift(r[2], days)) + tuple(r[3:]) for r in take])
            db.executemany("INSERT INTO transitions VALUES (?,?,?,?,?,?,?,?,?)",
                           [(r[0] + k, r[1], r[2], r[3], r[4], _shift(r[5], days)) + tuple(r[6:])
                            for r in trans if r[0] in ids])
            db.executemany("INSERT INTO canary_deployments VALUES (?,?,?,?,?,?,?,?,?)",
                           [(r[0] + k, r[1] + k, _shift(r[2], days), _shift(r[3], days)) + tuple(r[4:])
                            for r in canaries if r[1] in ids])
            db.executemany("INSERT INTO cycle_snapshots VALUES (?,?,?,?,?,?)",
                           [(r[0] + k,) + tuple(r[1:]) for r in snaps if r[0] in ids])
            total += len(take)
        db.commit()
        return copies
    finally:
        db.close()
