"""The replicated journal of committed inputs, and the snapshots that bound it.

README, "Deployment: replicas". The leader appends, in commit order, one entry
per committed transaction: the inbound events exactly as its core saw them (the
inbox's content, what replay consumes), the effects it has sent, and a marker
when it takes over. Each append carries ``Nats-Expected-Last-Subject-Sequence``
= the last entry the leader knows: once a newer leader has appended its marker,
a deposed leader's append is refused by JetStream (:class:`Fenced`) and nothing
of its step is kept. Standbys tail the journal and step their own core and
store with the same events, so their SQLite, card and parameter history stay
current without a shared disk.

The leader appends *before* its local commit: an entry in the journal is
history; a local commit without one never happens. A crash between the two
leaves the entry in the journal, and the next start (leader or standby)
applies it from there.

A snapshot (the store, the card and the history folder, as one tar.gz in a
JetStream object store, with the journal sequence it reflects) lets a new
replica start near the end of a long journal instead of at its beginning.
"""

from __future__ import annotations

import asyncio
import io
import logging
import sqlite3
import tarfile
from pathlib import Path

import msgspec
from nats.js.api import ConsumerConfig, DeliverPolicy, ObjectMeta, ObjectStoreConfig
from nats.js.errors import APIError, BucketNotFoundError, ObjectNotFoundError

from ..schemas.config import Config
from ..schemas.errors import BusError, Fenced
from ..schemas.events import Inbound
from . import bus as busmod

log = logging.getLogger("vvtv_autopilot.journal")

WRONG_LAST_SEQUENCE = 10071   # JetStream's error code for a failed expected-last-sequence check


class StepsEntry(msgspec.Struct, frozen=True, tag="steps"):
    """One committed transaction: its inbound events, as the leader's core saw them."""

    epoch: int
    leader: str
    inbounds: list[Inbound]


class SentEntry(msgspec.Struct, frozen=True, tag="sent"):
    """Effects the leader has carried out (a new leader re-sends only the others)."""

    epoch: int
    leader: str
    effect_ids: list[str]
    at: str


class LeaderEntry(msgspec.Struct, frozen=True, tag="leader"):
    """A new leader took over at this point of the journal: every later append of an
    older leader is refused."""

    epoch: int
    leader: str
    at: str


Entry = StepsEntry | SentEntry | LeaderEntry
_entry_dec = msgspec.json.Decoder(Entry)
_enc = msgspec.json.Encoder()


def decode_entry(data: bytes) -> Entry:
    return _entry_dec.decode(data)


class Journal:
    """Appends (fenced) and reads of the journal stream."""

    def __init__(self, js, config: Config):
        self.js = js
        self.stream = config.bus.streams.journal
        self.subject = busmod.Subjects(config.bus.prefix).journal()
        self.timeout = config.bus.request_timeout_seconds

    async def append(self, entry: Entry, expected_last: int) -> int:
        """Append ``entry`` if the journal's last entry is ``expected_last``; its sequence.

        :class:`Fenced` when another leader appended since (this one was deposed);
        :class:`BusError` when the outcome is unknown (a timeout, a lost connection)."""
        data = _enc.encode(entry)
        try:
            ack = await self.js.publish(self.subject, data, timeout=self.timeout,
                                        headers={"Nats-Expected-Last-Subject-Sequence": str(expected_last)})
        except APIError as exc:
            if exc.err_code == WRONG_LAST_SEQUENCE:
                raise Fenced(f"the journal refused epoch {entry.epoch}'s append after entry {expected_last}: "
                             f"a newer leader has written it ({exc.description})") from None
            raise BusError(f"appending to the journal failed: {exc}") from exc
        except Exception as exc:
            raise BusError(f"appending to the journal failed (outcome unknown): {exc!r}") from exc
        return ack.seq

    async def bounds(self) -> tuple[int, int]:
        """(first, last) sequence in the journal; (0, 0) when empty."""
        info = await self.js.stream_info(self.stream)
        if not info.state.messages:
            return 0, info.state.last_seq
        return info.state.first_seq, info.state.last_seq

    async def get(self, seq: int) -> Entry:
        msg = await self.js.get_msg(self.stream, seq)
        return decode_entry(msg.data)

    async def subscribe(self, from_seq: int):
        """An ordered consumer from ``from_seq`` on: no durable state, no ack, in order."""
        cfg = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=max(from_seq, 1))
        return await self.js.subscribe(self.subject, ordered_consumer=True, config=cfg, pending_msgs_limit=100_000)


