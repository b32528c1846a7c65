"""Replay of a cycle for incident review (Temporal is the model): exact, and what-if.

Given the autopilot's state just before the event that started the cycle,
the configuration it ran under and the inbox from that event on, the pure
core must produce the very transitions that were recorded (:func:`replay_cycle`).
:func:`what_if` feeds the same recorded inputs to a core with another
configuration and says, step by step, where its decisions would have differed.
"""

from __future__ import annotations

from typing import Any, Iterable

import msgspec

from ..handlers.golden import GoldenSet
from ..schemas.config import Config
from ..schemas.errors import ReplayMismatch
from ..schemas.events import (ApplyResult, Effect, GoldenResult, Inbound, RecordedCycle, TimerEvent,
                              TransitionRecord)
from .autopilot import Autopilot, AutopilotState
from ..schemas.messages import parse_time
from .definition import TERMINAL


_state_decoder = msgspec.json.Decoder(AutopilotState)


def replay_cycle(config: Config, state_before: bytes, inbounds: Iterable[Inbound], cycle_id: str, *,
                 golden: GoldenSet | None = None) -> list[TransitionRecord]:
    """``golden`` is the built-in golden set the cycle ran with (``golden.mode:
    builtin``); in service mode its answers are in the inbox instead.

    The core is stepped without a pre-image of its state per event (what containment needs to
    put it back) and without the domain rows a replay never reads. Should the core fail on an
    event — the recorded run then contained that failure — the cycle is replayed again from
    the start with containment, as it ran: the core is deterministic, so both give the
    recorded transitions, and the common case does not pay for the rare one."""
    inbounds = list(inbounds)
    try:
        return _replay(config, state_before, inbounds, cycle_id, golden, contain=False)
    except Exception:  # noqa: BLE001 - a failure the recording contained: replay it the careful way
        return _replay(config, state_before, inbounds, cycle_id, golden, contain=True)


def _replay(config: Config, state_before: bytes, inbounds: list[Inbound], cycle_id: str, golden: GoldenSet | None,
            *, contain: bool) -> list[TransitionRecord]:
    core = Autopilot(config, _state_decoder.decode(state_before), golden=golden, contain=contain, rows=False)
    out: list[TransitionRecord] = []
    for inbound in inbounds:
        step = core.handle(inbound)
        out.extend(t for t in step.transitions if t.cycle_id == cycle_id)
        if out and out[-1].to in TERMINAL:
            break
    return out


def verify(recorded: list[TransitionRecord], replayed: list[TransitionRecord], cycle_id: str) -> None:
    """Raise :class:`ReplayMismatch` unless the replay is exact."""
    problems = compare(recorded, replayed)
    if problems:
        raise ReplayMismatch(cycle_id, problems)


def compare(recorded: list[TransitionRecord], replayed: list[TransitionRecord]) -> list[str]:
    """Human-readable differences; empty when the replay is exact."""
    problems = []
    encode = _encoder.encode
    for i in range(max(len(recorded), len(replayed))):
        a = recorded[i] if i < len(recorded) else None
        b = replayed[i] if i < len(replayed) else None
        if a is None or b is None:
            problems.append(f"seq {i + 1}: recorded {a and (a.from_, a.to)} but replay gave {b and (b.from_, b.to)}")
        elif encode(a) != encode(b) and _plain(a) != _plain(b):   # the same text is the same record
            fields = [f for f in ("from_", "to", "trigger", "at", "cause", "detail", "machine")
                      if _plain(getattr(a, f)) != _plain(getattr(b, f))]
            problems.append(f"seq {a.seq}: differs in {', '.join(fields)}")
    return problems


_encoder = msgspec.json.Encoder()


def _plain(value):
    """As it would read back from the store (tuples become lists, and so on)."""
    return msgspec.json.decode(msgspec.json.encode(value))


