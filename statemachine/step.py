"""The output of one step of the core: what one inbound event caused.

A :class:`Step` is created per inbound event with its time and cause; the
core appends transition records, effects and domain rows to it, and infra
writes all of them in the event's one transaction.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ..schemas.events import Effect, Inbound, TransitionRecord
from ..schemas.messages import parse_time, rfc3339


class Step:
    def __init__(self, inbound: Inbound):
        self.inbound = inbound
        self.at: str = inbound.at
        self._now: datetime | None = None
        self.cause: dict[str, Any] = {"subject": inbound.subject, "key": inbound.key}
        if inbound.stream_seq is not None:
            self.cause["stream_seq"] = inbound.stream_seq
        self.transitions: list[TransitionRecord] = []
        self.effects: list[Effect] = []
        self.cycle_rows: list[dict[str, Any]] = []
        self.canary_rows: list[dict[str, Any]] = []
        self.reply: dict[str, Any] | None = None
        self.command: dict[str, Any] | None = None   # the command row to store, if any
        self.counters: dict[str, int] = {}
        self.bounds_rows: dict[str, Any] = {}      # parameter -> ParameterBounds to store
        self.drift_rows: list[Any] = []             # DriftEvents to store
        self.triage_rows: list[Any] = []            # TriageReports to store
        self._n = 0

    @property
    def now(self) -> datetime:
        """The event's time as a datetime, parsed on first use (a metric step never needs it)."""
        if self._now is None:
            self._now = parse_time(self.at)
        return self._now

    def next_id(self, purpose: str) -> str:
        self._n += 1
        return f"{self.inbound.key}:{self._n}:{purpose}"

    def publish(self, tail: str, body: dict[str, Any], *, effect_id: str | None = None) -> None:
        self.effects.append(Effect(effect_id or self.next_id("evt"), "publish", body, subject=tail))

    def schedule(self, name: str, at: datetime, event: dict[str, Any]) -> None:
        self.effects.append(Effect(self.next_id("timer"), "schedule", {"name": name, "at": rfc3339(at), "event": event}))

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n