class Snapshots:
    """The latest snapshot of a replica's state, in a JetStream object store."""

    NAME = "latest"

    def __init__(self, js, config: Config, data_dir: Path, card_path: Path):
        self.js = js
        self.bucket = config.bus.streams.snapshots
        self.replicas = config.bus.stream_replicas
        self.data_dir = data_dir
        self.card_path = card_path
        self.store = None

    async def ensure(self) -> None:
        async def make():
            try:
                return await self.js.object_store(self.bucket)
            except BucketNotFoundError:
                return await self.js.create_object_store(self.bucket, ObjectStoreConfig(
                    bucket=self.bucket, description="vvtv-autopilot state snapshots", replicas=self.replicas))
        self.store = await busmod.retry_unavailable(make, f"object store {self.bucket}")

    async def latest_seq(self) -> int:
        """The journal sequence the stored snapshot reflects (0: none)."""
        try:
            info = await self.store.get_info(self.NAME)
        except ObjectNotFoundError:
            return 0
        return _seq_of(info.description)

    async def put(self, db_copy: Path, journal_seq: int, epoch: int) -> None:
        data = await asyncio.to_thread(self._pack, db_copy)
        await self.store.put(self.NAME, data, meta=_meta(journal_seq, epoch))
        log.info("snapshot at journal entry %d stored (%d bytes)", journal_seq, len(data))

    async def fetch(self) -> bytes | None:
        try:
            result = await self.store.get(self.NAME)
        except ObjectNotFoundError:
            return None
        return result.data

    def _pack(self, db_copy: Path) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            tar.add(db_copy, arcname="autopilot.db")
            if self.card_path.exists():
                tar.add(self.card_path, arcname="business_logic.json")
            history = self.data_dir / "history"
            if history.is_dir():
                for path in sorted(history.iterdir()):
                    if path.is_file() and not path.name.startswith("."):
                        tar.add(path, arcname=f"history/{path.name}")
        return buf.getvalue()

    def unpack(self, data: bytes) -> int:
        """Replace this replica's store, card and history with the snapshot's; the
        journal sequence it reflects. The store must be closed."""
        db = self.data_dir / "autopilot.db"
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for member in tar.getmembers():
                name = member.name
                if not member.isfile() or ".." in Path(name).parts or name.startswith("/"):
                    continue
                content = tar.extractfile(member).read()
                if name == "autopilot.db":
                    for suffix in ("-wal", "-shm"):
                        Path(str(db) + suffix).unlink(missing_ok=True)
                    _atomic(db, content)
                elif name == "business_logic.json":
                    _atomic(self.card_path, content)
                elif name.startswith("history/"):
                    (self.data_dir / "history").mkdir(parents=True, exist_ok=True)
                    _atomic(self.data_dir / name, content)
        return journal_seq_of(db)


def journal_seq_of(db: Path) -> int:
    """The journal sequence recorded in a store file (0 when none or no file)."""
    if not db.exists():
        return 0
    con = sqlite3.connect(db)
    try:
        row = con.execute("SELECT journal_seq FROM replica WHERE id = 1").fetchone()
    except sqlite3.Error:
        return 0
    finally:
        con.close()
    return 0 if row is None else int(row[0])


def _atomic(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.snapshot.tmp")
    tmp.write_bytes(content)
    tmp.replace(path)


def _meta(journal_seq: int, epoch: int) -> ObjectMeta:
    return ObjectMeta(name=Snapshots.NAME, description=f"journal_seq={journal_seq} epoch={epoch}")


def _seq_of(description: str | None) -> int:
    for part in (description or "").split():
        key, _, value = part.partition("=")
        if key == "journal_seq" and value.isdigit():
            return int(value)
    return 0
