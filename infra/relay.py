"""The outbox relay: carries the committed effects out into the world.

Events are published with ``Nats-Msg-Id`` = effect id (JetStream drops a
re-send within its duplicate window), timers become JetStream scheduled
messages, the card is written atomically, and apply / golden requests go to
VVTV; their replies (or their absence, after the timeout) come back into the
core as events through the same one-transaction path, which also marks the
effect sent. Unsent effects are re-sent after a restart: VVTV applies one
``effect_id`` once, and every other effect is idempotent. A ``github_issues``
effect (the weekly triage's issues) is sent by :mod:`.github` in a task of its
own, like a request, so GitHub never holds up the other effects; its results
go into the triage report and it is marked sent in one transaction, with an
operator alert (``evt.alert``) when it failed.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Awaitable, Callable

import msgspec
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from ..schemas.config import Config
from ..schemas.errors import BusError, MessageError
from ..schemas.events import ApplyResult, Effect, GoldenResult, Inbound
from . import bus as busmod
from . import github
from .cardfile import CardFile
from .clock import utcnow
from .inbound import excerpt
from .store import Store

log = logging.getLogger("vvtv_autopilot.relay")
_enc = msgspec.json.Encoder()


class OutboxRelay:
    def __init__(self, config: Config, store: Store, nc, js, card: CardFile,
                 process: Callable[[list[Inbound]], Awaitable[object]], stopping: asyncio.Event):
        self.config = config
        self.store = store
        self.nc = nc
        self.js = js
        self.card = card
        self.subjects = busmod.Subjects(config.bus.prefix)
        self._process = process
        self._stopping = stopping
        self._wake = asyncio.Event()
        self._inflight: set[str] = set()
        self.requests: set[asyncio.Task] = set()   # apply/golden requests awaiting VVTV

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=2.0)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("outbox relay: %s (will retry)", exc)
                await asyncio.sleep(0.5)

    async def publish_pending(self) -> None:
        """Events, timers and card writes only: no new request to VVTV at a stop."""
        await self.run_once(requests=False)

    async def run_once(self, *, requests: bool = True) -> None:
        effects = await self.store.pending_effects()
        done: list[str] = []
        for effect in effects:
            if effect.kind == "publish":
                await self.js.publish(f"{self.config.bus.prefix}.{effect.subject}", _enc.encode(effect.body),
                                      headers={"Nats-Msg-Id": effect.effect_id})
                done.append(effect.effect_id)
            elif effect.kind == "schedule":
                b = effect.body
                await busmod.schedule(self.js, self.subjects, b["name"], b["at"], _enc.encode(b["event"]))
                done.append(effect.effect_id)
            elif effect.kind == "write_card":
                b = effect.body
                await asyncio.to_thread(self.card.deploy, b["card"], b["version_id"],
                                        changes=b.get("changes") or [], rationale=b.get("rationale", ""))
                done.append(effect.effect_id)
            elif effect.kind == "rollback_card":  # an operator's rollback, once VVTV applied it
                b = effect.body
                if await asyncio.to_thread(self.card.history.current_version_id) != b["version_id"]:
                    await asyncio.to_thread(self.card.rollback_to, b["version_id"], reason=b.get("reason") or "")
                done.append(effect.effect_id)
            elif requests and effect.kind in ("apply", "golden") and effect.effect_id not in self._inflight:
                self._inflight.add(effect.effect_id)
                task = asyncio.create_task(self._request(effect))
                self.requests.add(task)
                task.add_done_callback(self.requests.discard)
            elif requests and effect.kind == "github_issues" and effect.effect_id not in self._inflight:
                self._inflight.add(effect.effect_id)
                task = asyncio.create_task(self._github(effect), name=f"github:{effect.effect_id}")
                self.requests.add(task)
                task.add_done_callback(self.requests.discard)
        if done:
            await self.store.mark_sent(done, utcnow())

    async def _request(self, effect: Effect) -> None:
        """A request to VVTV; its reply (or its absence) comes back as an event."""
        try:
            if effect.kind == "apply":
                event = await self._apply(effect)
            else:
                event = await self._golden(effect)
            await self._process([Inbound(key=f"reply:{effect.effect_id}", subject=effect.kind, at=utcnow(), event=event)])
        except Exception:  # a bug or a failed commit: this task's exception would otherwise go unseen
            log.exception("%s request %s failed; the effect stays unsent and is retried", effect.kind, effect.effect_id)
        finally:
            self._inflight.discard(effect.effect_id)

    async def _ask(self, subject: str, request: object, timeout: float) -> object:
        """VVTV's reply to ``request``, decoded. nats-py's errors stop here, in the
        project's words: :class:`TimeoutError` when no reply came in time (the
        callers say how long they waited), :class:`BusError` when the request failed
        otherwise (nobody listening: at once, not after the timeout), and
        :class:`MessageError` when the reply is not JSON."""
        try:
            msg = await self.nc.request(subject, _enc.encode(request), timeout=timeout)
        except NoRespondersError:
            raise BusError(f"no responder on {subject}: VVTV is not listening") from None
        except (NatsTimeout, asyncio.TimeoutError):
            raise TimeoutError(f"no reply on {subject} within {timeout}s") from None
        except NatsError as exc:
            raise BusError(f"the request on {subject} failed: {exc}") from exc
        try:
            return msgspec.json.decode(msg.data)
        except msgspec.DecodeError:
            raise MessageError(f"VVTV replied with something that is not valid JSON: {excerpt(msg.data, 200)!r}") from None

    async def _github(self, effect: Effect) -> None:
        """File the triage's issues; record them, and alert the operators when that failed."""
        cfg = self.config.autopilot.incident_triage.github
        report_id = effect.body["report_id"]
        try:
            done = await self.store.github_done(effect.effect_id)

            async def record(key: str, result: dict) -> None:
                await self.store.record_github_issue(effect.effect_id, key, report_id, result, utcnow())

            try:
                issues, error = await github.send_issues(cfg, effect.body, done=done, record=record, env=os.environ)
                reason = None if error is None else str(error)
                status = None if error is None else error.status
                kind = type(error).__name__ if error is not None else None
            except (asyncio.CancelledError, KeyboardInterrupt):
                raise
            except Exception as exc:  # a bug or a store failure: one alert, no loop
                log.exception("sending the GitHub issues of %s failed", report_id)
                reason, status, kind = f"internal error: {type(exc).__name__}: {exc}", None, "InternalError"
                issues = [dict(i) | {"created": False, "action": "failed", "error": reason}
                          for i in effect.body.get("issues") or []]
            alert = None
            if reason is not None:
                at = utcnow()
                alert = Effect(f"{effect.effect_id}:alert", "publish", {
                    "kind": "github_issues_failed", "at": at, "report_id": report_id,
                    "repository": effect.body.get("repository"), "error": kind, "status": status,
                    "message": f"the weekly triage's GitHub issues were not filed: {reason}",
                    "not_filed": [i.get("title") for i in issues if i.get("action") == "failed"]}, subject="autopilot.evt.alert")
            await self.store.finish_github(effect.effect_id, report_id, issues, alert, utcnow())
            if alert is not None:
                self.wake()
        finally:
            self._inflight.discard(effect.effect_id)

    async def _apply(self, effect: Effect) -> ApplyResult:
        req = effect.body["request"]
        timeout = self.config.autopilot.apply_timeout_seconds
        try:
            reply = await self._ask(self.subjects.apply(), req, timeout)
        except TimeoutError:
            applied, error = False, f"no reply within {timeout}s"
        except (BusError, MessageError) as exc:
            applied, error = False, str(exc)
        else:
            applied = bool(reply.get("applied")) if isinstance(reply, dict) else False
            error = reply.get("error") if isinstance(reply, dict) else "reply is not a JSON object"
        return ApplyResult(effect.effect_id, req.get("cycle_id"), effect.body["purpose"], applied, error)

    async def _golden(self, effect: Effect) -> GoldenResult:
        """Fail safe: no valid answer is a failed validation."""
        req = effect.body["request"]
        timeout = self.config.golden.timeout_seconds
        try:
            reply = await self._ask(self.subjects.golden(), req, timeout)
        except TimeoutError:
            return GoldenResult(effect.effect_id, req["cycle_id"], False, 0, [], error=f"no valid reply within {timeout}s")
        except (BusError, MessageError) as exc:
            return GoldenResult(effect.effect_id, req["cycle_id"], False, 0, [], error=str(exc))
        try:
            if not isinstance(reply, dict) or not isinstance(reply.get("passed"), bool):
                raise ValueError("it lacks a boolean `passed`")
            failures = [{"case": str(f.get("case")), "reason": str(f.get("reason"))} for f in reply.get("failures") or []]
            cases_run = int(reply.get("cases_run") or 0)
        except (ValueError, TypeError, AttributeError) as exc:  # the reply's shape, not our code
            return GoldenResult(effect.effect_id, req["cycle_id"], False, 0, [],
                                error=f"VVTV's golden-set reply is not valid: {exc} (reply: {excerpt(_enc.encode(reply), 200)!r})")
        return GoldenResult(effect.effect_id, req["cycle_id"], reply["passed"], cases_run, failures)
