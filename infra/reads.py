"""Reads for the operator's console, from the store: ``history``, ``bounds``, ``report``,
``triage`` and ``replay``.

The same functions answer the local CLI (``--data-dir`` of a stopped service) and the
running service's ``ctl.<verb>`` requests (contract v1.1 §7, "Reads over the bus"),
so both print the same thing. Over the bus the reply has the §2.1 envelope
(``ok``, ``error``, ``state``, ``cycle_id``) and the data under ``data``: what the CLI
verb prints with ``--json``. A read never steps the core: it runs beside the loop,
under the store's lock only for its queries, and a replay's work runs in a thread.

Also here: the service's answers that must wait for VVTV (:class:`PendingReplies`) and
the extra ``status`` fields for the console (:func:`status_extras`).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import OrderedDict
from datetime import datetime
from typing import Any

import msgspec

from ..handlers.gate import evaluate_gate
from ..handlers.golden import GoldenSet
from ..schemas.config import Config
from ..schemas.errors import HistoryError, MessageError, ReadRefused, ReplayMismatch, StoreError
from ..schemas.events import ApplyResult
from ..statemachine.replay import replay_cycle, verify
from .clock import now
from .history import ParameterHistory
from .report import build_report, transition_reason
from .store import Store

READ_VERBS = ("history", "bounds", "report", "triage", "replay")


# --- prefixes ------------------------------------------------------------------------------------


def resolve_version(hist: ParameterHistory, prefix: str) -> str:
    """The stored version whose id is or starts with ``prefix`` (git's habit: a unique prefix
    of at least 4 hex digits); :class:`ReadRefused` naming the candidates otherwise."""
    prefix = prefix.strip().lower()
    if len(prefix) < 4 or any(ch not in "0123456789abcdef" for ch in prefix):
        raise ReadRefused(f"version id {prefix!r}: give at least 4 hex digits of an id `history --versions` lists")
    ids = sorted({v.version_id for v in hist.get_version_history()} | {i for i in [hist.current_version_id()] if i})
    found = [i for i in ids if i.startswith(prefix)]
    if not found:
        raise ReadRefused(f"no stored version_id starts with {prefix} (`history --versions` lists them)")
    if len(found) > 1:
        raise ReadRefused(f"version id {prefix} is ambiguous: {', '.join(f[:16] for f in found[:5])}; give more digits")
    return found[0]


# --- the reads -----------------------------------------------------------------------------------


async def history(store: Store, hist: ParameterHistory | None, *, limit: int = 20, versions: bool = False) -> Any:
    if versions:
        if hist is None:
            raise ReadRefused("no parameter history here")
        current = await asyncio.to_thread(hist.current_version_id)
        rows = await asyncio.to_thread(hist.get_version_history, limit)
        return [v.to_dict() | {"current": v.version_id == current} for v in rows]
    async with store.read_lock:
        rows = await store.cycles(limit)
        last = await store.last_transitions([r["cycle_id"] for r in rows])
    for r in rows:
        t = last.get(r["cycle_id"])
        r["why"] = None if t is None else transition_reason(t["to"], t["trigger"], t["detail"])
        if t is not None and t["trigger"] == "deployed" and r.get("gate_reason"):
            r["why"] = f"{r['gate_reason']}; VVTV runs it live"
    return rows


async def bounds(store: Store) -> Any:
    async with store.read_lock:
        return await store.bounds()


async def triage(store: Store, *, limit: int = 3) -> Any:
    async with store.read_lock:
        return {"reports": await store.triage_reports(limit), "drift_events": await store.drift_events(20)}


async def resolve_cycle(source: Any, cycle: str) -> str:
    """The full id of ``cycle`` (a unique prefix is enough), or a refusal saying why not. The one
    place a cycle id is resolved: ``source`` is the :class:`Store` or a read-only
    :class:`~.webdata.WebData` (``replay --what-if`` / ``--export`` / ``--log``)."""
    try:
        return await source.resolve_cycle(cycle)
    except StoreError as exc:
        raise ReadRefused(str(exc)) from None


async def report(store: Store, cycle: str) -> dict[str, Any]:
    async with store.read_lock:
        cycle_id = await resolve_cycle(store, cycle)
        row = await store.cycle_row(cycle_id)
        records = await store.transitions(cycle_id)
        snapshot = await store.cycle_snapshot(cycle_id)
    transitions = [msgspec.to_builtins(t) for t in records]
    return build_report(row or {"cycle_id": cycle_id}, transitions, snapshot)


async def replay(store: Store, cycle: str) -> dict[str, Any]:
    async with store.read_lock:
        cycle_id = await resolve_cycle(store, cycle)
        start = await store.cycle_start(cycle_id)
        if start is None:
            raise ReadRefused(f"cycle {cycle_id} has no recorded start to replay from")
        inbounds = await store.inbox_from(start.inbox_key)
        recorded = await store.transitions(cycle_id)

    def work() -> list[str]:
        golden = None if start.golden is None else msgspec.json.decode(start.golden, type=GoldenSet)
        replayed = replay_cycle(Config.model_validate_json(start.config), start.state_before, inbounds, cycle_id,
                                golden=golden)
        try:
            verify(recorded, replayed, cycle_id)
            return []
        except ReplayMismatch as mismatch:
            return mismatch.problems

    problems = await asyncio.to_thread(work)
    return {"cycle_id": cycle_id, "recorded": len(recorded), "exact": not problems, "differences": problems,
            "transitions": [{"seq": t.seq, "from": t.from_, "to": t.to, "trigger": t.trigger, "at": t.at,
                             "reason": transition_reason(t.to, t.trigger, t.detail)} for t in recorded]}


async def read(store: Store, hist: ParameterHistory | None, verb: str, body: dict[str, Any]) -> Any:
    """One read by name, with the body's options (``limit``, ``versions``, ``cycle_id``)."""
    limit = body.get("limit")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 1000):
        raise MessageError("`limit` must be an integer in [1, 1000]")
    if verb == "history":
        return await history(store, hist, limit=limit or 20, versions=bool(body.get("versions")))
    if verb == "bounds":
        return await bounds(store)
    if verb == "triage":
        return await triage(store, limit=limit or 3)
    cycle = body.get("cycle_id")
    if not isinstance(cycle, str) or not cycle or len(cycle) > 64:
        raise MessageError(f"{verb} needs `cycle_id` (a cycle id or a unique prefix of one)")
    return await (report(store, cycle) if verb == "report" else replay(store, cycle))


