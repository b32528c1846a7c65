"""Parameter history: every deployed card kept under its SHA-256, atomic deploy and rollback.

Layout of the history folder::

    <version_id>.json        the card's canonical JSON; its SHA-256 is its name,
                             so every file can be checked against its name
    <version_id>.meta.json   {"version_id", "timestamp", "touched_at", "changes",
                              "rationale", "deployment_result"}
    state.json               {"last_known_good": version_id | null}
    quarantine/<sha>.card    raw bytes of an unparsable live card, kept before it is overwritten
    .lock                    flock: one writer at a time across processes
    .<name>.<pid>.tmp        a write in progress (here and next to the live card);
                             a killed writer's leftover is removed by cleanup_old_versions

A version exists once its metadata exists. The card file is written first and
the metadata second, so a crash in between leaves a card file without metadata:
an interrupted store, ignored by every reader and completed by the next store of
the same card. Every file is replaced atomically (temp, fsync, rename, fsync of
the folder), so a crash never leaves a half-written file under a final name.

The live card (``card_path``) is always written as canonical JSON, so the hash
of its bytes is its version id and a re-read can be compared byte for byte.

Methods do blocking file I/O; call them from a worker thread in async code.
Time is an argument (``at``, ``now``), never read from the clock.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import msgspec

from ..handlers.card import canonical_json
from ..schemas.errors import (
    CorruptVersion,
    HistoryError,
    InvalidVersionId,
    VerificationFailed,
    VersionNotFound,
)
# Called through this module's namespace: tests patch history.atomic_write_bytes,
# history._read_bytes and history.os.listdir.
from .atomicfile import atomic_write_bytes, fsync_dir

__all__ = [
    "ParameterHistory",
    "ParameterVersion",
    "PRE_ROLLBACK_BACKUP",
    "PRE_DEPLOY_BACKUP",
    "check_version_id",
]

log = logging.getLogger(__name__)

PRE_ROLLBACK_BACKUP = "pre_rollback_backup"
PRE_DEPLOY_BACKUP = "pre_deploy_backup"


# ----------------------------------------------------------------- names, times, hashes, reads

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


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _decode_card(data: bytes) -> dict[str, Any] | None:
    """The card in ``data`` if it is a strict JSON object (no NaN/Infinity), else None."""
    try:
        card = json.loads(data, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        return None
    return card if isinstance(card, dict) else None


# ----------------------------------------------------------------- a version: its id and metadata

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


# ----------------------------------------------------------------- the writer lock


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


# ----------------------------------------------------------------- the history


class ParameterHistory:
    """The business-logic card at ``card_path`` and every version it has had.

    ``validate_card`` (optional) checks a card before it is deployed or rolled
    back to, and raises to refuse it (the seed's ``historical_config.validate()``).
    ``trace`` (optional) is called with the name of each step as it completes:
    ``store.card_written``, ``store.meta_written``; ``deploy.begin``,
    ``deploy.backed_up``, ``deploy.stored``, ``deploy.written``, ``deploy.verified``;
    ``rollback.begin``, ``rollback.validated``, ``rollback.backed_up``,
    ``rollback.written``, ``rollback.verified``, ``rollback.touched``.
    A seam for crash tests (tests/history_kill_driver.py) and debug logging.

    One writer at a time (a flock on ``<history_dir>/.lock``); readers need no
    lock because every file is replaced atomically.
    """

    def __init__(
        self,
        history_dir: Path,
        card_path: Path,
        *,
        validate_card: Callable[[dict[str, Any]], None] | None = None,
        trace: Callable[[str], None] | None = None,
    ):
        self.history_dir = Path(history_dir)
        self.card_path = Path(card_path)
        self._validate_card = validate_card
        self._trace = trace or (lambda step: None)
        self._lock = _WriterLock(self.history_dir / ".lock")

    # ----------------------------------------------------------------- reading

    def current_card(self) -> dict[str, Any] | None:
        """The live card, or None when there is none yet; :class:`HistoryError` if unreadable."""
        data = _read_bytes(self.card_path)
        if data is None:
            return None
        card = _decode_card(data)
        if card is None:
            raise HistoryError(f"the live card {self.card_path} is not a JSON object")
        return card

    def current_version_id(self) -> str | None:
        """Version id of the live card (hash of its canonical JSON), None when there is none."""
        card = self.current_card()
        return None if card is None else _sha256(canonical_json(card))

    def last_known_good(self) -> str | None:
        data = _read_bytes(self.history_dir / _STATE_FILE)
        if data is None:
            return None
        try:
            vid = json.loads(data).get("last_known_good")
            return None if vid is None else check_version_id(vid)
        except (ValueError, AttributeError, InvalidVersionId) as exc:
            raise HistoryError(f"history state file {self.history_dir / _STATE_FILE} is unreadable: {exc}") from exc

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

    def store_version(
        self,
        card: Mapping[str, Any],
        changes: Sequence[Any],
        rationale: str,
        at: datetime,
        deployment_result: Any = None,
    ) -> ParameterVersion:
        """Store ``card`` under its version id. Idempotent: the same card keeps its
        id, first timestamp, changes and rationale; only ``touched_at`` moves on
        (and ``deployment_result`` is filled in if it was empty)."""
        data = self._encode(card)
        with self._lock.held():
            return self._store(data, changes, rationale, _utc(at, "at"), deployment_result)

    def record_deployment_result(self, version_id: str, result: Any) -> ParameterVersion:
        """Attach (or replace) the deployment result of a stored version."""
        vid = check_version_id(version_id)
        with self._lock.held():
            version = self._load(vid, parse=False)[0]
            return self._write_meta(version, deployment_result=msgspec.to_builtins(result))

    def deploy(
        self, card: Mapping[str, Any], changes: Sequence[Any], rationale: str, at: datetime
    ) -> ParameterVersion:
        """Store ``card`` as a version and make it the live card, atomically and verified.

        A live card not yet in the history (hand-placed, first run) is stored
        first as a ``pre_deploy_backup`` version, so it can be rolled back to.
        """
        at = _utc(at, "at")
        data = self._encode(card)
        self._check_card(json.loads(data), "deploy")
        with self._lock.held():
            self._trace("deploy.begin")
            old = _read_bytes(self.card_path)
            self._back_up_live(old, PRE_DEPLOY_BACKUP, at)
            self._trace("deploy.backed_up")
            version = self._store(data, changes, rationale, at, None)
            self._trace("deploy.stored")
            self._replace_live(data, version.version_id, old, "deploy")
            return version

    def rollback_to_version(self, version_id: str, at: datetime) -> ParameterVersion:
        """The seed's "Rollback Safety": validate the target (exists, hashes to its
        name, is a valid card), back up the live card as a ``pre_rollback_backup``
        version, replace the live card atomically, re-read and compare its hash,
        and put the old card back if it differs (:class:`VerificationFailed`)."""
        vid = check_version_id(version_id)
        at = _utc(at, "at")
        with self._lock.held():
            self._trace("rollback.begin")
            target, card = self._load(vid)
            self._check_card(card, "roll back to")
            data = target.file_path.read_bytes()
            if _sha256(data) != vid:  # changed since it was checked a moment ago
                raise CorruptVersion(f"version {vid}: card file changed while being read")
            self._trace("rollback.validated")
            old = _read_bytes(self.card_path)
            self._back_up_live(old, PRE_ROLLBACK_BACKUP, at)
            self._trace("rollback.backed_up")
            self._replace_live(data, vid, old, "rollback")
            target = self._write_meta(target, touched_at=max(at, target.touched_at))  # live at `at`: retention counts from here
            self._trace("rollback.touched")
            return target

    def mark_known_good(self, version_id: str) -> None:
        """Remember ``version_id`` (a stored, intact version) as the last known-good card."""
        vid = check_version_id(version_id)
        with self._lock.held():
            self._load(vid, parse=False)
            state = json.dumps({"last_known_good": vid}, sort_keys=True).encode()
            atomic_write_bytes(self.history_dir / _STATE_FILE, state)

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

    def _encode(self, card: Mapping[str, Any]) -> bytes:
        if not isinstance(card, Mapping):
            raise HistoryError(f"a business-logic card is a JSON object, got {type(card).__name__}")
        try:
            return canonical_json(card)
        except (TypeError, ValueError) as exc:
            raise HistoryError(f"the card cannot be written as JSON: {exc}") from exc

    def _check_card(self, card: dict[str, Any], doing: str) -> None:
        if self._validate_card is None:
            return
        try:
            self._validate_card(card)
        except HistoryError:
            raise
        except Exception as exc:
            raise HistoryError(f"refusing to {doing} an invalid card: {exc}") from exc

    def _load(self, vid: str, parse: bool = True) -> tuple[ParameterVersion, dict[str, Any] | None]:
        """The version and (with ``parse``) its card. The hash check is what matters:
        a file that hashes to its name holds exactly the canonical JSON once stored."""
        card_path = self.history_dir / f"{vid}.json"
        meta_path = self.history_dir / f"{vid}.meta.json"
        meta_bytes = _read_bytes(meta_path)
        if meta_bytes is None:
            if card_path.exists():
                raise VersionNotFound(f"version {vid} was never completely stored (card file without metadata)")
            raise VersionNotFound(f"no stored version {vid} in {self.history_dir}")
        data = _read_bytes(card_path)
        if data is None:
            raise CorruptVersion(f"version {vid}: metadata present but card file {card_path.name} is missing")
        actual = _sha256(data)
        if actual != vid:
            raise CorruptVersion(f"version {vid}: card file hashes to {actual}, not to its name")
        card = _decode_card(data) if parse else None
        if parse and card is None:
            raise CorruptVersion(f"version {vid}: card file is not a JSON object")
        try:
            meta = json.loads(meta_bytes)
            if meta["version_id"] != vid:
                raise ValueError(f"metadata names version {meta['version_id']!r}")
            version = ParameterVersion(
                version_id=vid,
                timestamp=_parse_time(meta["timestamp"]),
                touched_at=_parse_time(meta.get("touched_at", meta["timestamp"])),
                changes=tuple(meta["changes"]),
                rationale=str(meta["rationale"]),
                deployment_result=meta.get("deployment_result"),
                file_path=card_path,
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CorruptVersion(f"version {vid}: metadata is unreadable: {exc}") from exc
        return version, card

    def _store(
        self, data: bytes, changes: Sequence[Any], rationale: str, at: datetime, deployment_result: Any
    ) -> ParameterVersion:
        vid = _sha256(data)
        try:
            existing = self._load(vid, parse=False)[0]
        except VersionNotFound:
            existing = None
        except CorruptVersion as exc:
            # the same bytes are in hand: rewriting them repairs the version
            log.warning("rewriting corrupt history version: %s", exc)
            existing = None
        if existing is not None:
            result = existing.deployment_result
            if result is None and deployment_result is not None:
                result = msgspec.to_builtins(deployment_result)
            updated = self._write_meta(existing, touched_at=max(at, existing.touched_at), deployment_result=result)
            self._trace("store.meta_written")
            return updated
        version = ParameterVersion(
            version_id=vid,
            timestamp=at,
            touched_at=at,
            changes=tuple(msgspec.to_builtins(list(changes))),
            rationale=str(rationale),
            deployment_result=msgspec.to_builtins(deployment_result),
            file_path=self.history_dir / f"{vid}.json",
        )
        meta = self._meta_bytes(version)  # encode first: a bad change list fails before any write
        atomic_write_bytes(version.file_path, data)
        self._trace("store.card_written")
        atomic_write_bytes(self.history_dir / f"{vid}.meta.json", meta)
        self._trace("store.meta_written")
        return version

    def _write_meta(self, version: ParameterVersion, **updates: Any) -> ParameterVersion:
        fields = {
            "touched_at": version.touched_at,
            "deployment_result": version.deployment_result,
        } | updates
        updated = ParameterVersion(
            version_id=version.version_id,
            timestamp=version.timestamp,
            touched_at=fields["touched_at"],
            changes=version.changes,
            rationale=version.rationale,
            deployment_result=fields["deployment_result"],
            file_path=version.file_path,
        )
        atomic_write_bytes(self.history_dir / f"{version.version_id}.meta.json", self._meta_bytes(updated))
        return updated

    @staticmethod
    def _meta_bytes(version: ParameterVersion) -> bytes:
        meta = version.to_dict()
        del meta["file_path"]  # derived from the name; storing it would go stale if the folder moves
        try:
            return json.dumps(meta, sort_keys=True, indent=1, ensure_ascii=False, allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise HistoryError(f"version metadata cannot be written as JSON: {exc}") from exc

    def _back_up_live(self, old: bytes | None, rationale: str, at: datetime) -> None:
        """Store the live card as a version before it is replaced (idempotent)."""
        if old is None:
            return
        if (self.history_dir / f"{_sha256(old)}.meta.json").exists():
            # already a version (the usual case): its bytes are canonical, no need to re-encode
            self._store(old, [], rationale, at, None)
            return
        card = _decode_card(old)
        if card is None:
            # An unparsable live card cannot be a version; keep its bytes for a person to inspect.
            path = self.history_dir / "quarantine" / f"{_sha256(old)}.card"
            log.warning("live card %s is not a JSON object; keeping its bytes in %s", self.card_path, path)
            atomic_write_bytes(path, old)
            return
        self._store(canonical_json(card), [], rationale, at, None)

    def _replace_live(self, data: bytes, vid: str, old: bytes | None, doing: str) -> None:
        atomic_write_bytes(self.card_path, data)
        self._trace(f"{doing}.written")
        reread = _read_bytes(self.card_path)
        if reread is None or _sha256(reread) != vid:
            self._restore_live(old)
            raise VerificationFailed(
                f"{doing}: the card re-read from {self.card_path} does not hash to {vid}; the previous card was restored"
            )
        self._trace(f"{doing}.verified")

    def _restore_live(self, old: bytes | None) -> None:
        try:
            if old is None:
                if _unlink(self.card_path):
                    fsync_dir(self.card_path.parent)
            else:
                atomic_write_bytes(self.card_path, old)
        except OSError as exc:
            raise HistoryError(f"restoring the previous card at {self.card_path} failed: {exc}") from exc

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
