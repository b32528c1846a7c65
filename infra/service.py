"""The service loop: bus in, one transaction per event or batch, bus out.

Per inbound message (README, "One event, one transaction"): decode and
validate (a bad message goes to the DLQ, is acked and counted); in one SQLite
transaction insert it into the inbox (a duplicate stops there), step the core,
append transitions, effects, domain rows and the core's snapshot; commit, then
ack. The outbox relay then publishes the effects with idempotent ids and marks
them sent.

One asyncio lock owns the core: every step runs under it, in arrival order.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from pathlib import Path
from typing import Any, Awaitable, Callable

import msgspec
from nats.errors import TimeoutError as NatsTimeout

from ..handlers.card import version_id
from ..handlers.golden import GoldenSet, builtin_golden_set, parse_golden_set
from ..schemas.config import Config
from ..schemas.errors import ConfigError, HistoryError, MessageError, NotLeader, ReadRefused
from ..schemas.events import Boot, CommandEvent, Inbound, MetricStats, TimerEvent
from ..schemas.messages import DeadLetter, encode, rfc3339
from ..statemachine import Autopilot, AutopilotState, CycleData
from ..statemachine.step import Step
from . import bus as busmod
from . import discovery, reads
from .logs import DeadLetterLog, StoryLog
from .cardfile import CardFile
from .clock import now, utcnow
from .relay import OutboxRelay
from .inbound import alert_inbound, command_event, excerpt, metric_inbound
from .leader import Replication
from .natsserver import EmbeddedNats
from .store import CycleStart, Store
from .telemetry import Telemetry
from .web import WebServer, web_token

log = logging.getLogger("vvtv_autopilot.service")

_state_dec = msgspec.json.Decoder(AutopilotState)
_cycle_dec = msgspec.json.Decoder(CycleData)
_timer_dec = msgspec.json.Decoder(TimerEvent)
_enc = msgspec.json.Encoder()


class _CoreFailure(Exception):
    """The pure core raised: a bug, never a reason to lose other events."""


def load_golden_set(config: Config) -> GoldenSet | None:
    """``golden.mode: builtin``: the cases file (or the shipped set); ``service``: None."""
    if config.golden.mode != "builtin":
        return None
    if config.golden.cases_file is None:
        return builtin_golden_set()
    try:
        return parse_golden_set(Path(config.golden.cases_file).read_bytes())
    except (OSError, ValueError, msgspec.MsgspecError) as exc:
        raise ConfigError([("golden.cases_file", str(config.golden.cases_file), f"cannot be used: {exc}")]) from None


class Service:
    def __init__(self, config: Config, *, nats_url: str | None = None, batch_size: int = 1000):
        self.config = config
        self.nats_url = nats_url or config.bus.url
        self.batch_size = batch_size
        self.subjects = busmod.Subjects(config.bus.prefix)
        self.data_dir = Path(config.storage.data_dir)
        self.card = CardFile(config.card_path, self.data_dir / "history")
        self.telemetry = Telemetry(config.telemetry)
        self.core: Autopilot | None = None
        self.golden_set = load_golden_set(config)
        self._golden_json = None if self.golden_set is None else _enc.encode(self.golden_set).decode()
        self.store: Store | None = None
        self.nc = None
        self.js = None
        self.embedded: EmbeddedNats | None = None
        self._lock = asyncio.Lock()
        self.relay: OutboxRelay | None = None
        self._metrics: list = []                 # delivered by the push consumer, not yet committed
        self._metrics_ready = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._stopping = asyncio.Event()
        self.listeners: list[Callable[[Step], Awaitable[None] | None]] = []
        self.web: WebServer | None = None   # web dashboard (issue #11)
        # --- the operator's console (infra/logs.py, reads.py, discovery.py) ---
        self.instance_id = uuid.uuid4().hex[:12]
        self.started_at: str | None = None
        self.pending_replies = reads.PendingReplies()
        self.dead_letters = DeadLetterLog()
        self.listeners += [StoryLog().on_step, self.pending_replies.on_step]
        self._waiting: set[asyncio.Task] = set()   # replies waiting for VVTV's answer
        self.ha: Replication | None = None       # leader or standby (README, "Deployment: replicas")
        self._subs: list = []                    # the leader's consumers

    # --- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Returns once this replica leads (timers armed, its Boot stepped) or stands by
        behind another leader, tailing the journal (README, "Deployment: replicas")."""
        # --- web dashboard (issue #11): refuse a non-loopback bind without credentials first ---
        web_token_value = web_token(self.config) if self.config.web.listen else None
        # --- end web dashboard ---
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.nats_url is None:
            self.embedded = EmbeddedNats(self.data_dir / "nats")
            self.nats_url = await self.embedded.start()
        self.nc = await busmod.connect(self.nats_url, inbox_prefix=self.config.bus.inbox_prefix)
        self.js = self.nc.jetstream(timeout=self.config.bus.request_timeout_seconds)
        await busmod.ensure_streams(self.js, self.config)
        self.ha = Replication(self)
        self.instance_id = self.ha.instance   # one identity for discovery, status and the lease
        await self.ha.prepare()   # a new or far-behind replica starts from the latest snapshot
        self.store = await Store.open(self.data_dir / "autopilot.db")
        await self._reload_core()
        # --- web dashboard (issue #11): served on this loop, read-only; the store first (a snapshot may restore it) ---
        if self.config.web.listen:
            self.web = WebServer(self.config, self.data_dir / "autopilot.db",
                                 lambda: self.core.status(now()) if self.core else None, token=web_token_value)
            await self.web.start()
        # --- end web dashboard ---
        await self.ha.start()     # leader (Boot stepped) or a standby behind one: only then answer ctl
        await self.nc.subscribe(self.subjects.ctl(), cb=self._on_ctl)
        await busmod.barrier(self.nc)  # start() returned => control requests find their responder
        self.started_at = utcnow()
        discovery.write(self.data_dir, url=self.nats_url, embedded=self.embedded is not None,
                        instance_id=self.instance_id, started_at=self.started_at, prefix=self.config.bus.prefix)
        log.info("autopilot up on %s as %s (%s), data in %s (pid %d; the CLI finds it with --data-dir %s)",
                 busmod.redact(self.nats_url), self.instance_id, self.ha.status()["role"], self.data_dir, os.getpid(),
                 self.data_dir)

    # --- leader only (called by self.ha) ----------------------------------------------------------

    async def _lead(self, epoch: int) -> None:
        """This replica has just become the leader at ``epoch``: consume, relay, act."""
        subs = await busmod.ensure_consumers(self.js, self.config)
        self._metrics.clear()
        metrics = await busmod.subscribe_metrics(self.js, self.config, self._on_metric, deliver_token=self.ha.instance)
        self._subs = [metrics, *subs.values()]
        self.relay = OutboxRelay(self.config, self.store, self.nc, self.js, self.card, self._process, self._stopping)
        self.relay.epoch, self.relay.mark_sent = epoch, self.ha.mark_sent
        await self.relay.run_once()  # unsent effects of the previous leader first (e.g. a card write)
        card = self.card.load_or_init(self.config)
        await self._process([Inbound(key=f"boot:{uuid.uuid4().hex}", subject="boot", at=utcnow(),
                                     event=Boot(card=card, card_version=version_id(card)))])
        await self.ha.resume_canary()
        self._tasks = [
            asyncio.create_task(self._ingest_metrics(), name="metrics"),
            asyncio.create_task(self._pull(subs["autopilot-alerts"], "alerts"), name="alerts"),
            asyncio.create_task(self._pull(subs["autopilot-cmd"], "commands"), name="commands"),
            asyncio.create_task(self._pull(subs["autopilot-timers"], "timers"), name="timers"),
            asyncio.create_task(self.relay.run(), name="relay"),
        ]

    async def _cancel_tasks(self) -> None:
        """Cancel the consumers, the relay and its requests; wait a bounded time for them."""
        tasks = self._tasks + (list(self.relay.requests) if self.relay else [])
        for task in tasks:
            task.cancel()
        # Bounded waits: a stop must never hang on a task that does not answer.
        _, pending = await asyncio.wait(tasks, timeout=10) if tasks else (set(), set())
        for task in pending:
            log.warning("task %s did not stop within 10 s", task.get_name())
        self._tasks = []

    async def _unlead(self, *, reload: bool = True) -> None:
        """Stop acting: consumers, relay and requests; the core goes back to the store's state."""
        await self._cancel_tasks()
        for sub in self._subs:
            try:
                await sub.unsubscribe()
            except Exception:
                pass
        self._subs = []
        self._metrics.clear()
        if reload:
            async with self._lock:
                await self._reload_core()

    async def stop(self) -> None:
        self._stopping.set()
        if self.web is not None:  # web dashboard (issue #11)
            await self.web.stop()
            self.web = None
        discovery.remove(self.data_dir, self.instance_id)
        self.dead_letters.flush()
        if self.ha is not None:
            await self.ha.stop()  # the leader flushes its outbox, stops acting and releases its lease
        await self._cancel_tasks()
        if self.nc is not None and not self.nc.is_closed:
            try:
                await asyncio.wait_for(self.nc.close(), timeout=10)
            except (asyncio.TimeoutError, Exception) as exc:
                log.warning("closing the NATS connection: %r", exc)
        if self.store is not None:
            await self.store.close()
        if self.embedded is not None:
            self.embedded.stop()
        self.telemetry.shutdown()

    async def run_forever(self) -> None:
        await self.start()
        try:
            await self._stopping.wait()
        finally:
            await self.stop()

    # --- inbound --------------------------------------------------------------------------------

    async def _pull(self, sub, kind: str) -> None:
        """Alerts, commands and timers: a durable pull consumer, each message acked."""
        stream = getattr(self.config.bus.streams, kind)
        while not self._stopping.is_set():
            try:
                msgs = await sub.fetch(100, timeout=1.0)
            except (NatsTimeout, asyncio.TimeoutError):  # nothing there: fetch raises, never returns []
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # connection lost: nats-py reconnects by itself
                log.warning("fetch from %s failed: %r", stream, exc)
                await asyncio.sleep(0.5)
                continue
            if not await self._handle_batch(kind, stream, msgs):
                await asyncio.sleep(1.0)  # not acked: JetStream redelivers after ack_wait, the inbox dedupes
                continue
            for msg in msgs:
                await msg.ack()

    async def _on_metric(self, msg) -> None:
        self._metrics.append(msg)
        self._metrics_ready.set()

    async def _ingest_metrics(self) -> None:
        """Metrics: batches from the push consumer's buffer, one transaction and
        one ack (AckPolicy.ALL) per batch; a failed batch is retried, never skipped."""
        stream = self.config.bus.streams.metrics
        while not self._stopping.is_set():
            try:
                await asyncio.wait_for(self._metrics_ready.wait(), timeout=1.0)
            except asyncio.TimeoutError:
                continue
            self._metrics_ready.clear()
            while self._metrics and not self._stopping.is_set():
                batch = self._metrics[: self.batch_size]
                if not await self._handle_batch("metrics", stream, batch):
                    await asyncio.sleep(1.0)
                    continue
                del self._metrics[: len(batch)]
                await batch[-1].ack()

    async def _handle_batch(self, kind: str, stream: str, msgs: list) -> bool:
        """Validate, dead-letter the bad, commit the good; False when it failed
        (then nothing may be acknowledged)."""
        good, bad = [], []
        for msg in msgs:
            meta = msg.metadata
            at = rfc3339(meta.timestamp) if meta.timestamp else utcnow()
            try:
                good.append(self._decode(kind, msg, stream, meta.sequence.stream, at))
            except MessageError as exc:
                bad.append((msg, str(exc)))
        try:
            if good:
                await self._process(good)
            for msg, reason in bad:
                await self._dead_letter(msg.subject, msg.data, reason)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("processing a batch from %s failed; it will be retried", stream)
            return False
        return True

    def _decode(self, kind: str, msg, stream: str, seq: int, at: str) -> Inbound:
        if kind == "metrics":
            return metric_inbound(msg.subject, msg.data, stream, seq, at)
        if kind == "alerts":
            return alert_inbound(msg.subject, msg.data, stream, seq, at)
        if kind == "commands":
            verb = msg.subject.rsplit(".", 1)[-1]
            if verb == "status":
                raise MessageError("status is a query: request it on ctl.status")
            return Inbound(key=f"{stream}:{seq}", subject=msg.subject, at=at, stream_seq=seq,
                           event=command_event(verb, msg.data, "cmd"))
        try:
            event = _timer_dec.decode(msg.data)
        except msgspec.MsgspecError as exc:
            raise MessageError(f"invalid timer event: {exc}") from None
        return Inbound(key=f"{stream}:{seq}", subject=msg.subject, at=at, stream_seq=seq, event=event)

    async def _dead_letter(self, subject: str, data: bytes, reason: str) -> None:
        letter = DeadLetter(subject=subject, reason=reason, received_at=utcnow(), payload_excerpt=excerpt(data))
        await self.js.publish(self.subjects.dlq(), encode(letter))
        await self.store.add_counter("dead_letters")
        self.dead_letters.add(subject, reason)

    async def _on_ctl(self, msg) -> None:
        verb = msg.subject.rsplit(".", 1)[-1]
        if verb != "status" and self.ha is not None and not self.ha.is_leader:
            # A standby: silent while a leader answers (the first reply wins), else a clear refusal.
            refusal = self.ha.standby_reply(self.core.mode(now()) if self.core else "Unknown")
            if refusal is not None and msg.reply:
                await msg.respond(_enc.encode(refusal))
            return
        try:
            if reads.is_read(verb, msg.data):  # history, bounds, report, triage, replay: beside the loop
                reply = await reads.answer(self, verb, msg.data)
            elif verb == "status":
                command_event(verb, msg.data, "ctl")  # validates the (optional) body
                reply = self.core.status(now())
                reply["counters"] = await self.store.counters()
                reply.update(reads.status_extras(self))
                if self.ha is not None:
                    reply.update(self.ha.status())
            else:
                event = command_event(verb, msg.data, "ctl")
                inbound = Inbound(key=f"ctl:{uuid.uuid4().hex}", subject=msg.subject, at=utcnow(), event=event)
                steps = await self._process([inbound])
                reply = steps[0].reply if steps else None
                if reply and reply.get("pending_apply"):  # override / rollback: the answer is VVTV's,
                    task = asyncio.create_task(self._reply_after_vvtv(msg, reply))  # awaited beside this
                    self._waiting.add(task)                                        # callback, so other
                    task.add_done_callback(self._waiting.discard)                  # requests go on
                    return
        except NotLeader as exc:  # leadership lost on the way: nobody else carried it out
            reply = {"ok": False, "error": f"not carried out: {exc}; retry", "state": "Unknown", "cycle_id": None,
                     "role": "standby", "leader": exc.leader}
        except MessageError as exc:
            await self.store.add_counter("refused_requests")
            state = self.core.mode(now()) if self.core else "Unknown"
            reply = {"ok": False, "error": str(exc), "state": state, "cycle_id": None}
        except Exception as exc:  # never leave an operator without an answer
            log.exception("control %s failed", verb)
            reply = {"ok": False, "error": f"internal error: {exc}", "state": "Unknown", "cycle_id": None}
        if msg.reply:
            await msg.respond(_enc.encode(reply))

    async def _reply_after_vvtv(self, msg, first: dict[str, Any]) -> None:
        """An override's or a rollback's reply, once VVTV answered (or the timeout passed)."""
        try:
            reply = await self.pending_replies.wait(first, self.config.autopilot.apply_timeout_seconds + 5)
            if reply.get("applied") and self.relay is not None:
                await self.relay.publish_pending()  # the card is on disk when the reply says applied
        except Exception as exc:  # never leave an operator without an answer
            log.exception("waiting for VVTV's answer failed")
            reply = {**first, "ok": False, "error": f"internal error: {exc}"}
        if msg.reply:
            await msg.respond(_enc.encode(reply))

    async def _prepare_rollback(self, ib: Inbound) -> Inbound:
        """The file-system half of a rollback command, under the core's lock and before its
        step: the target is resolved (a unique prefix of a stored id) and verified in the
        history (or why it cannot be used goes into the event), and the core then asks VVTV
        for it or refuses. The card on disk is rolled back only after VVTV applied it (the
        relay's ``rollback_card`` effect). The inbox records the prepared event, so a replay
        needs no file system."""
        body = dict(ib.event.body)
        if self.core.running() is not None:
            return ib  # the core refuses; the card on disk is not touched
        try:
            vid = await asyncio.to_thread(reads.resolve_version, self.card.history, body["version_id"])
            card = await asyncio.to_thread(self.card.history.load_card, vid)
            body["verified"] = {"version_id": vid, "card": card}
        except (HistoryError, ReadRefused, OSError) as exc:
            # unknown, ambiguous, corrupt, or the disk refused: the core refuses with this reason.
            # Anything else is a bug: it surfaces (logged, the request answered as an internal error).
            log.warning("rollback to %s refused: %s", body["version_id"], exc)
            body["rollback_error"] = str(exc)
        return msgspec.structs.replace(ib, event=msgspec.structs.replace(ib.event, body=body))

    # --- the transaction ---------------------------------------------------------------------------

    async def _process(self, inbounds: list[Inbound]) -> list[Step]:
        """Step the core for each new inbound and commit them in one transaction.

        Should the core raise (a bug), the batch is retried one event at a time
        from the last committed state, and only the offending event is
        dead-lettered: one bad event never takes the others down with it."""
        async with self._lock:
            if self.ha is not None:
                self.ha.check_leader()  # NotLeader: a standby changes nothing
            try:
                steps = await self._step_and_commit(inbounds)
            except _CoreFailure:
                await self._reload_core()
                steps = []
                for ib in inbounds:
                    try:
                        steps += await self._step_and_commit([ib])
                    except _CoreFailure as failure:
                        await self._reload_core()
                        await self._dead_letter(ib.subject, _enc.encode(ib.event), f"internal error: {failure.__cause__!r}")
        if self.relay is not None and any(s.effects for s in steps):
            self.relay.wake()
        for step in steps:
            self.telemetry.record(step)
            for listener in self.listeners:
                result = listener(step)
                if asyncio.iscoroutine(result):
                    await result
        return steps

    async def _step_and_commit(self, inbounds: list[Inbound], *, journal_seq: int | None = None) -> list[Step]:
        """``journal_seq``: a standby replaying that journal entry (the leader's events as
        its core saw them); otherwise the leader journals the steps before committing."""
        core = self.core
        seen = await self.store.seen(ib.key for ib in inbounds)
        steps: list[Step] = []
        starts: list[CycleStart] = []
        snapshots: dict[str, bytes] = {}
        duplicates = 0
        for ib in inbounds:
            if ib.key in seen:
                duplicates += 1
                continue
            seen.add(ib.key)
            if (journal_seq is None and isinstance(ib.event, CommandEvent) and ib.event.verb == "rollback"
                    and "verified" not in ib.event.body):
                ib = await self._prepare_rollback(ib)
            # The state before any non-metric event is kept in case it starts a
            # cycle: replay of that cycle starts from it.
            before = None if isinstance(ib.event, MetricStats) else _enc.encode(core.state)
            previous = core.cycle.data.cycle_id if core.cycle is not None else None
            try:
                step = core.handle(ib)
            except Exception as exc:
                log.exception("core failed on %s", ib.key)
                raise _CoreFailure() from exc
            current = core.cycle.data.cycle_id if core.cycle is not None else None
            if current is not None and current != previous and before is not None:
                starts.append(CycleStart(current, ib.key, before, self.config.model_dump_json(), self._golden_json))
            for row in step.cycle_rows:
                snapshots[row["cycle_id"]] = _enc.encode(row["snapshot"])
            if step.counters.get("core_errors"):
                log.error("the core failed on %s (%s) and contained it: %s", ib.subject, ib.key,
                          (core.state.last_error or {}).get("error"))
            steps.append(step)
        if steps:
            state = _enc.encode(core.state)
            if journal_seq is None and self.ha is not None:
                try:  # the journal first (fenced): a deposed leader's step stops here, uncommitted
                    seq = await self.ha.append_steps(steps)
                except BaseException:
                    await self._reload_core()
                    raise
            else:
                seq = journal_seq
            try:
                await self.store.commit(steps, state=state, active_cycle_id=core.state.active_cycle_id,
                                        cycle_snapshots=snapshots, cycle_starts=starts, journal_seq=seq)
            except BaseException:
                if journal_seq is None and self.ha is not None:  # journaled but not committed here: replay it
                    self.ha.lose("the local commit failed after the journal append")
                raise
        elif journal_seq is not None:
            await self.store.set_journal_seq(journal_seq)
        if duplicates:
            await self.store.add_counter("duplicates", duplicates)
        return steps

    async def _reload_core(self) -> None:
        state_json, cycle_json = await self.store.load_state()
        state = _state_dec.decode(state_json) if state_json else AutopilotState()
        cycle = _cycle_dec.decode(cycle_json) if cycle_json else None
        self.core = Autopilot(self.config, state, cycle, golden=self.golden_set)

    # --- introspection for the CLI ------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return self.core.status(now())
