"""Bus messages of contract v1 as strict, self-validating msgspec types.

Inbound types (metrics, alerts, commands, replies) validate on decode and
raise :class:`MessageError` with a reason a person can act on. Outbound
types are encoded with :func:`encode`.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from .errors import MessageError

KpiName = Annotated[str, Meta(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
VersionId = Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")]
# Extension: a rollback accepts a unique prefix (4 to 40 hex digits, git's habit) of a stored id.
VersionIdOrPrefix = Annotated[str, Meta(pattern=r"^([0-9a-f]{4,40}|[0-9a-f]{64})$")]
ParameterName = Annotated[str, Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$", max_length=256)]
Actor = Annotated[str, Meta(min_length=1, max_length=256)]
Reason = Annotated[str, Meta(max_length=1024)]
Hours = Annotated[float, Meta(gt=0, le=168)]
Arm = Literal["control", "canary", "live"]
Severity = Literal["info", "warning", "critical"]


def _require_utc(name: str, value: datetime) -> None:
    if value.tzinfo is None:
        raise ValueError(f"`{name}` must be an RFC 3339 timestamp with a UTC offset, got a naive time")


class MetricBatch(msgspec.Struct, frozen=True):
    """``vvtv.metrics.<kpi>``: a batch of samples of one KPI from one arm."""

    kpi: KpiName
    arm: Arm
    window_start: datetime
    window_end: datetime
    values: Annotated[list[float], Meta(min_length=1, max_length=10_000)]
    version_id: VersionId | None = None
    msg_id: Annotated[str, Meta(min_length=1, max_length=256)] | None = None

    def __post_init__(self) -> None:
        _require_utc("window_start", self.window_start)
        _require_utc("window_end", self.window_end)
        if self.window_start > self.window_end:
            raise ValueError("`window_start` is after `window_end`")
        if not all(map(math.isfinite, self.values)):
            raise ValueError("`values` contains a non-finite number")


class Alert(msgspec.Struct, frozen=True):
    """``vvtv.alerts.<severity>``."""

    alert_id: Annotated[str, Meta(min_length=1, max_length=128)]
    severity: Severity
    source: Annotated[str, Meta(max_length=256)]
    message: Annotated[str, Meta(max_length=4096)]
    fired_at: datetime
    kpi: str | None = None

    def __post_init__(self) -> None:
        _require_utc("fired_at", self.fired_at)


# --- control commands (contract 2.1 / 1.3) -----------------------------------------


class _Command(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    actor: Actor
    reason: Reason | None = None


class StatusCmd(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    actor: Actor | None = None
    reason: Reason | None = None


class PauseCmd(_Command, frozen=True, kw_only=True):
    hours: Hours = 48.0


class EmergencyPauseCmd(_Command, frozen=True, kw_only=True):
    pass


class ResumeCmd(_Command, frozen=True, kw_only=True):
    pass


class RunNowCmd(_Command, frozen=True, kw_only=True):
    pass


class OverrideCmd(_Command, frozen=True, kw_only=True):
    parameter: ParameterName
    value: float
    hours: Hours | None = None

    def __post_init__(self) -> None:
        if not math.isfinite(self.value):
            raise ValueError("`value` must be a finite number")


class ClearOverrideCmd(_Command, frozen=True, kw_only=True):
    parameter: ParameterName


class BoundsOverrideCmd(_Command, frozen=True, kw_only=True):
    parameter: ParameterName
    min: float
    max: float
    hours: Hours | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.min) and math.isfinite(self.max)):
            raise ValueError("`min` and `max` must be finite numbers")
        if self.min >= self.max:
            raise ValueError(f"`min` ({self.min}) must be below `max` ({self.max})")


class RollbackCmd(_Command, frozen=True, kw_only=True):
    version_id: VersionIdOrPrefix


class ProposeCmd(_Command, frozen=True, kw_only=True):
    changes: Annotated[dict[ParameterName, float], Meta(min_length=1, max_length=64)]

    def __post_init__(self) -> None:
        for name, value in self.changes.items():
            if not math.isfinite(value):
                raise ValueError(f"`changes.{name}` must be a finite number")


class TriageCmd(_Command, frozen=True, kw_only=True):
    """Extension: run the incident triage now (it also runs weekly). On ``ctl.triage`` a body
    without ``run: true`` is a read of the reports (contract v1.1 §7); ``cmd.triage`` always runs."""

    run: bool = True


class PromoteCmd(_Command, frozen=True, kw_only=True):
    pass


class AbortCmd(_Command, frozen=True, kw_only=True):
    pass


COMMANDS: dict[str, type[msgspec.Struct]] = {
    "status": StatusCmd,
    "pause": PauseCmd,
    "emergency-pause": EmergencyPauseCmd,
    "resume": ResumeCmd,
    "run-now": RunNowCmd,
    "override": OverrideCmd,
    "clear-override": ClearOverrideCmd,
    "bounds-override": BoundsOverrideCmd,
    "rollback": RollbackCmd,
    "propose": ProposeCmd,
    "promote": PromoteCmd,
    "abort": AbortCmd,
    "triage": TriageCmd,
}


# --- replies from VVTV (contract 3.1 / 3.2) ----------------------------------------


class ApplyReply(msgspec.Struct, frozen=True):
    applied: bool
    version_id: str | None = None
    arm: str | None = None
    error: str | None = None


class GoldenFailure(msgspec.Struct, frozen=True):
    case: str
    reason: str


class GoldenReply(msgspec.Struct, frozen=True):
    passed: bool
    cases_run: Annotated[int, Meta(ge=0)] = 0
    failures: list[GoldenFailure] = []


# --- outbound ------------------------------------------------------------------------


class ApplyRequest(msgspec.Struct, frozen=True):
    effect_id: str
    cycle_id: str | None
    version_id: str
    arm: Literal["canary", "live"]
    traffic_percentage: float
    parameters: dict[str, Any]


class GoldenRequest(msgspec.Struct, frozen=True):
    cycle_id: str
    version_id: str
    parameters: dict[str, Any]


class DeadLetter(msgspec.Struct, frozen=True):
    subject: str
    reason: str
    received_at: str
    payload_excerpt: str


# --- decoding helpers ----------------------------------------------------------------

_decoders: dict[type, msgspec.json.Decoder] = {}
_encoder = msgspec.json.Encoder()


def decode(data: bytes, type_: type):
    """Decode and validate ``data`` as ``type_``; raise :class:`MessageError`."""
    decoder = _decoders.get(type_)
    if decoder is None:
        decoder = _decoders[type_] = msgspec.json.Decoder(type_)
    try:
        return decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise MessageError(f"invalid {type_.__name__}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise MessageError(f"not valid JSON: {exc}") from None


def encode(obj: Any) -> bytes:
    return _encoder.encode(obj)


def rfc3339(ts: datetime) -> str:
    """``2026-11-26T03:00:00Z`` (microseconds kept only when present)."""
    ts = ts.astimezone(timezone.utc)
    text = ts.isoformat(timespec="microseconds" if ts.microsecond else "seconds")
    return text.replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        value = msgspec.json.decode(msgspec.json.encode(text), type=datetime)
    if value.tzinfo is None:
        raise ValueError(f"timestamp {text!r} has no UTC offset")
    return value.astimezone(timezone.utc)