def replay_recorded(rec: RecordedCycle, *, config: Config | None = None) -> list[TransitionRecord]:
    """Exact replay of an exported cycle (under its own configuration unless given)."""
    cfg = config or Config.model_validate_json(rec.config)
    golden = None if rec.golden is None else msgspec.json.decode(rec.golden, type=GoldenSet)
    return replay_cycle(cfg, rec.state_before.encode(), rec.inbounds, rec.cycle_id, golden=golden)


# --- what-if: the recorded inputs under another configuration -----------------------------------


class StepDifference(msgspec.Struct, frozen=True):
    """One step where the what-if differs from the record: each side's move and decision."""

    seq: int
    recorded: dict[str, Any] | None
    what_if: dict[str, Any] | None
    what: str


class WhatIf(msgspec.Struct, frozen=True):
    cycle_id: str
    recorded_outcome: str | None
    outcome: str | None                    # None: the what-if did not end within the recorded inputs
    same: bool
    differences: list[StepDifference]
    transitions: list[TransitionRecord]
    assumed: list[str]                     # replies the record cannot provide, assumed as stated
    notes: list[str]


def what_if(rec: RecordedCycle, config: Config) -> WhatIf:
    """Re-run a recorded cycle's inputs under ``config`` and say where the decisions differ.

    The world's inputs (metrics, alerts, commands) are fed as recorded. Timers and VVTV's
    replies depend on the decisions, so they are re-derived: every timer fires at the time
    the what-if core scheduled it, and every apply or golden request is answered as VVTV
    answered the recorded request of the same purpose (or, when the record has none, as
    applied / passed, listed in ``assumed``). With the recorded configuration this
    reproduces the recorded decisions; under another one it shows, step by step, where and
    how they would have differed, and the outcome."""
    golden = None if rec.golden is None else msgspec.json.decode(rec.golden, type=GoldenSet)
    core = Autopilot(config, msgspec.json.decode(rec.state_before.encode(), type=AutopilotState), golden=golden)
    replies = {_reply_purpose(ib.event): ib for ib in rec.inbounds
               if isinstance(ib.event, (ApplyResult, GoldenResult)) and ib.event.cycle_id == rec.cycle_id}
    pending: dict[str, tuple[str, int, Inbound]] = {}      # schedule name -> (at, order, timer inbound)
    answers: list[tuple[str, int, Inbound]] = []           # synthesized replies, by time
    out: list[TransitionRecord] = []
    assumed: list[str] = []
    order = 0

    def feed(ib: Inbound) -> bool:
        nonlocal order
        step = core.handle(ib)
        out.extend(t for t in step.transitions if t.cycle_id == rec.cycle_id)
        for e in step.effects:
            order += 1
            if e.kind == "schedule":
                timer = msgspec.convert(e.body["event"], TimerEvent)
                pending[e.body["name"]] = (e.body["at"], order, Inbound(
                    key=f"what-if:timer:{order}", subject=f"timer.{timer.kind}", at=e.body["at"], event=timer))
            elif e.kind in ("apply", "golden") and e.body["request"].get("cycle_id") == rec.cycle_id:
                answers.append(_answer(e, replies, step.at, order, assumed))
        return bool(out) and out[-1].to in TERMINAL

    def due(until: str | None) -> Inbound | None:
        """The earliest synthesized timer or reply at or before ``until`` (None: any)."""
        # RFC 3339 strings with and without fractions do not sort as text: compare times
        candidates = [(parse_time(at), o, at, ib, "timer", name) for name, (at, o, ib) in pending.items()]
        candidates += [(parse_time(at), o, at, ib, "reply", None) for at, o, ib in answers]
        limit = None if until is None else parse_time(until)
        candidates = [c for c in candidates if limit is None or c[0] <= limit]
        if not candidates:
            return None
        _, o, at, ib, kind, name = min(candidates, key=lambda c: (c[0], c[1]))
        if kind == "timer":
            del pending[name]
        else:
            answers.remove((at, o, ib))
        return ib

    done = False
    for n, ib in enumerate(rec.inbounds):
        if n > 0 and isinstance(ib.event, (TimerEvent, ApplyResult, GoldenResult)):
            continue   # re-derived from the what-if's own decisions (the first event started the cycle)
        while not done and (synthetic := due(ib.at)) is not None:
            done = feed(synthetic)
        if done:
            break
        done = feed(ib)
        if done:
            break
    for _ in range(1000):   # the record ended first: let the cycle's own timers and replies finish it
        if done:
            break
        synthetic = due(None)
        if synthetic is None:
            break
        done = feed(synthetic)

    notes = []
    cycle = core.cycle
    if cycle is not None and cycle.data.cycle_id == rec.cycle_id and rec.transitions:
        recorded_candidate = next((t.detail.get("candidate_version") for t in rec.transitions
                                   if t.detail.get("candidate_version")), None)
        if recorded_candidate and cycle.data.candidate_version and cycle.data.candidate_version != recorded_candidate:
            notes.append("the what-if proposes another candidate than the record: the recorded canary metrics "
                         "belong to the recorded candidate and are not counted for it")
    if not done:
        notes.append("the recorded inputs ended before the what-if's cycle did")
    differences = _differences(rec.transitions, out)
    return WhatIf(cycle_id=rec.cycle_id, recorded_outcome=rec.transitions[-1].to if rec.transitions else None,
                  outcome=out[-1].to if done else None, same=not differences, differences=differences,
                  transitions=out, assumed=assumed, notes=notes)


