"""Low-level file helpers of the parameter history: names, times, hashes, reads and the writer lock.

Private to :mod:`vvtv_autopilot.infra.history`, which documents the folder layout.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

_CARD_FILE = re.compile(r"([0-9a-f]{64})\.json")
_META_FILE = re.compile(r"([0-9a-f]{64})\.meta\.json")
_STATE_FILE = "state.json"


def _utc(at: datetime, name: str) -> datetime:
    if not isinstance(at, datetime) or at.tzinfo is None:
        raise ValueError(f"`{name}` must be a timezone-aware datetime, got {at!r}")
    return at.astimezone(timezone.utc)


def _rfc3339(at: datetime) -> str:
    return at.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _parse_time(text: str) -> datetime:
    return _utc(datetime.fromisoformat(text.replace("Z", "+00:00")), "timestamp")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return False


class _WriterLock:
    """Reentrant within a process (RLock), exclusive across processes (flock on one file).

    flock is released by the kernel when its holder dies, so a SIGKILLed writer
    never leaves the history locked.
    """

    def __init__(self, path: Path):
        self._path = path
        self._rlock = threading.RLock()
        self._depth = 0
        self._fd: int | None = None

    @contextmanager
    def held(self) -> Iterator[None]:
        with self._rlock:
            if self._depth == 0:
                self._path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                except BaseException:
                    os.close(fd)
                    raise
                self._fd = fd
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0 and self._fd is not None:
                    os.close(self._fd)  # closing the last descriptor releases the flock
                    self._fd = None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _decode_card(data: bytes) -> dict[str, Any] | None:
    """The card in ``data`` if it is a strict JSON object (no NaN/Infinity), else None."""
    try:
        card = json.loads(data, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        return None
    return card if isinstance(card, dict) else None
