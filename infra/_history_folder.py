"""The stored versions in the history folder: look-up by id, listing, corruption scan, cleanup.

Private to :mod:`vvtv_autopilot.infra.history`: :class:`ParameterHistory` inherits
these methods. None of them calls ``atomic_write_bytes`` or ``_read_bytes``: those
calls stay in ``history.py``, where tests patch them.
"""

from __future__ import annotations

import json
import logging
import os
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..schemas.errors import CorruptVersion, HistoryError, VersionNotFound
from ._history_files import _CARD_FILE, _META_FILE, _WriterLock, _parse_time, _unlink, _utc
from ._history_version import ParameterVersion, check_version_id
from .atomicfile import fsync_dir

# The public module's logger, so records keep the name they had before the split.
log = logging.getLogger("vvtv_autopilot.infra.history")


class _HistoryFolder:
    """Look-up, listing and cleanup over ``history_dir``; mixed into :class:`ParameterHistory`,
    which provides the attributes and the methods declared below."""

    history_dir: Path
    card_path: Path
    _lock: _WriterLock

    if TYPE_CHECKING:
        def _load(self, vid: str, parse: bool = True) -> tuple[ParameterVersion, dict[str, Any] | None]: ...
        def last_known_good(self) -> str | None: ...
        def current_version_id(self) -> str | None: ...

    # ----------------------------------------------------------------- reading

    def version_path(self, version_id: str) -> Path:
        return self.history_dir / f"{check_version_id(version_id)}.json"

    def get_version(self, version_id: str) -> ParameterVersion:
        """The stored version, its card checked against its name; :class:`VersionNotFound` or :class:`CorruptVersion`."""
        return self._load(check_version_id(version_id), parse=False)[0]

    def load_card(self, version_id: str) -> dict[str, Any]:
        """The card of a stored version, checked against its name."""
        return self._load(check_version_id(version_id))[1]

    def get_version_history(self, limit: int | None = None) -> list[ParameterVersion]:
        """Stored versions, newest first (by first-stored time). Corrupt ones are logged and left out."""
        if limit is not None and (not isinstance(limit, int) or limit < 0):
            raise ValueError(f"limit must be a non-negative integer, got {limit!r}")
        versions = []
        for vid in self._stored_ids():
            try:
                versions.append(self._load(vid, parse=False)[0])
            except CorruptVersion as exc:
                log.warning("skipping corrupt history version: %s", exc)
            except VersionNotFound:
                pass  # removed between listing and reading
        versions.sort(key=lambda v: (v.timestamp, v.touched_at, v.version_id), reverse=True)
        return versions if limit is None else versions[:limit]

    def corrupt_versions(self) -> list[tuple[str, str]]:
        """Every stored version that fails its check, as ``(version_id, reason)``."""
        found = []
        for vid in self._stored_ids():
            try:
                self._load(vid)
            except CorruptVersion as exc:
                found.append((vid, str(exc)))
            except VersionNotFound:
                pass
        return found

    # ----------------------------------------------------------------- writing

    def cleanup_old_versions(self, retention_days: float, now: datetime) -> int:
        """Delete versions not touched within ``retention_days`` of ``now``; return how many.

        Never deletes the live card's version or the last known-good one; if the
        known-good state file is unreadable it deletes nothing (HistoryError).
        Also removes leftovers of interrupted writes (temp files, card files
        without metadata older than the retention).
        """
        if isinstance(retention_days, bool) or not isinstance(retention_days, (int, float)) or not retention_days >= 0:
            raise ValueError(f"retention_days must be a non-negative number, got {retention_days!r}")
        cutoff = _utc(now, "now") - timedelta(days=retention_days)
        with self._lock.held():
            keep = {self.last_known_good()}
            try:
                keep.add(self.current_version_id())
            except HistoryError as exc:
                log.warning("live card unreadable during cleanup; only last known-good is protected: %s", exc)
            removed = 0
            for vid in self._stored_ids():
                if vid in keep:
                    continue
                meta_path = self.history_dir / f"{vid}.meta.json"
                try:
                    touched = _parse_time(json.loads(meta_path.read_bytes())["touched_at"])
                except FileNotFoundError:
                    continue
                except (ValueError, KeyError, TypeError, AttributeError):
                    touched = datetime.fromtimestamp(meta_path.stat().st_mtime, timezone.utc)
                if touched < cutoff:
                    # metadata first: the version stops existing, then its card goes
                    _unlink(meta_path)
                    _unlink(self.history_dir / f"{vid}.json")
                    removed += 1
            for path in self._orphan_card_files():
                if path.name[:64] not in keep and datetime.fromtimestamp(path.stat().st_mtime, timezone.utc) < cutoff:
                    _unlink(path)
            self._remove_temp_files()
            if self.history_dir.exists():
                fsync_dir(self.history_dir)
            return removed

    # ----------------------------------------------------------------- internals

    def _stored_ids(self) -> list[str]:
        try:
            names = os.listdir(self.history_dir)
        except FileNotFoundError:
            return []
        return sorted(m.group(1) for m in map(_META_FILE.fullmatch, names) if m)

    def _orphan_card_files(self) -> list[Path]:
        try:
            names = set(os.listdir(self.history_dir))
        except FileNotFoundError:
            return []
        return [
            self.history_dir / name
            for name in sorted(names)
            if _CARD_FILE.fullmatch(name) and f"{name[:64]}.meta.json" not in names
        ]

    def _remove_temp_files(self) -> None:
        # Under the writer lock no other writer is mid-write, so every temp file
        # of ours is a leftover of a killed process.
        card_tmp = re.compile(re.escape(f".{self.card_path.name}.") + r"\d+\.tmp")
        history_tmp = re.compile(r"\.([0-9a-f]{64}(\.meta)?\.json|state\.json)\.\d+\.tmp")
        for folder, pattern in ((self.card_path.parent, card_tmp), (self.history_dir, history_tmp)):
            try:
                names = os.listdir(folder)
            except FileNotFoundError:
                continue
            for name in names:
                if pattern.fullmatch(name):
                    _unlink(folder / name)
