"""Logs that tell the story: one line per thing that happened, with its reason in words.

:class:`StoryLog` listens to the service's committed steps and turns them into log lines
(logger ``vvtv_autopilot.story``): every transition (cycle id, from -> to, why), every
pause, resume, override, rollback and other command (who, why, and the answer), drift
findings, triage reports, bounds adjustments, requests to VVTV (apply, golden set) and
their answers. Every fail-safe is a WARNING: a cycle that ends ``Failed``, a failed or
unanswered apply, the pause after golden-set failures, the drift monitor's pause, the
core's ``core_error`` and ``canary_underpowered`` alerts. Metric batches and canary looks
that decide nothing are not logged; dead letters are summarized in bursts
(:class:`DeadLetterLog`).

:func:`setup` configures the root logger: ``text`` (the default) or ``json`` (one JSON
object a line, for log shippers, with the line's fields: ``cycle_id``, ``from``, ``to``,
``kind``...).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from typing import Any

from ..schemas.events import ApplyResult, GoldenResult
from .report import short, transition_reason

log = logging.getLogger("vvtv_autopilot.story")

# alerts whose transition or command line already tells the story
_ALERTS_TOLD_ELSEWHERE = {"cycle_failed", "cycle_rolledback"}
_WARN_ALERTS = {"core_error", "canary_underpowered", "apply_failed", "github_issues_failed", "card_changed_outside",
                "emergency_pause"}
_FAIL_SAFE_ACTORS = {"fail-safe", "drift-monitor", "configuration"}


def _emit(level: int, msg: str, **fields: Any) -> None:
    log.log(level, msg, extra={"fields": {k: v for k, v in fields.items() if v is not None}})


class StoryLog:
    """A listener on committed steps (``Service.listeners``)."""

    def on_step(self, step: Any) -> None:
        try:
            self._step(step)
        except Exception:  # noqa: BLE001 - a log line must never break the service
            log.exception("could not log a step")

    def _step(self, step: Any) -> None:
        event = step.inbound.event
        if isinstance(event, ApplyResult):
            self._apply_result(event)
        elif isinstance(event, GoldenResult) and not event.passed:
            _emit(logging.WARNING, f"golden set for cycle {event.cycle_id}: not passed ({event.error or 'failures'})",
                  cycle_id=event.cycle_id, kind="golden_result")
        for t in step.transitions:
            reason = transition_reason(t.to, t.trigger, t.detail)
            level = logging.WARNING if t.to == "Failed" else logging.INFO
            _emit(level, f"cycle {t.cycle_id} {t.from_} -> {t.to}: {reason}", cycle_id=t.cycle_id,
                  seq=t.seq, **{"from": t.from_, "to": t.to, "trigger": t.trigger, "kind": "transition"})
        for e in step.effects:
            if e.kind == "publish":
                self._event(e.subject or "", e.body)
            elif e.kind == "apply":
                r = e.body.get("request") or {}
                _emit(logging.INFO, f"asking VVTV to apply {short(r.get('version_id'))} on the {r.get('arm')} arm "
                                    f"({e.body.get('purpose')}, {100 * float(r.get('traffic_percentage') or 0):.0f}% of traffic)",
                      cycle_id=r.get("cycle_id"), effect_id=e.effect_id, kind="apply_request", purpose=e.body.get("purpose"))
            elif e.kind == "golden":
                r = e.body.get("request") or {}
                _emit(logging.INFO, f"asking the golden-set service to validate {short(r.get('version_id'))} "
                                    f"for cycle {r.get('cycle_id')}", cycle_id=r.get("cycle_id"), kind="golden_request")

    def _apply_result(self, ev: ApplyResult) -> None:
        where = f"cycle {ev.cycle_id}" if ev.cycle_id else "operator"
        if ev.applied:
            _emit(logging.INFO, f"VVTV applied the {ev.purpose} ({where})", cycle_id=ev.cycle_id, kind="apply_result",
                  purpose=ev.purpose, applied=True)
        else:
            _emit(logging.WARNING, f"VVTV did NOT apply the {ev.purpose} ({where}): {ev.error or 'no reason given'}",
                  cycle_id=ev.cycle_id, kind="apply_result", purpose=ev.purpose, applied=False, error=ev.error)

    def _event(self, subject: str, body: dict[str, Any]) -> None:
        kind = subject.rsplit(".", 1)[-1]
        if kind == "alert":
            alert = body.get("kind")
            if alert in _ALERTS_TOLD_ELSEWHERE:
                return
            fail_safe = alert in _WARN_ALERTS or (alert == "paused" and body.get("actor") in _FAIL_SAFE_ACTORS)
            what = {"paused": f"autopilot paused until {body.get('until')} by {body.get('actor')}"}.get(alert, f"alert {alert}")
            _emit(logging.WARNING if fail_safe else logging.INFO, f"{what}: {body.get('message')}",
                  cycle_id=body.get("cycle_id"), kind=alert, actor=body.get("actor"))
        elif kind == "command":
            self._command(body)
        elif kind == "drift":
            action = body.get("action_taken") or {}
            _emit(logging.WARNING, f"drift monitor: {body.get('event_type')} -> {action.get('action') or action}"
                                   f"{': ' + str(action.get('reason')) if action.get('reason') else ''}",
                  kind="drift", event_type=body.get("event_type"))
        elif kind == "triage":
            counts = {k: len(v) for k, v in (body.get("failure_categories") or {}).items() if v}
            _emit(logging.INFO, f"triage report {body.get('report_id')} ({body.get('reason')}): "
                                f"{', '.join(f'{k} {n}' for k, n in sorted(counts.items())) or 'no failures'}; "
                                f"{len(body.get('patch_suggestions') or [])} patch suggestion(s)",
                  kind="triage", report_id=body.get("report_id"))
        elif kind == "bounds":
            _emit(logging.INFO, f"bounds of {body.get('parameter')}: {body.get('kind')} {body.get('old_range')} -> "
                                f"{body.get('new_range')}: {body.get('reason')}", kind="bounds", parameter=body.get("parameter"))

    def _command(self, c: dict[str, Any]) -> None:
        verb = c.get("verb")
        result = c.get("result") or {}
        if verb in ("pause-expired", "override-expired"):
            _emit(logging.INFO, f"{verb.replace('-', ' ')}" + (f": {c.get('parameter')}" if c.get("parameter") else ""),
                  kind="command", verb=verb)
            return
        if verb == "apply-result":
            body = c.get("body") or {}
            what = f"{body.get('for')} to {short(body.get('version_id'))}"
            if c.get("ok"):
                _emit(logging.INFO, f"{what} asked by {c.get('actor')}: applied by VVTV; the card is now "
                                    f"{short(body.get('version_id'))}", kind="command", verb=verb, actor=c.get("actor"))
            else:
                _emit(logging.WARNING, f"{what} asked by {c.get('actor')}: {c.get('error')}", kind="command", verb=verb,
                      actor=c.get("actor"))
            return
        who = f"by {c.get('actor')} via {c.get('via')}" + (f" ({c.get('reason')})" if c.get("reason") else "")
        if not c.get("ok"):
            _emit(logging.INFO, f"command {verb} {who} refused: {c.get('error')}", kind="command", verb=verb,
                  actor=c.get("actor"), ok=False)
            return
        detail = ""
        if result.get("pending_apply"):
            detail = f": asked VVTV to apply {short(result.get('version_id'))}, waiting for its answer"
        elif result.get("paused_until") or result.get("emergency_pause"):
            detail = f": paused until {result.get('paused_until') or 'resume'}"
        elif result.get("cycle_id") and verb in ("run-now", "propose", "promote", "abort"):
            detail = f": cycle {result.get('cycle_id')}"
        elif result.get("outcome"):
            detail = f": {result.get('outcome')}"
        _emit(logging.INFO, f"command {verb} {who} accepted{detail}", kind="command", verb=verb, actor=c.get("actor"),
              ok=True)


class DeadLetterLog:
    """Dead letters in bursts: the first few of a window one by one, then one summary line."""

    def __init__(self, window: float = 10.0, first: int = 3):
        self.window, self.first = window, first
        self._start = 0.0
        self._count = 0
        self._last: tuple[str, str] | None = None
        self._logger = logging.getLogger("vvtv_autopilot.service")

    def add(self, subject: str, reason: str) -> None:
        now = time.monotonic()
        if self._count == 0 or now - self._start > self.window:
            self.flush()
            self._start = now
        self._count += 1
        self._last = (subject, reason)
        if self._count <= self.first:
            self._logger.warning("dead letter from %s: %s", subject, reason,
                                 extra={"fields": {"kind": "dead_letter", "subject": subject}})
        elif self._count == self.first + 1:  # a burst: one summary when its window ends
            try:
                asyncio.get_running_loop().call_later(max(0.0, self.window - (now - self._start)), self.flush)
            except RuntimeError:
                pass

    def flush(self) -> None:
        more = self._count - self.first
        if more > 0 and self._last is not None:
            self._logger.warning("dead-letter burst: %d more dead letters within %.0f s (last from %s: %s)",
                                 more, self.window, *self._last,
                                 extra={"fields": {"kind": "dead_letter_burst", "count": self._count}})
        self._count = 0


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
               "level": record.levelname, "logger": record.name, "msg": record.getMessage()}
        out.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup(level: int, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("transitions").setLevel(logging.WARNING)  # ours are logged by StoryLog
