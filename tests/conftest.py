"""Shared fixtures: a real nats-server per test, real SQLite under tmp_path,
the autopilot service, a simulated VVTV, and waiting for events (never sleeping).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import nats
import pytest
from hypothesis import settings

# Property tests explore at random while developing; CI replays a fixed,
# derandomized set so that a red build is reproducible.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

from vvtv_autopilot.infra.bus import barrier
from vvtv_autopilot.infra.natsserver import EmbeddedNats
from vvtv_autopilot.infra.service import Service
from vvtv_autopilot.infra.simulator import SimulatedVVTV
from vvtv_autopilot.schemas.config import Config, parse_config

WAIT = 60.0  # generous: two shared cores, other tests running


async def wait_for(predicate: Callable[[], Any], timeout: float = WAIT, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def make_config(tmp_path: Path, url: str | None, golden: dict[str, Any] | None = None, *,
                bus: dict[str, Any] | None = None, **autopilot: Any) -> Config:
    tree = {
        "autopilot": {"canary_duration_minutes": 0.1, "check_interval_minutes": 0.025, "min_samples_per_arm": 30,
                      "apply_timeout_seconds": 10, "sliding_bounds": {"initial_half_width_fraction": 0.5},
                      **autopilot},
        "bus": {"url": url, **(bus or {})},
        "storage": {"data_dir": str(tmp_path / "data")},
        "golden": {"timeout_seconds": 10, **(golden or {})},
        "kpis": {"selection_entropy": {"direction": "increase", "weight": 1.0},
                 "error_rate": {"direction": "decrease", "critical": True, "margin": 0.1}},
    }
    return parse_config(tree)


@pytest.fixture
async def nats_server(tmp_path: Path):
    server = EmbeddedNats(tmp_path / "nats")
    await server.start()
    yield server
    server.stop()


@pytest.fixture
async def client(nats_server: EmbeddedNats):
    nc = await nats.connect(nats_server.url)
    yield nc
    await asyncio.wait_for(nc.close(), timeout=10)


class Events:
    """Collects the autopilot's events (core subscription on evt.> and dlq)."""

    def __init__(self) -> None:
        self.items: list[tuple[str, dict[str, Any]]] = []

    async def attach(self, nc, prefix: str = "vvtv") -> None:
        async def on(msg):
            self.items.append((msg.subject, json.loads(msg.data)))

        await nc.subscribe(f"{prefix}.autopilot.evt.>", cb=on)
        await nc.subscribe(f"{prefix}.autopilot.dlq", cb=on)
        await barrier(nc, WAIT)  # the server has both SUBs before any test publishes

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [body for subject, body in self.items if subject.endswith("." + kind) or subject.endswith(kind)]

    def cycle_end(self, cycle_id: str) -> dict[str, Any] | None:
        return next((b for b in self.of("evt.cycle") if b["cycle_id"] == cycle_id), None)


@pytest.fixture
async def events(client) -> Events:
    ev = Events()
    await ev.attach(client)
    return ev


@pytest.fixture
async def service_factory(tmp_path: Path, nats_server: EmbeddedNats):
    started: list[Service] = []

    async def make(golden: dict[str, Any] | None = None, **autopilot: Any) -> Service:
        svc = Service(make_config(tmp_path, nats_server.url, golden, **autopilot))
        await svc.start()
        started.append(svc)
        return svc

    yield make
    for svc in started:
        await svc.stop()


@pytest.fixture
async def vvtv(client):
    sims: list[SimulatedVVTV] = []

    async def make(service: Service | None = None, **kwargs: Any) -> SimulatedVVTV:
        sim = SimulatedVVTV(client, **kwargs)
        if service is not None:
            from vvtv_autopilot.handlers.card import parameter_values

            sim.live = {k: float(v) for k, v in parameter_values(service.core.state.card, list(service.config.parameters)).items()}
        await sim.start(tick=0.1)
        sims.append(sim)
        return sim

    yield make
    for sim in sims:
        await sim.stop()


async def ctl(nc, verb: str, body: dict[str, Any] | bytes, prefix: str = "vvtv") -> dict[str, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    msg = await nc.request(f"{prefix}.autopilot.ctl.{verb}", data, timeout=WAIT)
    return json.loads(msg.data)