def is_read(verb: str, data: bytes) -> bool:
    """``ctl.triage`` is a read unless it asks for a run (``"run": true``; ``cmd.triage`` always runs)."""
    if verb not in READ_VERBS:
        return False
    if verb == "triage":
        try:
            body = json.loads(data or b"{}")
        except ValueError:
            return True  # answered as a malformed read
        return not (isinstance(body, dict) and body.get("run") is True)
    return True


async def answer(service: Any, verb: str, data: bytes) -> dict[str, Any]:
    """The service's reply to ``ctl.<verb>`` for a read."""
    state = service.core.mode(service_now()) if service.core else "Unknown"
    try:
        try:
            body = json.loads(data or b"{}")
        except ValueError:
            raise MessageError("the request is not valid JSON") from None
        if not isinstance(body, dict):
            raise MessageError("the request must be a JSON object")
        payload = await read(service.store, service.card.history, verb, body)
    except (MessageError, ReadRefused, HistoryError) as exc:
        return {"ok": False, "error": str(exc), "state": state, "cycle_id": None}
    cycle_id = payload.get("cycle_id") if isinstance(payload, dict) else None
    return {"ok": True, "error": None, "state": state, "cycle_id": cycle_id, "data": payload}


def service_now() -> datetime:
    return now()


# --- replies that wait for VVTV ------------------------------------------------------------------


class PendingReplies:
    """An override's or a rollback's reply waits for the step that handles VVTV's answer
    (the ``ApplyResult`` of the effect the command's reply names in ``pending_apply``).
    Whichever comes first — the waiting request or the answer — leaves a future here."""

    def __init__(self, keep: int = 256):
        self._futures: OrderedDict[str, asyncio.Future] = OrderedDict()
        self._keep = keep

    def _future(self, effect_id: str) -> asyncio.Future:
        fut = self._futures.get(effect_id)
        if fut is None:
            fut = self._futures[effect_id] = asyncio.get_running_loop().create_future()
            while len(self._futures) > self._keep:
                self._futures.popitem(last=False)
        return fut

    def on_step(self, step: Any) -> None:
        event = step.inbound.event
        if isinstance(event, ApplyResult) and step.reply is not None:
            fut = self._future(event.effect_id)
            if not fut.done():
                fut.set_result(step.reply)

    async def wait(self, first: dict[str, Any], timeout: float) -> dict[str, Any]:
        effect_id = first["pending_apply"]
        try:
            final = await asyncio.wait_for(asyncio.shield(self._future(effect_id)), timeout)
        except asyncio.TimeoutError:
            return {**first, "ok": False, "applied": None, "outcome": "pending",
                    "error": f"VVTV's answer has not come back within {timeout:.0f} s; the change is still waiting "
                             "for it (status shows `pending_live`): nothing is written until VVTV applies it"}
        finally:
            self._futures.pop(effect_id, None)
        return final


# --- status, for the console -----------------------------------------------------------------------


def status_extras(service: Any) -> dict[str, Any]:
    """The service's identity and, during a canary, the gate's view so far (what ``watch`` shows)."""
    extras: dict[str, Any] = {"service": {"instance_id": service.instance_id, "pid": os.getpid(),
                                          "started_at": service.started_at}}
    cycle = service.core.running() if service.core else None
    if cycle is not None and cycle.state == "Canary":
        d, cfg = cycle.data, service.config.autopilot
        try:
            started = datetime.fromisoformat((d.canary_started_at or "").replace("Z", "+00:00"))
            elapsed = (service_now() - started).total_seconds() / (cycle.canary_minutes * 60.0)
            decision = evaluate_gate(
                service.config.kpis, d.control, d.canary, confidence=cfg.statistical_confidence_threshold,
                min_samples=cfg.min_samples_per_arm, final=False, traffic_fraction=cfg.canary_traffic_percentage,
                elapsed_fraction=max(elapsed, 1e-6),
                inconclusive_action="rollback" if d.extended else cfg.inconclusive_action)
            extras["gate_so_far"] = msgspec.to_builtins(decision) | {"canary_started_at": d.canary_started_at,
                                                                     "elapsed_fraction": elapsed}
        except Exception as exc:  # noqa: BLE001 - a view only: never fail a status over it
            extras["gate_so_far"] = {"error": f"{type(exc).__name__}: {exc}"}
    return extras
