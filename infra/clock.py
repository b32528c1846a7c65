"""The one place infra reads the wall clock: the time stamped on events
that carry none of their own (control requests, replies, boot)."""

from __future__ import annotations

from datetime import datetime, timezone

from ..schemas.messages import rfc3339


def utcnow() -> str:
    return rfc3339(datetime.now(timezone.utc))
