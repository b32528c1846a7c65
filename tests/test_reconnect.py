"""The service rides out a restart of its NATS server (same port, same store)."""

from __future__ import annotations

import socket
from pathlib import Path

import nats

from conftest import ctl, make_config, wait_for
from vvtv_autopilot.infra.natsserver import EmbeddedNats
from vvtv_autopilot.infra.service import Service
from vvtv_autopilot.infra.simulator import SimulatedVVTV


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_a_cycle_runs_after_the_server_restarted(tmp_path: Path):
    port = _free_port()
    server = EmbeddedNats(tmp_path / "nats", port=port)
    await server.start()
    service = Service(make_config(tmp_path, server.url))
    await service.start()
    nc = None
    try:
        server.stop()
        await wait_for(lambda: not service.nc.is_connected, what="the service to notice the server is gone")
        server = EmbeddedNats(tmp_path / "nats", port=port)
        await server.start()
        await wait_for(lambda: service.nc.is_connected, what="the service to reconnect")
        nc = await nats.connect(server.url)
        sim = SimulatedVVTV(nc)
        sim.live = {"selection.diversity_weight": 0.35}
        await sim.start(tick=0.1)
        reply = await wait_for(lambda: _propose(nc), what="the service to answer after the restart")
        assert reply["ok"], reply

        async def ended():
            status = await ctl(nc, "status", {})
            return status["last_cycle"] and status["last_cycle"]["cycle_id"] == reply["cycle_id"] and status

        status = await wait_for(ended, what="the cycle to end")
        assert status["last_cycle"]["outcome"] in ("Deployed", "RolledBack")
        records = await service.store.transitions(reply["cycle_id"])
        assert [r.to for r in records][:4] == ["Analyzing", "Bounded", "Validated", "Canary"]
        await sim.stop()
    finally:
        await service.stop()
        if nc is not None:
            await nc.close()
        server.stop()


async def _propose(nc):
    try:
        return await ctl(nc, "propose", {"actor": "test", "changes": {"selection.diversity_weight": 0.45}})
    except Exception:
        return None