def summarize_what_ifs(results: list[WhatIf]) -> dict[str, Any]:
    """``replay --all --what-if``: how many outcomes would change, and into what."""
    changed: dict[str, int] = {}
    for r in results:
        if r.outcome != r.recorded_outcome:
            key = f"{r.recorded_outcome} -> {r.outcome or 'unfinished'}"
            changed[key] = changed.get(key, 0) + 1
    recorded: dict[str, int] = {}
    for r in results:
        recorded[r.recorded_outcome or "none"] = recorded.get(r.recorded_outcome or "none", 0) + 1
    lines = [f"{n} of {recorded.get(key.split(' -> ')[0], 0)} {key.split(' -> ')[0]} cycles would have ended "
             f"{key.split(' -> ')[1]}" for key, n in sorted(changed.items())]
    return {"cycles": len(results), "same_decisions": sum(r.same for r in results), "recorded": recorded,
            "changed": changed, "summary": lines or [f"all {len(results)} cycles would have ended the same way"]}


def _reply_purpose(event: ApplyResult | GoldenResult) -> str:
    return "golden" if isinstance(event, GoldenResult) else event.purpose


def _answer(effect: Effect, replies: dict[str, Inbound], now: str, order: int,
            assumed: list[str]) -> tuple[str, int, Inbound]:
    purpose = "golden" if effect.kind == "golden" else effect.body.get("purpose", "")
    recorded = replies.get(purpose)
    cycle_id = effect.body["request"]["cycle_id"]
    at = max(recorded.at, now, key=parse_time) if recorded is not None else now
    if isinstance(recorded, Inbound) and isinstance(recorded.event, GoldenResult):
        event: ApplyResult | GoldenResult = msgspec.structs.replace(recorded.event, effect_id=effect.effect_id)
    elif isinstance(recorded, Inbound) and isinstance(recorded.event, ApplyResult):
        event = msgspec.structs.replace(recorded.event, effect_id=effect.effect_id)
    elif effect.kind == "golden":
        event = GoldenResult(effect.effect_id, cycle_id, True)
        assumed.append("golden-set validation: the record has no answer; assumed passed")
    else:
        event = ApplyResult(effect.effect_id, cycle_id, purpose, True)
        assumed.append(f"{purpose} apply: the record has no answer (the recorded cycle never asked); assumed applied")
    return at, order, Inbound(key=f"what-if:reply:{effect.effect_id}", subject=f"reply.{effect.kind}", at=at,
                              event=event)


