"""``vvtv-autopilot watch``: a live view of the running (or next) cycle, with rich.

It listens to ``evt.transition`` and ``evt.cycle`` (core subscriptions: read only)
and asks ``ctl.status`` every ``interval`` seconds; the screen shows the state, the
elapsed time and the deadline, samples per arm, per-KPI lift and interval so far
and where the gate is heading (``gate_so_far`` of the status reply), and the
transitions with their reasons. It ends with the cycle's decision (``--follow``
keeps watching the next ones); ``--record FILE`` writes the last screen as text.
"""

from __future__ import annotations

import asyncio
import io
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..schemas.config import Config
from ..schemas.errors import BusError
from .bus import connect, redact
from .discovery import bus_url
from .report import short, transition_reason


def _parse(ts: str | None) -> datetime | None:
    if not ts:
        return None
    try:
        return datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return None


def _pct(x: Any) -> str:
    return "-" if x is None else f"{100 * float(x):+.2f}%"


class View:
    """What the screen shows; updated from events and status replies."""

    def __init__(self) -> None:
        self.status: dict[str, Any] = {}
        self.cycle_id: str | None = None
        self.transitions: list[dict[str, Any]] = []
        self.ended: dict[str, Any] | None = None
        self.note = "waiting for the service..."
        self.gate: dict[str, Any] = {}
        self.backfilled: str | None = None

    def on_status(self, s: dict[str, Any]) -> None:
        self.status = s
        running = s.get("cycle_id")
        if running and self.cycle_id is None and self.ended is None:
            self.cycle_id = running
        if s.get("gate_so_far") and s.get("cycle_id") == self.cycle_id:
            self.gate = s["gate_so_far"]
        if self.cycle_id is None:
            self.note = f"no cycle running (state {s.get('state')}); waiting for the next one"
        else:
            self.note = ""

    def on_transition(self, t: dict[str, Any]) -> None:
        if self.cycle_id is None and self.ended is None:
            self.cycle_id = t.get("cycle_id")
        if t.get("cycle_id") != self.cycle_id:
            return
        if all(x.get("seq") != t.get("seq") for x in self.transitions):
            self.transitions.append(t)
            self.transitions.sort(key=lambda x: x.get("seq", 0))
        if t.get("to") == "Gated":
            decision = (t.get("detail") or {}).get("decision")
            if decision:
                self.gate = decision | {"final_decision": True}

    def backfill(self, timeline: list[dict[str, Any]]) -> None:
        """Transitions before the watch started, from the cycle's report (``ctl.report``)."""
        for t in timeline:
            if all(x.get("seq") != t.get("seq") for x in self.transitions):
                self.transitions.append(t)
        self.transitions.sort(key=lambda x: x.get("seq", 0))

    def on_cycle(self, c: dict[str, Any]) -> None:
        if c.get("cycle_id") == self.cycle_id:
            self.ended = c

    def reset(self) -> None:
        self.cycle_id, self.transitions, self.ended, self.gate, self.backfilled = None, [], None, {}, None

    # --- rendering --------------------------------------------------------------------------

    def render(self) -> Panel:
        s = self.status
        c = s.get("cycle") if s.get("cycle_id") == self.cycle_id else None
        head = Table.grid(padding=(0, 2))
        head.add_column(style="bold"); head.add_column()
        state = (self.transitions[-1]["to"] if self.transitions else None) or (c or {}).get("state") or s.get("state")
        if self.ended:
            state = self.ended.get("outcome")
        head.add_row("cycle", f"{self.cycle_id or '-'}" + (f"  ({(c or {}).get('origin')})" if c else ""))
        head.add_row("state", Text(str(state), style="bold green" if state == "Deployed" else
                                   "bold red" if state in ("RolledBack", "Failed", "Aborted") else "bold yellow"))
        start = _parse((self.gate or {}).get("canary_started_at")) or _parse((c or {}).get("started_at"))
        deadline = _parse((c or {}).get("deadline"))
        now = datetime.now(timezone.utc)
        if start is not None:
            line = f"{(now - start).total_seconds():.0f} s since the canary started" if self.gate.get("canary_started_at") \
                else f"{(now - start).total_seconds():.0f} s since the cycle started"
            if deadline is not None:
                line += f"; deadline {deadline:%H:%M:%S} UTC ({max(0.0, (deadline - now).total_seconds()):.0f} s left)"
            if not self.ended:
                head.add_row("time", line)
        samples = (c or {}).get("samples") or {}
        for arm in ("control", "canary"):
            if samples.get(arm):
                head.add_row(arm, ", ".join(f"{k} n={v}" for k, v in sorted(samples[arm].items())))
        parts: list[Any] = [head]
        kpis = (self.gate or {}).get("kpis") or []
        if kpis:
            t = Table(title="per KPI, canary vs control" + (" (final)" if self.gate.get("final_decision") else " (so far)"),
                      title_justify="left", expand=False)
            for col in ("kpi", "role", "n ctl/can", "lift", "interval", "margin", "p", "verdict"):
                t.add_column(col, justify="right" if col in ("n ctl/can", "lift", "margin", "p") else "left")
            for k in kpis:
                iv = k.get("interval")
                absolute = k.get("mode") == "absolute"
                est = (f"{k['estimate']:+.4g}" if absolute and k.get("estimate") is not None else _pct(k.get("estimate")))
                ivs = "-" if not iv else (f"[{iv[0]:+.4g}, {iv[1]:+.4g}]" if absolute else f"[{_pct(iv[0])}, {_pct(iv[1])}]")
                t.add_row(k.get("kpi"), "guardrail" if k.get("critical") else "success",
                          f"{k.get('n_control')}/{k.get('n_canary')}", est, ivs,
                          "-" if k.get("margin") is None else f"{k['margin']:.3g}",
                          "-" if k.get("p_value") is None else f"{k['p_value']:.2g}", str(k.get("verdict")))
            parts.append(t)
        if self.gate.get("reason"):
            heading = self.gate.get("recommendation") if self.gate.get("final_decision") else self.gate.get("action")
            parts.append(Text(f"gate {'decided' if self.gate.get('final_decision') else 'heading'}: {heading} - "
                              f"{self.gate.get('reason')}", style="bold"))
        if self.transitions:
            tl = Table(title="transitions", title_justify="left", show_header=False, box=None)
            tl.add_column(justify="right"); tl.add_column(); tl.add_column()
            for x in self.transitions[-10:]:
                tl.add_row(str(x.get("seq")), f"{x.get('from')} -> {x.get('to')}",
                           x.get("reason") or transition_reason(x.get("to", ""), x.get("trigger", ""), x.get("detail")))
            parts.append(tl)
        if self.ended:
            e = self.ended
            parts.append(Text(f"decision: {e.get('outcome')}" + (f" (gate: {e.get('gate')})" if e.get("gate") else "")
                              + (f" - {e.get('error')}" if e.get("error") else "")
                              + f"; live version {short(e.get('version_id'), 16)}", style="bold"))
            parts.append(Text(f"vvtv-autopilot report {self.cycle_id}  for the full canary report", style="dim"))
        if self.note:
            parts.append(Text(self.note, style="dim"))
        return Panel(Group(*parts), title="vvtv-autopilot watch", subtitle=f"card {short(s.get('card_version'), 12)}")


