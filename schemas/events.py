"""What the pure core consumes and produces.

Inbound bus messages are reduced to compact *core events* (a metric batch
becomes its sufficient statistics), wrapped in an :class:`Inbound` envelope
that names its cause (subject, stream sequence, dedupe key) and its time.
The envelope is what the inbox records, so replaying the inbox through the
core reproduces every decision exactly.

The core answers with :class:`Effect` s (what infra must do in the world)
and :class:`TransitionRecord` s (the audit log).
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from .errors import RecordingError


class MetricStats(msgspec.Struct, frozen=True, tag="metric"):
    kpi: str
    arm: str
    version_id: str | None
    n: int
    mean: float
    m2: float
    window_end: str          # canonical RFC 3339 in UTC ("...Z"), as infra writes it


class AlertEvent(msgspec.Struct, frozen=True, tag="alert"):
    alert_id: str
    severity: str
    source: str
    message: str
    fired_at: str
    kpi: str | None = None


class CommandEvent(msgspec.Struct, frozen=True, tag="command"):
    verb: str
    body: dict[str, Any]
    via: Literal["ctl", "cmd"] = "ctl"


TimerKind = Literal["daily", "check", "deadline", "timeout", "pause_expiry", "override_expiry", "triage"]


class TimerEvent(msgspec.Struct, frozen=True, tag="timer"):
    kind: TimerKind
    cycle_id: str | None = None
    token: str | None = None


class ApplyResult(msgspec.Struct, frozen=True, tag="apply_result"):
    effect_id: str
    cycle_id: str | None
    purpose: str
    applied: bool
    error: str | None = None


class GoldenResult(msgspec.Struct, frozen=True, tag="golden_result"):
    effect_id: str
    cycle_id: str
    passed: bool
    cases_run: int = 0
    failures: list[dict[str, str]] = []
    error: str | None = None


class Boot(msgspec.Struct, frozen=True, tag="boot"):
    """The service started: the card found on disk and its version."""

    card: dict[str, Any]
    card_version: str


CoreEvent = MetricStats | AlertEvent | CommandEvent | TimerEvent | ApplyResult | GoldenResult | Boot


class Inbound(msgspec.Struct, frozen=True):
    key: str            # dedupe key: "<stream>:<seq>", "msg:<msg_id>", "reply:<effect_id>", ...
    subject: str
    at: str             # RFC 3339: the time the core reads as "now"
    event: CoreEvent
    stream_seq: int | None = None


EffectKind = Literal["publish", "apply", "golden", "write_card", "schedule", "github_issues"]


class Effect(msgspec.Struct, frozen=True):
    effect_id: str
    kind: EffectKind
    body: dict[str, Any]
    subject: str | None = None   # publish: the subject tail after the prefix


class TransitionRecord(msgspec.Struct, frozen=True, rename={"from_": "from"}):
    cycle_id: str
    seq: int
    from_: str
    to: str
    trigger: str
    at: str
    cause: dict[str, Any]
    detail: dict[str, Any]
    machine: str         # hash of the machine definition that made it


class RecordedCycle(msgspec.Struct, kw_only=True):
    """One cycle as recorded, enough to replay it anywhere (incident review): the
    autopilot's state just before the event that started it, the configuration and
    built-in golden set it ran under (both as JSON), the inbox from that event on, and
    the transitions it made. Exported as JSON lines by :func:`encode_recorded_cycle`."""

    cycle_id: str
    config: str                      # Config as JSON
    state_before: str                # AutopilotState as JSON
    golden: str | None = None        # the built-in golden set as JSON (golden.mode: builtin)
    inbounds: list[Inbound] = []
    transitions: list[TransitionRecord] = []


RECORDED_CYCLE_FORMAT = "vvtv-autopilot/recorded-cycle/v1"


class _RecordedHeader(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    format: str
    cycle_id: str
    config: str
    state_before: str
    golden: str | None = None
    inbounds: int
    transitions: int


def encode_recorded_cycle(rec: RecordedCycle) -> bytes:
    """JSON lines: a header, then one line per inbound, then one per transition."""
    header = _RecordedHeader(format=RECORDED_CYCLE_FORMAT, cycle_id=rec.cycle_id, config=rec.config,
                             state_before=rec.state_before, golden=rec.golden, inbounds=len(rec.inbounds),
                             transitions=len(rec.transitions))
    lines = [msgspec.json.encode(header)]
    lines += [msgspec.json.encode(i) for i in rec.inbounds]
    lines += [msgspec.json.encode(t) for t in rec.transitions]
    return b"\n".join(lines) + b"\n"


def decode_recorded_cycle(data: bytes) -> RecordedCycle:
    """The inverse of :func:`encode_recorded_cycle`; a malformed file raises an error
    naming the line and what is wrong with it (:class:`RecordingError`)."""
    lines = [line for line in data.splitlines() if line.strip()]
    if not lines:
        raise RecordingError("empty file: expected a recorded-cycle header line")
    try:
        header = msgspec.json.decode(lines[0], type=_RecordedHeader)
    except msgspec.ValidationError as exc:
        raise RecordingError(f"line 1 is not a recorded-cycle header: {exc}") from None
    except msgspec.DecodeError as exc:
        raise RecordingError(f"line 1 is not JSON: {exc}") from None
    if header.format != RECORDED_CYCLE_FORMAT:
        raise RecordingError(f"line 1: format {header.format!r} is not {RECORDED_CYCLE_FORMAT!r}")
    if len(lines) != 1 + header.inbounds + header.transitions:
        raise RecordingError(f"the header announces {header.inbounds} inbounds and {header.transitions} transitions, "
                         f"the file has {len(lines) - 1} lines after it")
    inbounds, transitions = [], []
    for n, line in enumerate(lines[1:], start=2):
        kind, target = (Inbound, inbounds) if n - 2 < header.inbounds else (TransitionRecord, transitions)
        try:
            target.append(msgspec.json.decode(line, type=kind))
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise RecordingError(f"line {n} is not a valid {kind.__name__}: {exc}") from None
    return RecordedCycle(cycle_id=header.cycle_id, config=header.config, state_before=header.state_before,
                         golden=header.golden, inbounds=inbounds, transitions=transitions)
