"""Takeover and canary resumption after SIGKILL of the leader (README, "Deployment: replicas").

    python bench/bench_takeover.py [--kills 20] [--ttl 4] [--renew 0.5] [--nodes 3]

A JetStream cluster of ``--nodes`` real nats-server processes on loopback
(R = nodes), two ``vvtv-autopilot run`` replicas with their own data dirs, a
simulated VVTV publishing metrics, and one long canary. Each round SIGKILLs the
leader and measures, from the kill:

* takeover: until the standby answers ``ctl.status`` as leader with a new epoch;
* resumption: until that leader has judged the canary (its ``last_gate_look``
  at the new epoch: the check it runs right after taking over);

then restarts the killed replica (same data dir) and waits until it stands by,
caught up, before the next round. Prints every round, then median and worst.
Figures, not assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nats

from vvtv_autopilot.infra.cluster import NatsCluster, statuses
from vvtv_autopilot.infra.simulator import SimulatedVVTV

PREFIX = "vvtv"


async def until(predicate, timeout: float, what: str, poll: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(poll)
    raise SystemExit(f"timed out after {timeout}s waiting for {what}")


def start_replica(root: Path, name: str, config: Path, url: str) -> subprocess.Popen:
    log = open(root / f"{name}.log", "ab")
    try:
        return subprocess.Popen([sys.executable, "-m", "vvtv_autopilot.infra.cli", "run", "--config", str(config),
                                 "--nats-url", url, "--data-dir", str(root / name)],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    finally:
        log.close()


async def main(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-takeover-"))
    cluster = NatsCluster(root / "cluster", nodes=args.nodes)
    await cluster.start()
    config = root / "autopilot.yaml"
    config.write_text(json.dumps({
        "autopilot": {"canary_duration_minutes": 120, "check_interval_minutes": 0.05, "min_samples_per_arm": 30,
                      "sliding_bounds": {"initial_half_width_fraction": 0.5}},
        "bus": {"stream_replicas": args.nodes, "lease_ttl_seconds": args.ttl, "lease_renew_seconds": args.renew},
        "kpis": {"selection_entropy": {"direction": "increase"},
                 "error_rate": {"direction": "decrease", "critical": True, "margin": 5}},
    }))
    procs: dict[str, subprocess.Popen] = {}
    nc = await nats.connect(cluster.url.split(","))
    sim = SimulatedVVTV(nc, prefix=PREFIX)
    sim.live = {"selection.diversity_weight": 0.35}
    rounds: list[tuple[float, float]] = []
    try:
        procs["a"] = start_replica(root, "a", config, cluster.url)
        await until(lambda: _leader(nc, 1), 60, "a to lead")
        procs["b"] = start_replica(root, "b", config, cluster.url)
        await until(lambda: _settled(nc), 60, "b to stand by")
        await sim.start(tick=0.1)
        msg = await nc.request(f"{PREFIX}.autopilot.ctl.propose", json.dumps(
            {"actor": "bench", "changes": {"selection.diversity_weight": 0.351}}).encode(), timeout=30)
        cycle_id = json.loads(msg.data)["cycle_id"]
        await until(lambda: _canary(nc), 60, "the canary to collect samples")
        for k in range(args.kills):
            leader = await until(lambda: _leader(nc, 2), 60, "a leader")
            name = next(n for n in procs if (root / n / "instance_id").read_text().strip() == leader["instance"])
            procs[name].send_signal(signal.SIGKILL)
            killed = time.monotonic()
            procs[name].wait(timeout=30)
            new = await until(lambda: _leader(nc, 1, newer_than=leader["epoch"]), 120, "a takeover", poll=0.02)
            takeover = time.monotonic() - killed
            await until(lambda: _looked(nc, new["epoch"]), 120, "the canary to be judged", poll=0.02)
            resumed = time.monotonic() - killed
            rounds.append((takeover, resumed))
            print(f"kill {k + 1:2d}: takeover {takeover:6.2f} s   canary judged again {resumed:6.2f} s   "
                  f"(epoch {leader['epoch']} -> {new['epoch']})", flush=True)
            procs[name] = start_replica(root, name, config, cluster.url)
            await until(lambda: _settled(nc), 120, "the restarted replica to stand by, caught up")
            status = await _leader(nc, 2)
            if status is None or status.get("cycle_id") != cycle_id or status["state"] != "Canary":
                raise SystemExit(f"the canary is no longer running: {status and status.get('state')}")
    finally:
        await sim.stop()
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)
        await nc.close()
        cluster.stop()
    if rounds:
        takeovers, resumes = [r[0] for r in rounds], [r[1] for r in rounds]
        print()
        print(f"command: {' '.join(shlex.quote(a) for a in [Path(sys.argv[0]).as_posix(), *sys.argv[1:]])}")
        print(f"{len(rounds)} SIGKILLs of the leader, {args.nodes}-node cluster (R{args.nodes}), "
              f"lease TTL {args.ttl} s, renewed every {args.renew} s")
        print(f"takeover (kill -> new leader answers):       median {statistics.median(takeovers):.2f} s, "
              f"worst {max(takeovers):.2f} s")
        print(f"canary judged again (kill -> gate look):     median {statistics.median(resumes):.2f} s, "
              f"worst {max(resumes):.2f} s")


async def _leader(nc, expect: int, newer_than: int | None = None) -> dict | None:
    for s in await statuses(nc, PREFIX, expect, timeout=1.0):
        if s.get("role") == "leader" and (newer_than is None or (s.get("epoch") or 0) > newer_than):
            return s
    return None


async def _settled(nc) -> bool:
    got = await statuses(nc, PREFIX, 2, timeout=1.0)
    seqs = [s["replication"]["journal_seq"] for s in got]
    return len(got) == 2 and sorted(s["role"] for s in got) == ["leader", "standby"] and max(seqs) - min(seqs) <= 20


async def _canary(nc) -> dict | None:
    s = await _leader(nc, 2)
    return s if s and s["state"] == "Canary" and s["cycle"]["samples"]["canary"] else None


async def _looked(nc, epoch: int) -> bool:
    s = await _leader(nc, 1)
    look = s and s["replication"].get("last_gate_look")
    return bool(look and look.get("epoch") == epoch)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--ttl", type=float, default=4.0, help="bus.lease_ttl_seconds")
    p.add_argument("--renew", type=float, default=0.5, help="bus.lease_renew_seconds")
    p.add_argument("--nodes", type=int, default=3)
    asyncio.run(main(p.parse_args()))