async def watch(config: Config, *, interval: float = 1.0, follow: bool = False, record: Path | None = None,
                timeout: float = 10.0, inbox_prefix: str = "_INBOX", max_seconds: float | None = None) -> int:
    url, source = bus_url(config)
    if url is None:
        raise BusError(f"no NATS URL: {source}; pass --nats-url, set NATS_URL, or --data-dir of a running service")

    async def _quiet(exc: Exception) -> None:
        pass

    try:
        nc = await asyncio.wait_for(connect(url, connect_timeout=min(timeout, 5.0), allow_reconnect=True,
                                            inbox_prefix=inbox_prefix, name="vvtv-autopilot-watch", error_cb=_quiet),
                                    timeout=timeout)
    except asyncio.TimeoutError:
        raise BusError(f"cannot reach NATS at {redact(url)} within {timeout}s") from None
    view = View()
    prefix = f"{config.bus.prefix}.autopilot"
    changed = asyncio.Event()

    async def on_transition(msg) -> None:
        view.on_transition(json.loads(msg.data)); changed.set()

    async def on_cycle(msg) -> None:
        view.on_cycle(json.loads(msg.data)); changed.set()

    await nc.subscribe(f"{prefix}.evt.transition", cb=on_transition)
    await nc.subscribe(f"{prefix}.evt.cycle", cb=on_cycle)
    # A terminal: its own width; a pipe or a file: wide enough for the KPI table.
    console = Console(width=None if sys.stdout.isatty() else 150)
    started = time.monotonic()
    code = 0
    try:
        with Live(view.render(), console=console, refresh_per_second=4, transient=False) as live:
            while True:
                try:
                    msg = await nc.request(f"{prefix}.ctl.status", b"{}", timeout=timeout)
                    view.on_status(json.loads(msg.data))
                except Exception as exc:  # noqa: BLE001 - shown, and retried at the next tick
                    view.note = f"status: no answer ({type(exc).__name__}); retrying"
                if view.cycle_id is not None and view.backfilled != view.cycle_id:
                    view.backfilled = view.cycle_id
                    try:  # what happened before the watch started
                        msg = await nc.request(f"{prefix}.ctl.report", json.dumps({"cycle_id": view.cycle_id}).encode(),
                                               timeout=timeout)
                        view.backfill((json.loads(msg.data).get("data") or {}).get("timeline") or [])
                    except Exception:  # noqa: BLE001 - a view only: the events still come
                        pass
                done = view.ended is not None or (
                    view.cycle_id is not None and view.status.get("cycle_id") != view.cycle_id
                    and (view.status.get("last_cycle") or {}).get("cycle_id") == view.cycle_id)
                if done and view.ended is None:  # the evt.cycle was missed: the status tells the end
                    last = view.status.get("last_cycle") or {}
                    view.ended = {"cycle_id": view.cycle_id, "outcome": last.get("outcome"), "error": last.get("error"),
                                  "version_id": view.status.get("card_version")}
                live.update(view.render())
                if done:
                    if not follow:
                        break
                    view.reset()
                if max_seconds is not None and time.monotonic() - started > max_seconds:
                    view.note = f"gave up after {max_seconds:.0f} s"
                    live.update(view.render())
                    code = 3
                    break
                changed.clear()
                try:
                    await asyncio.wait_for(changed.wait(), timeout=interval)
                except asyncio.TimeoutError:
                    pass
    finally:
        await nc.close()
        if record is not None:  # the last screen only, as text
            last = Console(record=True, width=console.width, file=io.StringIO())
            last.print(view.render())
            record.write_text(last.export_text())
    return code
