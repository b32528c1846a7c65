"""Log replay: a cycle rebuilt from its persisted transition log alone (event sourcing).

The exact replay (:mod:`.replay`) re-decides a cycle from its recorded inputs through the
whole core (optimizer, gate, power plan): exact, and slow (tens of milliseconds a cycle).
The log replay re-decides nothing. Like an event-sourced aggregate rebuilt from its stored
events, it folds each stored transition into a projection of the cycle, checking on the
way that the log is one the machine could have written:

* ``seq`` runs 1, 2, 3, ... without a gap, and times never go back;
* each move is a legal move of the machine's definition (:data:`.definition.MOVES`, a
  table built once: no ``transitions.Machine`` per cycle): the trigger is allowed from the
  recorded source, the source is where the previous move ended (``Pending`` for the
  first), the destination is the definition's;
* each record carries the current definition's hash, or is reported as recorded under
  another machine definition (its moves are then not judged by this one);
* the details agree with each other (the canary runs and deploys the bounded candidate;
  nothing deploys unless the gate said proceed);

and at the end the projection (stage, versions, proposal, canary plan, the gate's
recommendation and rule, outcome, reason, times) must equal what the cycle's
``autopilot_cycles`` row holds wherever the log determines it. Every problem names the
seq it is found at and the field (:class:`LogProblem`); :func:`verify_log` raises
:class:`~..schemas.errors.ReplayMismatch` with them.

Pure: rows in (as the store holds them: details as JSON text, or as dicts), results out;
no clock, no I/O.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import msgspec

from ..schemas.errors import ReplayMismatch
from ..schemas.messages import parse_time
from .definition import INITIAL, MACHINE_HASH, MOVES, OUTCOME_STATUS, TERMINAL

# --- what the log replay reads of a detail, a cycle row's result and its changes -----------------
# Only the fields the projection needs: msgspec skips the rest (the gate's numbers, the
# analysis) without building Python objects for them.


class _Change(msgspec.Struct):
    parameter_name: str
    new_value: float


class _Plan(msgspec.Struct):
    action: str | None = None
    run: bool = True
    duration_minutes: float | None = None


class _Decision(msgspec.Struct):
    reason: str | None = None


class _Detail(msgspec.Struct):
    origin: str | None = None
    actor: str | None = None
    reason: str | None = None
    rule: str | None = None
    error: str | None = None
    recommendation: str | None = None
    decision: _Decision | None = None
    changes: list[_Change] | None = None
    candidate_version: str | None = None
    canary_plan: _Plan | None = None
    version_id: str | None = None
    deadline: str | None = None
    previous_version: str | None = None
    restored_version: str | None = None


class _Gate(msgspec.Struct):
    recommendation: str | None = None
    rule: str | None = None


class _Result(msgspec.Struct):
    state: str | None = None
    version_id: str | None = None
    gate: _Gate | None = None


_detail_decoder = msgspec.json.Decoder(_Detail)
_result_decoder = msgspec.json.Decoder(_Result)
_changes_decoder = msgspec.json.Decoder(list[_Change])
_NO_DETAIL = _Detail()


# --- the row shapes the log replay takes ----------------------------------------------------------


class TransitionRow(msgspec.Struct, array_like=True, frozen=True):
    """One stored transition as the ``transitions`` table holds it (``cause`` is not needed).
    ``detail`` is the JSON text (decoded here, once) or an already decoded dict."""

    cycle_id: str
    seq: int
    from_: str
    to: str
    trigger: str
    at: str
    detail: str | bytes | dict[str, Any]
    machine: str


class CycleRow(msgspec.Struct, array_like=True, frozen=True):
    """The parts of an ``autopilot_cycles`` row that the log also determines; the JSON
    columns as text (or None)."""

    cycle_id: str
    started_at: str
    completed_at: str | None
    status: str
    proposed_changes: str | bytes | None
    deployment_result: str | bytes | None
    error_message: str | None


# --- what it produces ---------------------------------------------------------------------------


class LogProblem(msgspec.Struct, frozen=True):
    """Where the log is not one the machine could have written, or disagrees with the row."""

    seq: int | None          # the stored transition it is found at (None: the cycle as a whole)
    field: str               # seq, from, trigger, to, at, machine, detail.<key>, row.<column>
    message: str

    def __str__(self) -> str:
        return (f"seq {self.seq}: " if self.seq is not None else "") + f"{self.field}: {self.message}"


class CycleProjection(msgspec.Struct, kw_only=True):
    """A cycle as its log tells it."""

    cycle_id: str
    stage: str = INITIAL
    seq: int = 0
    started_at: str | None = None
    completed_at: str | None = None
    origin: str | None = None
    actor: str | None = None
    base_version: str | None = None        # known once the cycle deploys (previous) or rolls back (restored)
    candidate_version: str | None = None
    proposal: dict[str, float] | None = None
    canary_plan: dict[str, Any] | None = None
    canary_deadline: str | None = None
    extended: bool = False
    gate_recommendation: str | None = None
    gate_rule: str | None = None
    outcome: str | None = None             # the final state; None while the cycle runs
    status: str = "running"                # the seed's autopilot_cycles.status for it
    reason: str | None = None              # why it is where it is, in the log's words
    error: str | None = None               # what the row's error_message must say (see _expected_error)


class LogReplay(msgspec.Struct, kw_only=True):
    cycle_id: str
    transitions: int
    projection: CycleProjection
    problems: list[LogProblem]
    other_machine: str | None = None       # a definition hash other than the current one, when recorded so

    @property
    def consistent(self) -> bool:
        return not self.problems


def _time_key(text: str) -> str:
    """A string that sorts as the time does: RFC 3339 texts with and without fractions do not
    (``...:00Z`` sorts after ``...:00.4Z``). Canonical UTC texts take the fast path."""
    if len(text) >= 20 and text[-1] == "Z" and text[10] == "T" and (len(text) == 20 or text[19] == "."):
        return text[:19] + (text[19:-1] or ".").ljust(7, "0")
    return parse_time(text).strftime("%Y-%m-%dT%H:%M:%S.%f")


def _detail_of(raw: str | bytes | dict[str, Any]) -> _Detail:
    if isinstance(raw, dict):
        return msgspec.convert(raw, _Detail)
    return _detail_decoder.decode(raw)


def _why(d: _Detail) -> str | None:
    return d.reason or (d.decision.reason if d.decision is not None else None) or d.error or d.rule


def replay_log(cycle_id: str, rows: Sequence[TransitionRow], row: CycleRow | None, *,
               machine: str = MACHINE_HASH) -> LogReplay:
    """Rebuild one cycle from its stored transitions (ordered by seq) and check it against
    the machine's definition and against its ``autopilot_cycles`` row (None: no row)."""
    p = CycleProjection(cycle_id=cycle_id)
    problems: list[LogProblem] = []
    add = problems.append
    other: str | None = None
    set_at: dict[str, int] = {}            # projection field -> the seq that set it
    last_key = ""
    judged_seq = 0
    expected = 1
    for t in rows:
        seq = t.seq
        if seq != expected:
            add(LogProblem(seq, "seq", f"expected seq {expected}: " + (
                "out of order" if seq < expected else f"seq {expected} missing from the log" if seq == expected + 1
                else f"seq {expected}..{seq - 1} missing from the log")))
        expected = seq + 1
        # the move
        if t.machine != machine:
            if other is None:
                other = t.machine
                add(LogProblem(seq, "machine", f"recorded under another machine definition ({t.machine}; this "
                                               f"program's is {machine}): its moves are not judged by this one"))
        else:
            if t.from_ != p.stage:
                add(LogProblem(seq, "from", f"{t.from_!r}, but the cycle was in {p.stage!r}"
                               + (f" after seq {p.seq}" if p.seq else " (every cycle starts there)")))
            dest = MOVES.get((t.trigger, t.from_))
            if dest is None:
                add(LogProblem(seq, "trigger", f"{t.trigger!r} is not allowed from {t.from_!r}"))
            elif dest != t.to:
                add(LogProblem(seq, "to", f"{t.to!r}, but {t.trigger!r} from {t.from_!r} leads to {dest!r}"))
        # the time
        try:
            key = _time_key(t.at)
        except (ValueError, TypeError, msgspec.ValidationError):
            add(LogProblem(seq, "at", f"{t.at!r} is not an RFC 3339 time"))
        else:
            if key < last_key:
                add(LogProblem(seq, "at", f"{t.at} is before the previous transition's time"))
            last_key = key
        # the detail, folded into the projection
        try:
            d = _detail_of(t.detail)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            add(LogProblem(seq, "detail", f"cannot be read: {exc}"))
            d = _NO_DETAIL
        trigger = t.trigger
        if p.started_at is None:
            p.started_at = t.at
            set_at["started_at"] = seq
        if trigger == "start":
            p.origin, p.actor = d.origin, d.actor
        elif trigger == "bounds_ok":
            p.candidate_version = d.candidate_version
            p.proposal = None if d.changes is None else {c.parameter_name: c.new_value for c in d.changes}
            set_at["candidate_version"] = set_at["proposal"] = seq
        elif trigger in ("golden_passed", "underpowered"):
            if d.canary_plan is not None:
                plan = d.canary_plan
                p.canary_plan = {"action": plan.action, "run": plan.run, "duration_minutes": plan.duration_minutes}
        elif trigger == "canary_started":
            p.canary_deadline = d.deadline
            if d.version_id != p.candidate_version:
                add(LogProblem(seq, "detail.version_id", f"the canary runs {d.version_id!r}, but the bounded "
                                                         f"candidate is {p.candidate_version!r}"))
        elif trigger == "extend":
            p.extended, p.canary_deadline = True, d.deadline
        elif trigger == "judge":
            p.gate_recommendation, p.gate_rule = d.recommendation, d.rule
            judged_seq = seq
            set_at["gate"] = seq
        elif trigger == "deployed":
            p.base_version = d.previous_version
            if p.gate_recommendation != "proceed":
                add(LogProblem(seq, "detail.recommendation",
                               f"deployed, but the gate recommended {p.gate_recommendation!r}"
                               + (f" at seq {judged_seq}" if judged_seq else " (no judge in the log)")))
            if d.version_id != p.candidate_version:
                add(LogProblem(seq, "detail.version_id", f"deploys {d.version_id!r}, but the bounded candidate "
                                                         f"is {p.candidate_version!r}"))
        elif trigger == "rolled_back":
            p.base_version = d.restored_version
        if trigger != "extend":
            p.reason = _why(d) or p.reason
        p.stage = t.to
        p.seq = seq
        if t.to in TERMINAL:
            p.outcome, p.status, p.completed_at = t.to, OUTCOME_STATUS[t.to], t.at
            p.error = _expected_error(trigger, d, p)
            set_at["completed_at"] = seq
    if not rows:
        add(LogProblem(None, "log", "no transition recorded for this cycle"))
    if row is None:
        add(LogProblem(None, "row", "no autopilot_cycles row for this cycle"))
    else:
        _against_row(p, row, set_at, problems)
    problems.sort(key=lambda x: -1 if x.seq is None else x.seq)
    return LogReplay(cycle_id=cycle_id, transitions=len(rows), projection=p, problems=problems, other_machine=other)