def _decision(t: TransitionRecord) -> dict[str, Any]:
    out: dict[str, Any] = {"from": t.from_, "to": t.to, "trigger": t.trigger}
    for key in ("recommendation", "rule", "reason"):
        if t.detail.get(key) is not None:
            out[key] = t.detail[key]
    decision = t.detail.get("decision") or {}
    for key in ("score", "p_improvement", "improvement_pct", "degradation_pct"):
        if decision.get(key) is not None:
            out[key] = decision[key]
    return out


def _differences(recorded: list[TransitionRecord], replayed: list[TransitionRecord]) -> list[StepDifference]:
    out = []
    for i in range(max(len(recorded), len(replayed))):
        a = recorded[i] if i < len(recorded) else None
        b = replayed[i] if i < len(replayed) else None
        da = None if a is None else _decision(a)
        db = None if b is None else _decision(b)
        if da is None or db is None:
            out.append(StepDifference(i + 1, da, db, "only in the record" if db is None else "only in the what-if"))
            continue
        moved = [k for k in ("from", "to", "trigger", "recommendation", "rule") if da.get(k) != db.get(k)]
        if moved:
            out.append(StepDifference(i + 1, da, db, "differs in " + ", ".join(moved)))
    return out


# --- the gate's looks: every check of a canary, re-derived by exact replay -----------------------


class Look(msgspec.Struct, frozen=True):
    """One look of the gate at a running canary: the decision it took (``continue`` included).

    Only the deciding look is recorded (the ``Gated`` or ``extend`` transition); the others
    are re-derived by replaying the cycle, which reproduces every look exactly."""

    n: int                       # 1, 2, ... in the cycle
    at: str
    final: bool                  # the deadline's look
    action: str                  # continue | proceed | rollback | extend | inconclusive
    decision: dict[str, Any]     # the GateDecision as builtins (per KPI lift, interval, p-values)


class LookReplay:
    """Feeds a cycle's recorded inbox through a fresh core, incrementally, and collects the
    gate's decision at every look (a check or the deadline that the core evaluates)."""

    def __init__(self, config: Config, state_before: bytes, cycle_id: str, *, golden: GoldenSet | None = None):
        self.cycle_id = cycle_id
        self.core = Autopilot(config, msgspec.json.decode(state_before, type=AutopilotState), golden=golden)
        self.looks: list[Look] = []
        self.transitions: list[TransitionRecord] = []
        self.done = False

    def feed(self, inbounds: Iterable[Inbound]) -> list[Look]:
        """Step the core through ``inbounds``; the new looks (nothing after the cycle ended)."""
        new: list[Look] = []
        for ib in inbounds:
            if self.done:
                break
            look = self._look_at(ib)
            step = self.core.handle(ib)
            self.transitions.extend(t for t in step.transitions if t.cycle_id == self.cycle_id)
            if look is not None:
                self.looks.append(look)
                new.append(look)
            self.done = bool(self.transitions) and self.transitions[-1].to in TERMINAL
        return new

    def _look_at(self, ib: Inbound) -> Look | None:
        ev = ib.event
        cycle = self.core.running()
        if (not isinstance(ev, TimerEvent) or cycle is None or cycle.state != "Canary"
                or ev.cycle_id != self.cycle_id or cycle.data.cycle_id != self.cycle_id):
            return None
        if ev.kind == "check":
            final = False
        elif ev.kind == "deadline" and ev.token is not None and ev.token == cycle.data.deadline:
            final = True
        else:
            return None
        decision = cycle.gate_decision(parse_time(ib.at), final=final)
        return Look(n=len(self.looks) + 1, at=ib.at, final=final, action=decision.action,
                    decision=msgspec.to_builtins(decision))


def gate_looks(rec: RecordedCycle, *, config: Config | None = None) -> list[Look]:
    """Every look of a recorded cycle's canary, by exact replay (under its own configuration)."""
    cfg = config or Config.model_validate_json(rec.config)
    golden = None if rec.golden is None else msgspec.json.decode(rec.golden, type=GoldenSet)
    replay = LookReplay(cfg, rec.state_before.encode(), rec.cycle_id, golden=golden)
    replay.feed(rec.inbounds)
    return replay.looks
