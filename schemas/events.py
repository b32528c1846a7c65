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
