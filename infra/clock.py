"""The one place the autopilot's infra reads the wall clock: the time stamped on
events that carry none of their own (control requests, replies, boot), the
"now" of a status query, and the time a card is deployed or rolled back at.

The core never reads it (time arrives in its events); the parameter history
takes it as an argument. The simulated VVTV and the demo (``simulator.py``,
``demo.py``) stand in for the outside world and keep their own clocks.
"""

from __future__ import annotations

from datetime import datetime, timezone

from ..schemas.messages import rfc3339


def now() -> datetime:
    """The wall-clock time, timezone-aware UTC."""
    return datetime.now(timezone.utc)


def utcnow() -> str:
    """The wall-clock time as an RFC 3339 string (``...Z``)."""
    return rfc3339(now())
