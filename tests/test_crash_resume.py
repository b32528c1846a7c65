"""SIGKILL of the service subprocess in the middle of a canary, then restart.

The nats-server (the test's) and the simulated VVTV (in the test process)
live on; only the autopilot dies. After restart the cycle must finish once,
with a transition log that has no gap and no duplicate, and a whole card.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import nats

from conftest import WAIT, wait_for
from vvtv_autopilot.infra.store import Store
from vvtv_autopilot.infra.simulator import SimulatedVVTV


def _start(config: Path, url: str, log: Path) -> subprocess.Popen:
    out = open(log, "ab")
    try:
        return subprocess.Popen([sys.executable, "-m", "vvtv_autopilot.infra.cli", "run", "--config", str(config),
                                 "--nats-url", url], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    finally:
        out.close()


async def _status(nc) -> dict | None:
    try:
        msg = await nc.request("vvtv.autopilot.ctl.status", b"{}", timeout=2)
        return json.loads(msg.data)
    except Exception:
        return None


async def _stream_count(js, subject: str, cycle_id: str) -> int:
    sub = await js.subscribe(subject, ordered_consumer=True)
    count = 0
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=2)
            except Exception:
                break
            if json.loads(msg.data).get("cycle_id") == cycle_id:
                count += 1
    finally:
        await sub.unsubscribe()
    return count


async def test_sigkill_during_canary_then_restart_finishes_the_cycle_once(tmp_path: Path, nats_server):
    data = tmp_path / "data"
    config = tmp_path / "autopilot.yaml"
    config.write_text(
        "autopilot:\n  canary_duration_minutes: 0.2\n  check_interval_minutes: 0.05\n  min_samples_per_arm: 30\n"
        "  sliding_bounds: {initial_half_width_fraction: 0.5}\n"
        f"storage:\n  data_dir: {data}\n"
        "kpis:\n  selection_entropy: {direction: increase}\n  error_rate: {direction: decrease, critical: true, margin: 0.1}\n")
    log = tmp_path / "service.log"
    nc = await nats.connect(nats_server.url)
    sim = SimulatedVVTV(nc)
    sim.live = {"selection.diversity_weight": 0.35}   # the mid-range card the service writes on first start
    await sim.start(tick=0.1)
    proc = _start(config, nats_server.url, log)
    try:
        await wait_for(lambda: _status(nc), what="the service to answer status")
        msg = await nc.request("vvtv.autopilot.ctl.propose", json.dumps(
            {"actor": "test", "changes": {"selection.diversity_weight": 0.45}}).encode(), timeout=WAIT)
        cycle_id = json.loads(msg.data)["cycle_id"]

        async def in_canary():
            status = await _status(nc)
            return status and status["state"] == "Canary" and status["cycle"]["samples"]["canary"]

        await wait_for(in_canary, what="the canary to collect samples")
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
        card_during = (data / "business_logic.json").read_bytes()
        json.loads(card_during)  # whole

        proc = _start(config, nats_server.url, log)

        async def ended():
            status = await _status(nc)
            return status and status["state"] == "Idle" and status["last_cycle"] and status["last_cycle"]["cycle_id"] == cycle_id

        await wait_for(ended, what="the cycle to end after restart")
        js = nc.jetstream()
        await wait_for(lambda: _stream_count(js, "vvtv.autopilot.evt.cycle", cycle_id), what="evt.cycle in its stream")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        await sim.stop()

    store = await Store.open(data / "autopilot.db")
    try:
        records = await store.transitions(cycle_id)
        rows = await store.cycles()
    finally:
        await store.close()
    assert [r.seq for r in records] == list(range(1, len(records) + 1)), "no gap, no duplicate"
    assert [r.to for r in records][:5] == ["Analyzing", "Bounded", "Validated", "Canary", "Gated"]
    assert [r.to for r in records].count("Gated") == 1 and records[-1].to in ("Deployed", "RolledBack")
    assert [row["cycle_id"] for row in rows].count(cycle_id) == 1
    card = json.loads((data / "business_logic.json").read_bytes())
    expected = 0.45 if records[-1].to == "Deployed" else 0.35
    assert card["selection"]["diversity_weight"] == expected
    assert await _stream_count(js, "vvtv.autopilot.evt.cycle", cycle_id) == 1
    published = await _stream_count(js, "vvtv.autopilot.evt.transition", cycle_id)
    assert published == len(records)
    await nc.close()
