"""A simulated VVTV for the demo and the tests: a real NATS client that
answers ``business_logic.apply`` and ``golden.validate`` and publishes
metrics from a response surface over the tunable parameters.

While a canary runs it publishes ``control`` and ``canary`` batches in the
configured split (the canary's tagged with its version id); it always
publishes ``live`` batches from the live parameters.
"""

from __future__ import annotations

import asyncio
import math
from datetime import datetime, timezone
from typing import Any, Callable

import msgspec
import numpy as np

from ..schemas.messages import rfc3339
from .bus import barrier

Surface = Callable[[dict[str, float]], dict[str, tuple[float, float]]]


def default_surface(params: dict[str, float]) -> dict[str, tuple[float, float]]:
    """KPI -> (mean, std) for the demo: entropy peaks at diversity 0.45; the
    error rate climbs once diversity passes 0.5."""
    w = float(params.get("selection.diversity_weight", 0.35))
    entropy = 2.0 + 1.2 * w - 1.5 * (w - 0.45) ** 2
    error = 0.010 + 0.08 * max(0.0, w - 0.5)
    return {"selection_entropy": (entropy, 0.25), "error_rate": (error, 0.004)}


class SimulatedVVTV:
    def __init__(self, nc, *, prefix: str = "vvtv", surface: Surface = default_surface, seed: int = 7,
                 batch: int = 200, canary_share: float = 0.2, golden: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                 apply_ok: bool = True):
        self.nc = nc
        self.js = nc.jetstream()
        self.prefix = prefix
        self.surface = surface
        self.rng = np.random.default_rng(seed)
        self.batch = batch
        self.canary_share = canary_share
        self.golden = golden or (lambda req: {"passed": True, "cases_run": 1, "failures": []})
        self.apply_ok = apply_ok
        self.live: dict[str, float] = {}
        self.canary: dict[str, float] | None = None
        self.canary_version: str | None = None
        self.applied: dict[str, dict[str, Any]] = {}    # effect_id -> request (idempotency)
        self.apply_log: list[dict[str, Any]] = []
        self.golden_log: list[dict[str, Any]] = []
        self._subs: list[Any] = []
        self._task: asyncio.Task | None = None
        self.published = 0
        self.publish_errors = 0
        self._stopping = False

    async def start(self, tick: float = 0.25) -> None:
        self._subs.append(await self.nc.subscribe(f"{self.prefix}.business_logic.apply", cb=self._on_apply))
        self._subs.append(await self.nc.subscribe(f"{self.prefix}.golden.validate", cb=self._on_golden))
        await barrier(self.nc)  # start() returned => the autopilot's requests find their responders
        self._task = asyncio.create_task(self._publish_loop(tick))

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            # nats-py may turn a cancellation inside a request into its own
            # timeout error; the flag ends the loop all the same, and the wait is bounded.
            await asyncio.wait([self._task], timeout=10)
        subs, self._subs = self._subs, []   # a second stop does nothing
        for sub in subs:
            await sub.unsubscribe()

    async def _on_apply(self, msg) -> None:
        req = msgspec.json.decode(msg.data)
        self.apply_log.append(req)
        if not self.apply_ok:
            await msg.respond(msgspec.json.encode({"applied": False, "version_id": req.get("version_id"),
                                                   "arm": req.get("arm"), "error": "simulated refusal"}))
            return
        if req["effect_id"] not in self.applied:  # apply one id once
            self.applied[req["effect_id"]] = req
            params = {k: float(v) for k, v in req["parameters"].items()}
            if req["arm"] == "live":
                self.live = params
                self.canary, self.canary_version = None, None
            elif params == self.live:  # the canary arm put back on the live version
                self.canary, self.canary_version = None, None
            else:
                self.canary, self.canary_version = params, req["version_id"]
        await msg.respond(msgspec.json.encode({"applied": True, "version_id": req["version_id"], "arm": req["arm"], "error": None}))

    async def _on_golden(self, msg) -> None:
        req = msgspec.json.decode(msg.data)
        self.golden_log.append(req)
        await msg.respond(msgspec.json.encode(self.golden(req)))

    def _draw(self, params: dict[str, float], n: int) -> dict[str, list[float]]:
        out = {}
        for kpi, (mean, std) in self.surface(params).items():
            values = self.rng.normal(mean, std, n)
            out[kpi] = [float(v) for v in values]
        return out

    async def publish(self, kpi: str, arm: str, values: list[float], version_id: str | None = None) -> None:
        now = rfc3339(datetime.now(timezone.utc))
        body = {"kpi": kpi, "arm": arm, "version_id": version_id, "window_start": now, "window_end": now, "values": values}
        await self.js.publish(f"{self.prefix}.metrics.{kpi}", msgspec.json.encode(body))
        self.published += 1

    async def _publish_loop(self, tick: float) -> None:
        while not self._stopping:
            try:
                await self._publish_tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # streams not created yet, server restarting: try again next tick
                self.publish_errors += 1
            await asyncio.sleep(tick)

    async def _publish_tick(self) -> None:
        if not self.live:
            return
        for kpi, values in self._draw(self.live, self.batch).items():
            await self.publish(kpi, "live", values)
        if self.canary is not None:
            n_canary = max(1, int(round(self.batch * self.canary_share)))
            n_control = max(1, int(round(self.batch * (1 - self.canary_share))))
            for kpi, values in self._draw(self.live, n_control).items():
                await self.publish(kpi, "control", values)
            for kpi, values in self._draw(self.canary, n_canary).items():
                await self.publish(kpi, "canary", values, self.canary_version)


def expected_gain(surface: Surface, before: dict[str, float], after: dict[str, float], kpi: str) -> float:
    a, b = surface(before)[kpi][0], surface(after)[kpi][0]
    return (b - a) / abs(a) if a else math.inf