_LIVE_FAILED = "live apply failed: "


def _expected_error(trigger: str, d: _Detail, p: CycleProjection) -> str | None:
    """The row's error_message as the core writes it at the cycle's end (``d.error``), from
    the last move; :data:`_LIVE_FAILED` stands for "starts with" (the reason holds VVTV's
    error only in words)."""
    if trigger == "golden_failed":
        return "golden-set validation failed"
    if trigger == "canary_apply_failed":
        return f"canary apply failed: {d.error}"
    if trigger == "fail":
        return d.reason
    if trigger == "rolled_back" and p.gate_recommendation == "proceed":
        return _LIVE_FAILED
    return None


def _against_row(p: CycleProjection, row: CycleRow, set_at: dict[str, int], problems: list[LogProblem]) -> None:
    last = p.seq or None
    add = problems.append

    def differs(field: str, logged: Any, stored: Any, where: str) -> None:
        add(LogProblem(set_at.get(where, last), field, f"the log says {logged!r}, the cycle row says {stored!r}"))

    try:
        result = _result_decoder.decode(row.deployment_result) if row.deployment_result else _Result()
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        add(LogProblem(None, "row.deployment_result", f"cannot be read: {exc}"))
        result = _Result()
    if row.status != p.status:
        differs("row.status", p.status, row.status, "completed_at")
    if result.state is not None and result.state != p.stage:
        differs("row.state", p.stage, result.state, "completed_at")
    if result.version_id != p.candidate_version:
        differs("detail.candidate_version", p.candidate_version, result.version_id, "candidate_version")
    gate = result.gate or _Gate()
    if gate.recommendation != p.gate_recommendation:
        differs("detail.recommendation", p.gate_recommendation, gate.recommendation, "gate")
    if gate.rule != p.gate_rule:
        differs("detail.rule", p.gate_rule, gate.rule, "gate")
    if p.started_at is not None and row.started_at != p.started_at:
        differs("row.started_at", p.started_at, row.started_at, "started_at")
    if row.completed_at != p.completed_at:
        differs("row.completed_at", p.completed_at, row.completed_at, "completed_at")
    if p.proposal is not None:
        try:
            stored = {c.parameter_name: c.new_value for c in _changes_decoder.decode(row.proposed_changes or b"[]")}
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            add(LogProblem(None, "row.proposed_changes", f"cannot be read: {exc}"))
        else:
            if stored != p.proposal:
                differs("detail.changes", p.proposal, stored, "proposal")
    if p.outcome is not None:
        expected = p.error
        ok = (row.error_message or "").startswith(expected) if expected == _LIVE_FAILED else row.error_message == expected
        if not ok:
            differs("row.error_message", expected, row.error_message, "completed_at")


