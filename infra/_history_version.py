"""A stored version's id and metadata: :func:`check_version_id` and :class:`ParameterVersion`.

Private to :mod:`vvtv_autopilot.infra.history`, which re-exports both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from ..schemas.errors import InvalidVersionId
from ._history_files import _rfc3339

__all__ = ["ParameterVersion", "check_version_id"]

_VERSION_ID = re.compile(r"[0-9a-f]{64}")


def check_version_id(version_id: object) -> str:
    """Return ``version_id`` if it is 64 lowercase hex characters; refuse anything else.

    Runs before any path is built from the id, so an id like ``../../etc`` never
    reaches the file system.
    """
    if not isinstance(version_id, str) or not _VERSION_ID.fullmatch(version_id):
        shown = repr(version_id)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        raise InvalidVersionId(f"invalid version id {shown}: a version id is exactly 64 lowercase hex characters")
    return version_id


@dataclass(frozen=True)
class ParameterVersion:
    """One stored card's metadata (the card itself: :meth:`ParameterHistory.load_card`)."""

    version_id: str
    timestamp: datetime  # when this card was first stored
    touched_at: datetime  # when it was last stored, deployed or rolled back to (retention counts from here)
    changes: tuple[Any, ...]
    rationale: str
    deployment_result: Any
    file_path: Path

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, as the CLI's ``history --json`` prints it."""
        return {
            "version_id": self.version_id,
            "timestamp": _rfc3339(self.timestamp),
            "touched_at": _rfc3339(self.touched_at),
            "changes": list(self.changes),
            "rationale": self.rationale,
            "deployment_result": self.deployment_result,
            "file_path": str(self.file_path),
        }
