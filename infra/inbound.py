"""From bus messages to core events: validation, reduction, dedupe keys.

A metric batch is reduced here to its sufficient statistics, so the inbox
(the replay input) stays small whatever the traffic. Every rule failure
raises :class:`MessageError` with a reason a person can act on.
"""

from __future__ import annotations

import msgspec
import numpy as np

from ..schemas.errors import MessageError
from ..schemas.events import AlertEvent, CommandEvent, Inbound, MetricStats
from ..schemas.messages import COMMANDS, Alert, MetricBatch, decode, rfc3339


def metric_inbound(subject: str, data: bytes, stream: str, seq: int, at: str) -> Inbound:
    batch: MetricBatch = decode(data, MetricBatch)
    token = subject.rsplit(".", 1)[-1]
    if batch.kpi != token:
        raise MessageError(f"`kpi` is {batch.kpi!r} but the subject's last token is {token!r}")
    values = np.asarray(batch.values, dtype=np.float64)
    mean = float(values.sum()) / values.size
    deviations = values - mean
    m2 = float(deviations @ deviations)
    key = f"msg:{batch.kpi}:{batch.msg_id}" if batch.msg_id else f"{stream}:{seq}"
    event = MetricStats(batch.kpi, batch.arm, batch.version_id, int(values.size), mean, m2, rfc3339(batch.window_end))
    return Inbound(key=key, subject=subject, at=at, event=event, stream_seq=seq)


def alert_inbound(subject: str, data: bytes, stream: str, seq: int, at: str) -> Inbound:
    alert: Alert = decode(data, Alert)
    token = subject.rsplit(".", 1)[-1]
    if alert.severity != token:
        raise MessageError(f"`severity` is {alert.severity!r} but the subject's last token is {token!r}")
    event = AlertEvent(alert.alert_id, alert.severity, alert.source, alert.message, rfc3339(alert.fired_at), alert.kpi)
    return Inbound(key=f"{stream}:{seq}", subject=subject, at=at, event=event, stream_seq=seq)


def command_event(verb: str, data: bytes, via: str) -> CommandEvent:
    """Validate a control body for ``verb``; the event keeps the validated body."""
    type_ = COMMANDS.get(verb)
    if type_ is None:
        raise MessageError(f"unknown verb {verb!r}; known: {', '.join(sorted(COMMANDS))}")
    body = decode(data or b"{}", type_)
    return CommandEvent(verb=verb, body=msgspec.to_builtins(body), via=via)  # type: ignore[arg-type]


def excerpt(data: bytes, limit: int = 1024) -> str:
    text = data[:limit].decode("utf-8", errors="replace")
    while len(text.encode("utf-8")) > limit:
        text = text[:-1]
    return text