def replay_logs(rows: Iterable[TransitionRow], cycle_rows: Iterable[CycleRow], *,
                machine: str = MACHINE_HASH) -> list[LogReplay]:
    """Every cycle of a store: ``rows`` ordered by cycle and seq (as ``ORDER BY cycle_id, seq``
    reads them); a cycle row without a log and a log without a row are both reported."""
    by_id = {r.cycle_id: r for r in cycle_rows}
    out: list[LogReplay] = []
    group: list[TransitionRow] = []
    current: str | None = None
    seen: set[str] = set()
    for t in rows:
        if t.cycle_id != current:
            if current is not None:
                out.append(replay_log(current, group, by_id.get(current), machine=machine))
                seen.add(current)
            current, group = t.cycle_id, []
        group.append(t)
    if current is not None:
        out.append(replay_log(current, group, by_id.get(current), machine=machine))
        seen.add(current)
    out += [replay_log(cid, [], row, machine=machine) for cid, row in by_id.items() if cid not in seen]
    return out


def records_as_rows(records: Iterable[Any]) -> list[TransitionRow]:
    """:class:`~..schemas.events.TransitionRecord` s (the core's, or read back) as rows."""
    return [TransitionRow(t.cycle_id, t.seq, t.from_, t.to, t.trigger, t.at, t.detail, t.machine) for t in records]


def verify_log(result: LogReplay) -> None:
    """Raise :class:`ReplayMismatch` unless the log is consistent."""
    if result.problems:
        raise ReplayMismatch(result.cycle_id, [str(p) for p in result.problems])


def summarize_logs(results: list[LogReplay], *, show: int = 3) -> dict[str, Any]:
    """``replay --all --log``: how many cycles and transitions, and the first problems of each
    inconsistent cycle."""
    bad = [r for r in results if r.problems]
    transitions = sum(r.transitions for r in results)
    running = sum(1 for r in results if r.projection.outcome is None)
    head = (f"{len(results):,} cycles" + (f" ({running} running)" if running else "")
            + f", {transitions:,} transitions replayed from the log: ")
    return {"cycles": len(results), "transitions": transitions, "running": running,
            "consistent": len(results) - len(bad),
            "inconsistent": [{"cycle_id": r.cycle_id, "problems": [str(p) for p in r.problems[:show]],
                              "more": max(0, len(r.problems) - show), "other_machine": r.other_machine}
                             for r in bad],
            "summary": head + ("all consistent" if not bad else f"{len(bad):,} inconsistent")}
