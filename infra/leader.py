"""One leader by lease, warm standbys by the journal (README, "Deployment: replicas").

Several ``vvtv-autopilot run`` processes, each with its own data dir, share one
bus. The **lease** is one key in a JetStream KV bucket whose TTL is
``bus.lease_ttl_seconds``: created if absent (``kv.create``), renewed every
``bus.lease_renew_seconds`` by compare-and-set on its revision (``kv.update(...,
last=revision)``), and gone once its holder stops renewing (the bucket's
``max_age``). The revision at which a replica took the lease is its **epoch**: it
grows with each new leader. A leader steps down on its first failed renewal, and
also as soon as its own clock says the lease may have run out (after a pause),
which is before the bucket can expire it.

Only the leader consumes the inbound streams, arms timers, sends effects and
changes state. On taking over it replays what the journal holds beyond its own
store, appends a marker with the expected last sequence (so a deposed leader's
next append fails: :class:`Fenced`), re-creates the durable consumers from their
ack floor (nothing waits for a dead process's ``ack_wait``), re-sends unsent
effects (idempotent by ``effect_id`` and ``Nats-Msg-Id``), re-arms the timers (a
``Boot`` step) and judges a running canary at once.

A standby tails the journal (:mod:`.journal`), answers ``ctl.status`` with its
``role`` and the ``leader``'s instance id, stays silent on state-changing verbs
while a leader holds the lease (core request/reply takes the first answer, so
it must not race the leader's), and refuses them clearly when nobody does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import time
import uuid
from pathlib import Path
from typing import Any

from nats.js.api import KeyValueConfig
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.errors import TimeoutError as NatsTimeout

from ..schemas.config import Config
from ..schemas.errors import BusError, Fenced, NotLeader
from ..schemas.events import Boot, CommandEvent, Inbound, TimerEvent
from . import bus as busmod
from .clock import utcnow
from .journal import Entry, Journal, LeaderEntry, SentEntry, Snapshots, StepsEntry, decode_entry, journal_seq_of

log = logging.getLogger("vvtv_autopilot.leader")

LEASE_KEY = "leader"
_ID = re.compile(r"^[A-Za-z0-9_-]{1,80}$")


def instance_id(data_dir: Path) -> str:
    """This replica's name, kept in ``<data_dir>/instance_id``: stable across restarts,
    so a replica that crashed takes its own lease back at once."""
    path = data_dir / "instance_id"
    try:
        text = path.read_text().strip()
        if _ID.match(text):
            return text
    except OSError:
        pass
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:40] or "host"
    ident = f"{host}-{uuid.uuid4().hex[:8]}"
    data_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(ident + "\n")
    return ident


class Lease:
    """The leader's lease: one KV key, its revision the holder's epoch."""

    def __init__(self, js, config: Config, instance: str):
        self.js = js
        self.bucket = config.bus.streams.lease
        self.ttl = config.bus.lease_ttl_seconds
        self.replicas = config.bus.stream_replicas
        self.instance = instance
        self.kv = None
        self.revision: int | None = None       # the key's revision while we hold it
        self.holder: str | None = None         # the last holder seen
        self.holder_seen = 0.0                 # when (monotonic)

    async def ensure(self) -> None:
        async def make():
            try:
                return await self.js.key_value(self.bucket)
            except BucketNotFoundError:
                return await self.js.create_key_value(KeyValueConfig(
                    bucket=self.bucket, description="vvtv-autopilot leader lease", history=1, ttl=self.ttl,
                    replicas=self.replicas))
        self.kv = await busmod.retry_unavailable(make, f"lease bucket {self.bucket}")

    def _value(self) -> bytes:
        return json.dumps({"instance": self.instance, "at": utcnow()}).encode()

    async def try_acquire(self) -> int | None:
        """The new epoch if this replica now holds the lease; None if another does."""
        try:
            revision = await self.kv.create(LEASE_KEY, self._value())
        except KeyWrongLastSequenceError:
            try:
                entry = await self.kv.get(LEASE_KEY)
            except KeyNotFoundError:
                return None                          # expired or released meanwhile: next round
            try:
                holder = json.loads(entry.value)["instance"]
            except (ValueError, KeyError, TypeError):
                holder = None
            self.holder, self.holder_seen = holder, time.monotonic()
            if holder != self.instance:
                return None
            # Our own lease, from before a crash or a step-down: take it back at once.
            revision = await self.kv.update(LEASE_KEY, self._value(), last=entry.revision)
        self.revision = revision
        self.holder, self.holder_seen = self.instance, time.monotonic()
        return revision

    async def renew(self) -> None:
        """Compare-and-set on our revision; raises when someone else wrote or it expired."""
        self.revision = await self.kv.update(LEASE_KEY, self._value(), last=self.revision)
        self.holder_seen = time.monotonic()

    async def release(self) -> None:
        revision, self.revision = self.revision, None
        if revision is not None:
            await self.kv.delete(LEASE_KEY, last=revision)

    def holder_now(self, horizon: float) -> str | None:
        """The holder seen within ``horizon`` seconds, else None (it may have lapsed)."""
        if self.holder is not None and time.monotonic() - self.holder_seen <= horizon:
            return self.holder
        return None


class Replication:
    """A replica's role (leader or standby) and its moves between them, for a Service."""

    def __init__(self, service):
        self.svc = service
        bus = service.config.bus
        self.ttl = bus.lease_ttl_seconds
        self.renew_every = bus.lease_renew_seconds
        self.renew_timeout = max(0.25, (self.ttl - self.renew_every) / 3)
        self.safety = min(1.0, self.ttl / 10)
        self.snapshot_every = bus.snapshot_every_entries
        self.instance = instance_id(service.data_dir)
        self.lease = Lease(service.js, service.config, self.instance)
        self.journal = Journal(service.js, service.config)
        self.snapshots = Snapshots(service.js, service.config, service.data_dir, Path(service.config.card_path))
        self.role = "standby"
        self.epoch: int | None = None
        self.valid_until = 0.0
        self.applied_seq = 0
        self.leader_entry: LeaderEntry | None = None
        self.takeovers = 0
        self.fenced = 0
        self.last_step_down: dict[str, Any] | None = None
        self.last_takeover: dict[str, Any] | None = None
        self.last_gate_look: dict[str, Any] | None = None
        self.restored_snapshot: int | None = None
        self.error: str | None = None
        self._lost = asyncio.Event()
        self._lost_reason = ""
        self._ready = asyncio.Event()
        self._tail_stop = asyncio.Event()
        self._tail_task: asyncio.Task | None = None
        self._renew_task: asyncio.Task | None = None
        self._loop_task: asyncio.Task | None = None
        self._snapshot_task: asyncio.Task | None = None
        self._snapshot_seq = 0
        service.listeners.append(self._on_step)

    # --- start and stop -------------------------------------------------------------------------

    async def prepare(self) -> None:
        """Before the store opens: the lease bucket and the snapshot store; a replica far
        behind the journal (or new) starts from the latest snapshot."""
        await self.lease.ensure()
        await self.snapshots.ensure()
        self._snapshot_seq = await self.snapshots.latest_seq()
        db = self.svc.data_dir / "autopilot.db"
        local = journal_seq_of(db)
        first, _ = await self.journal.bounds()
        gap = first > local + 1
        far = self.snapshot_every and self._snapshot_seq - local >= self.snapshot_every
        if self._snapshot_seq > local and (local == 0 or gap or far):
            data = await self.snapshots.fetch()
            if data is not None:
                seq = await asyncio.to_thread(self.snapshots.unpack, data)
                self.restored_snapshot = seq
                log.info("restored the snapshot at journal entry %d (this store was at %d)", seq, local)
        elif gap:
            log.error("the journal starts at %d but this store is at %d and no snapshot covers the gap", first, local)

    async def start(self) -> None:
        """Returns once this replica leads (its Boot done) or stands by behind a leader."""
        self.applied_seq = await self.svc.store.journal_seq()
        self._loop_task = asyncio.create_task(self._run(), name="replication")
        ready = asyncio.create_task(self._ready.wait())
        done, _ = await asyncio.wait({ready, self._loop_task}, return_when=asyncio.FIRST_COMPLETED)
        if self._loop_task in done:
            ready.cancel()
            self._loop_task.result()   # raises what stopped it
            raise BusError("replication stopped before this replica found its role")

    async def stop(self) -> None:
        """A graceful stop: the leader publishes what is committed, stops acting and
        releases its lease (a standby takes over at once, not after the TTL)."""
        svc = self.svc
        if self._loop_task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._loop_task), timeout=10)
            except (asyncio.TimeoutError, Exception):
                self._loop_task.cancel()
        await self._stop_tail()
        if self.role == "leader":
            if self.is_leader and svc.relay is not None and svc.nc is not None and svc.nc.is_connected:
                try:  # a graceful stop publishes what is committed (a crash leaves it to the next leader)
                    await asyncio.wait_for(svc.relay.publish_pending(), timeout=5)
                except Exception as exc:
                    log.warning("outbox not flushed at stop: %r (sent by the next leader)", exc)
            self.role = "standby"
            await svc._unlead(reload=False)
            self._cancel_renew()
            try:
                await asyncio.wait_for(self.lease.release(), timeout=2)
            except Exception as exc:
                log.info("lease not released at stop (%r): it expires after %ss", exc, self.ttl)
        if self._snapshot_task is not None:
            self._snapshot_task.cancel()

    # --- roles ----------------------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        return (self.role == "leader" and not self._lost.is_set()
                and time.monotonic() < self.valid_until - self.safety)

    def check_leader(self) -> None:
        if not self.is_leader:
            if self.role == "leader":
                self.lose("the lease may have run out (not renewed in time)")
            raise NotLeader(f"this autopilot ({self.instance}) is not the leader", leader=self.leader_id())

    def leader_id(self) -> str | None:
        if self.is_leader:
            return self.instance
        return self.lease.holder_now(self.ttl + self.renew_every)

    def lose(self, reason: str) -> None:
        """Leadership is gone (or may be): stop acting at once; the loop steps down."""
        if not self._lost.is_set():
            self._lost_reason = reason
            self._lost.set()
            log.warning("stepping down (epoch %s): %s", self.epoch, reason)

    async def _run(self) -> None:
        svc = self.svc
        while not svc._stopping.is_set():
            self._start_tail()
            epoch = await self._campaign()
            if epoch is None:
                break
            await self._stop_tail()
            try:
                await self._take_over(epoch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("takeover at epoch %s failed: %r", epoch, exc)
                await self._step_down(f"takeover failed: {exc!r}")
                await _wait(svc._stopping, self.renew_every)
                continue
            self._ready.set()
            lost = asyncio.create_task(self._lost.wait())
            stopping = asyncio.create_task(svc._stopping.wait())
            await asyncio.wait({lost, stopping}, return_when=asyncio.FIRST_COMPLETED)
            lost.cancel()
            stopping.cancel()
            if svc._stopping.is_set():
                break
            await self._step_down(self._lost_reason)

    async def _campaign(self) -> int | None:
        """Try for the lease every ``lease_renew_seconds`` until it is ours (its epoch)."""
        svc = self.svc
        while not svc._stopping.is_set():
            started = time.monotonic()
            try:
                epoch = await asyncio.wait_for(self.lease.try_acquire(), timeout=self.renew_timeout)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("lease: %r", exc)
                epoch = None
            if epoch is not None:
                self.valid_until = started + self.ttl
                return epoch
            self._ready.set()   # a standby behind a leader (or no bus yet): settled
            await _wait(svc._stopping, self.renew_every)
        return None

    async def _take_over(self, epoch: int) -> None:
        svc = self.svc
        self.epoch = epoch
        self._lost.clear()
        self._lost_reason = ""
        self._renew_task = asyncio.create_task(self._renew_loop(), name="lease-renewal")
        started = time.monotonic()
        await self._catch_up()
        for _ in range(50):
            if self._lost.is_set() or time.monotonic() >= self.valid_until - self.safety:
                raise NotLeader("the lease ran out during the takeover")
            marker = LeaderEntry(epoch, self.instance, utcnow())
            try:
                seq = await self.journal.append(marker, self.applied_seq)
                break
            except Fenced:
                await self._catch_up()   # an older leader's last append got in first: it is history
        else:
            raise NotLeader("could not append the leader marker to the journal")
        async with svc._lock:
            await svc.store.set_journal_seq(seq)
        previous, self.leader_entry, self.applied_seq = self.leader_entry, marker, seq
        self.role = "leader"
        self.takeovers += 1
        if previous is not None and previous.leader != self.instance:
            await self._repair_card()
        await svc._lead(epoch)
        if self.snapshot_every and self._snapshot_seq == 0 and (self._snapshot_task is None or self._snapshot_task.done()):
            # No snapshot yet (a new deployment, or a store older than the journal): one now, so a
            # replica that joins later gets everything this store holds, not only the journal.
            self._snapshot_task = asyncio.create_task(self._snapshot(), name="snapshot")
        self.last_takeover = {"epoch": epoch, "at": utcnow(), "journal_seq": seq,
                              "seconds": round(time.monotonic() - started, 3),
                              "previous": None if previous is None else previous.leader}
        log.info("leader at epoch %d (journal entry %d)", epoch, seq)

    async def _step_down(self, reason: str) -> None:
        svc = self.svc
        self.role = "standby"
        self.last_step_down = {"at": utcnow(), "epoch": self.epoch, "reason": reason}
        if "refused" in reason or "Fenced" in reason:
            self.fenced += 1
        self._cancel_renew()
        await svc._unlead()
        self.applied_seq = await svc.store.journal_seq()
        self.epoch = None
        try:
            await asyncio.wait_for(self.lease.release(), timeout=1.0)
        except Exception:
            pass   # deposed (not ours any more) or unreachable: it expires by itself

    def _cancel_renew(self) -> None:
        if self._renew_task is not None and self._renew_task is not asyncio.current_task():
            self._renew_task.cancel()
        self._renew_task = None

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.renew_every)
            remaining = self.valid_until - time.monotonic() - self.safety
            if remaining <= 0:
                self.lose("the lease was not renewed in time (was this process paused?)")
                return
            started = time.monotonic()
            try:  # an answer may take until just before the lease could lapse; a refusal is final
                await asyncio.wait_for(self.lease.renew(), timeout=remaining)
            except asyncio.CancelledError:
                raise
            except asyncio.TimeoutError:
                self.lose(f"the lease renewal got no answer within {remaining:.1f}s, before it could lapse")
                return
            except Exception as exc:
                self.lose(f"lease renewal failed: {exc!r}")
                return
            self.valid_until = started + self.ttl

    # --- the leader's writes ----------------------------------------------------------------------

    async def append_steps(self, steps: list) -> int:
        """The journal entry for one transaction, before its local commit (fenced)."""
        self.check_leader()
        entry = StepsEntry(self.epoch or 0, self.instance, [s.inbound for s in steps])
        seq = await self._append(entry)
        return seq

    async def mark_sent(self, effect_ids: list[str], at: str) -> None:
        """The relay's ``mark_sent``: journaled, so a new leader re-sends only the rest."""
        async with self.svc._lock:
            self.check_leader()
            seq = await self._append(SentEntry(self.epoch or 0, self.instance, effect_ids, at))
            try:
                await self.svc.store.mark_sent(effect_ids, at, journal_seq=seq)
            except BaseException:
                self.lose("the local commit failed after the journal append")
                raise

    async def _append(self, entry: Entry) -> int:
        try:
            seq = await self.journal.append(entry, self.applied_seq)
        except Fenced as exc:
            self.fenced += 1
            self.lose(str(exc))
            raise
        except BusError as exc:
            self.lose(f"a journal append failed, its outcome unknown: {exc}")
            raise NotLeader(f"this autopilot stopped leading: {exc}", leader=None) from exc
        self.applied_seq = seq
        return seq

    async def resume_canary(self) -> None:
        """Judge a running canary at once after a takeover (not at the next check)."""
        svc = self.svc
        cycle = svc.core.running()
        if cycle is not None and cycle.state == "Canary":
            await svc._process([Inbound(key=f"resume:{self.epoch}:{uuid.uuid4().hex[:8]}", subject="takeover",
                                        at=utcnow(), event=TimerEvent(kind="check", cycle_id=cycle.data.cycle_id))])

    def _on_step(self, step) -> None:
        event = step.inbound.event
        if isinstance(event, TimerEvent) and event.kind in ("check", "deadline"):
            self.last_gate_look = {"at": utcnow(), "kind": event.kind, "cycle_id": event.cycle_id, "epoch": self.epoch}
        if (self.role == "leader" and self.snapshot_every and self.applied_seq - self._snapshot_seq >= self.snapshot_every
                and (self._snapshot_task is None or self._snapshot_task.done())):
            self._snapshot_task = asyncio.create_task(self._snapshot(), name="snapshot")

    async def _snapshot(self) -> None:
        tmp = self.svc.data_dir / ".snapshot.db"
        try:
            await self.svc.store.backup_to(tmp)
            seq = journal_seq_of(tmp)
            await self.snapshots.put(tmp, seq, self.epoch or 0)
            self._snapshot_seq = seq
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("snapshot failed: %r (retried after more entries)", exc)
            self._snapshot_seq = self.applied_seq
        finally:
            tmp.unlink(missing_ok=True)

    # --- the standby's replay ------------------------------------------------------------------------

    def _start_tail(self) -> None:
        if self._tail_task is None or self._tail_task.done():
            self._tail_stop.clear()
            self._tail_task = asyncio.create_task(self._tail(), name="journal-tail")

    async def _stop_tail(self) -> None:
        task, self._tail_task = self._tail_task, None
        if task is None:
            return
        self._tail_stop.set()
        try:
            await asyncio.wait_for(task, timeout=15)
        except (asyncio.TimeoutError, Exception) as exc:
            if not isinstance(exc, asyncio.CancelledError):
                log.warning("journal tail did not stop cleanly: %r", exc)
            task.cancel()
        self.applied_seq = await self.svc.store.journal_seq()

    async def _tail(self) -> None:
        while not self._tail_stop.is_set():
            try:
                sub = await self.journal.subscribe(self.applied_seq + 1)
            except Exception as exc:
                log.debug("journal subscription: %r", exc)
                await _wait(self._tail_stop, 0.5)
                continue
            try:
                while not self._tail_stop.is_set():
                    try:
                        msg = await sub.next_msg(timeout=0.25)
                    except (NatsTimeout, asyncio.TimeoutError):
                        continue
                    await self._apply(msg.metadata.sequence.stream, decode_entry(msg.data))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.error = f"applying the journal failed: {exc!r}"
                log.exception("applying the journal failed; retrying from entry %d", self.applied_seq + 1)
                await _wait(self._tail_stop, 1.0)
            finally:
                try:
                    await sub.unsubscribe()
                except Exception:
                    pass

    async def _catch_up(self) -> None:
        """Apply what the journal holds beyond this store (before taking over)."""
        _, last = await self.journal.bounds()
        seq = self.applied_seq + 1
        while seq <= last:
            await self._apply(seq, await self.journal.get(seq))
            seq += 1

    async def _apply(self, seq: int, entry: Entry) -> None:
        svc = self.svc
        if seq <= self.applied_seq:
            return
        if seq != self.applied_seq + 1:
            log.error("journal gap: entry %d follows %d (a trimmed journal without a snapshot?)", seq, self.applied_seq)
        if isinstance(entry, StepsEntry):
            async with svc._lock:
                try:
                    steps = await svc._step_and_commit(entry.inbounds, journal_seq=seq)
                except BaseException:
                    await svc._reload_core()   # nothing of this entry was committed: back to the store's state
                    raise
            await self._local_card_effects(steps)
        else:
            async with svc._lock:
                if isinstance(entry, SentEntry):
                    await svc.store.mark_sent(entry.effect_ids, entry.at, journal_seq=seq)
                else:
                    await svc.store.set_journal_seq(seq)
        if isinstance(entry, LeaderEntry):
            self.leader_entry = entry
        self.applied_seq = seq
        self.error = None

    async def _local_card_effects(self, steps: list) -> None:
        """The card and history are each replica's own files: what the leader wrote to its
        disk, a standby writes to its own as it replays (the leader's card at Boot, a
        verified rollback, each deployment)."""
        card = self.svc.card
        for step in steps:
            event = step.inbound.event
            writes = []
            if isinstance(event, Boot):
                writes.append((event.card, event.card_version, "replica: the leader's card"))
            elif isinstance(event, CommandEvent) and event.verb == "rollback" and "verified" in event.body:
                verified = event.body["verified"]
                writes.append((verified["card"], verified["version_id"], "replica: rollback"))
            for effect in step.effects:
                if effect.kind == "write_card":
                    b = effect.body
                    writes.append((b["card"], b["version_id"], b.get("rationale", "")))
            for new_card, vid, why in writes:
                try:
                    await asyncio.to_thread(card.deploy, new_card, vid, changes=[], rationale=why)
                except Exception as exc:
                    log.warning("replica card write %s failed: %r (repaired at takeover)", vid[:12], exc)

    async def _repair_card(self) -> None:
        """After taking over from another replica: the card on disk is the state's."""
        state = self.svc.core.state
        if state.card_version and self.svc.card.history.current_version_id() != state.card_version:
            await asyncio.to_thread(self.svc.card.deploy, state.card, state.card_version, changes=[],
                                    rationale="replica: the state's card at takeover")

    # --- what ctl sees ------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        leading = self.is_leader
        return {
            "role": "leader" if leading else "standby",
            "leader": self.leader_id(),
            "instance": self.instance,
            "epoch": self.epoch if leading else (self.leader_entry.epoch if self.leader_entry else None),
            "replication": {
                "journal_seq": self.applied_seq, "takeovers": self.takeovers, "fenced": self.fenced,
                "last_takeover": self.last_takeover, "last_step_down": self.last_step_down,
                "last_gate_look": self.last_gate_look, "restored_snapshot": self.restored_snapshot,
                "snapshot_seq": self._snapshot_seq, "error": self.error,
            },
        }

    def standby_reply(self, mode: str) -> dict[str, Any] | None:
        """A standby's answer to a state-changing verb: None (silence: the leader answers)
        while a leader holds the lease, else a clear refusal."""
        leader = self.leader_id()
        if leader is not None and leader != self.instance:
            return None
        why = "this replica is taking over" if leader == self.instance else "no replica holds the lease"
        return {"ok": False, "state": mode, "cycle_id": None, "role": "standby", "leader": None,
                "error": f"no leader at the moment ({why}); a standby takes over within "
                         f"{self.ttl + self.renew_every:g}s: retry then"}


async def _wait(event: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(event.wait(), timeout=seconds)
    except asyncio.TimeoutError:
        pass
