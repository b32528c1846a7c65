"""High availability (README, "Deployment: replicas"): one leader by lease, warm
standbys tailing the journal, fenced writes, no shared disk.

Real servers only: a three-node JetStream cluster on loopback (each node with
its own store) shared by the module, and real `vvtv-autopilot run` subprocesses
(or in-process services) with their own data dirs. Each test has its own bus
prefix and stream names, so they do not see each other on the shared cluster.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import nats
import pytest

from conftest import WAIT, make_config, wait_for
from vvtv_autopilot.infra.cluster import NatsCluster, statuses, stream_replicas_current
from vvtv_autopilot.infra.journal import Journal, LeaderEntry, StepsEntry, decode_entry
from vvtv_autopilot.infra.leader import Lease, Replication
from vvtv_autopilot.infra.natsserver import EmbeddedNats
from vvtv_autopilot.infra.service import Service
from vvtv_autopilot.infra.simulator import SimulatedVVTV
from vvtv_autopilot.infra.store import Store
from vvtv_autopilot.schemas.config import parse_config
from vvtv_autopilot.schemas.errors import Fenced
from vvtv_autopilot.statemachine.replay import replay_cycle, verify

TTL, RENEW = 4.0, 0.5
_counter = iter(range(1, 1000))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = NatsCluster(tmp_path_factory.mktemp("cluster"))
    asyncio.run(c.start())
    yield c
    c.stop()


def _bus(prefix: str, url: str | None, replicas: int = 3, **extra: Any) -> dict[str, Any]:
    suffix = prefix.upper()
    names = ("metrics", "alerts", "commands", "events", "timers", "dlq", "journal", "lease", "snapshots")
    return {"url": url, "prefix": prefix, "stream_replicas": replicas, "lease_ttl_seconds": TTL,
            "lease_renew_seconds": RENEW, "streams": {n: f"{suffix}_{n.upper()}" for n in names}, **extra}


def _yaml(bus: dict[str, Any], canary_minutes: float = 0.5) -> str:
    return json.dumps({  # JSON is YAML
        "autopilot": {"canary_duration_minutes": canary_minutes, "check_interval_minutes": 0.05,
                      "min_samples_per_arm": 30, "apply_timeout_seconds": 10,
                      "sliding_bounds": {"initial_half_width_fraction": 0.5}},
        "bus": {k: v for k, v in bus.items() if k != "url"},
        "golden": {"timeout_seconds": 10},
        "kpis": {"selection_entropy": {"direction": "increase"},
                 "error_rate": {"direction": "decrease", "critical": True, "margin": 0.1}},
    })


class Replica:
    """A `vvtv-autopilot run` subprocess with its own data dir."""

    def __init__(self, root: Path, name: str, config: Path, url: str):
        self.data = root / name
        self.config, self.url, self.log = config, url, root / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Replica":
        out = open(self.log, "ab")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "vvtv_autopilot.infra.cli", "run", "--config", str(self.config),
                 "--nats-url", self.url, "--data-dir", str(self.data)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            out.close()
        return self

    @property
    def instance(self) -> str:
        return (self.data / "instance_id").read_text().strip()

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)


async def leader_of(nc, prefix: str, expect: int, not_instance: str | None = None) -> dict[str, Any] | None:
    for s in await statuses(nc, prefix, expect):
        if s.get("role") == "leader" and s.get("instance") != not_instance:
            return s
    return None


class ApplySpy:
    """Every apply request VVTV receives (the simulator answers; this only listens)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    async def attach(self, nc, prefix: str) -> None:
        async def on(msg):
            self.requests.append(json.loads(msg.data))

        await nc.subscribe(f"{prefix}.business_logic.apply", cb=on)
        await nc.flush()
        await nc.flush()

    def ids(self, cycle_id: str, purpose: str) -> set[str]:
        return {r["effect_id"] for r in self.requests if r["cycle_id"] == cycle_id and r["effect_id"].endswith(":" + purpose)}


async def _stream_records(js, subject: str) -> list[dict[str, Any]]:
    sub = await js.subscribe(subject, ordered_consumer=True)
    out = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=2)
            except Exception:
                break
            out.append(json.loads(msg.data))
    finally:
        await sub.unsubscribe()
    return out


async def _journal(js, stream: str) -> list[tuple[int, Any]]:
    info = await js.stream_info(stream)
    return [(seq, decode_entry((await js.get_msg(stream, seq)).data))
            for seq in range(info.state.first_seq, info.state.last_seq + 1)]


async def _check_cycle(js, prefix: str, cycle_id: str, data_dirs: list[Path], config) -> list[str]:
    """The transition log is contiguous with one end, published once per seq, and every
    replica's store holds the same log and replays it exactly."""
    logs = []
    for data in data_dirs:
        store = await Store.open(data / "autopilot.db")
        try:
            records = await store.transitions(cycle_id)
            start = await store.cycle_start(cycle_id)
            inbounds = await store.inbox_from(start.inbox_key)
        finally:
            await store.close()
        assert [r.seq for r in records] == list(range(1, len(records) + 1)), f"{data.name}: a gap or a duplicate"
        ends = [r for r in records if r.to in ("Deployed", "RolledBack", "Failed", "NoChange", "Aborted")]
        assert len(ends) == 1 and records[-1] is ends[0], f"{data.name}: {[r.to for r in records]}"
        verify(records, replay_cycle(config, start.state_before, inbounds, cycle_id), cycle_id)
        logs.append([(r.seq, r.from_, r.to, r.trigger, r.at) for r in records])
    assert all(log == logs[0] for log in logs), "replicas differ"
    published = [t for t in await _stream_records(js, f"{prefix}.autopilot.evt.transition") if t["cycle_id"] == cycle_id]
    assert sorted(t["seq"] for t in published) == [s for s, *_ in logs[0]], "each transition published once"
    return [to for _, _, to, _, _ in logs[0]]


async def _propose(nc, prefix: str, value: float = 0.45) -> dict[str, Any]:
    msg = await nc.request(f"{prefix}.autopilot.ctl.propose", json.dumps(
        {"actor": "test", "changes": {"selection.diversity_weight": value}}).encode(), timeout=WAIT)
    return json.loads(msg.data)


async def _in_canary(nc, prefix: str, expect: int):
    leader = await leader_of(nc, prefix, expect)
    return leader if leader and leader["state"] == "Canary" and leader["cycle"]["samples"]["canary"] else None


# --- the lease and the fence, on their own -------------------------------------------------------

async def test_the_lease_has_one_holder_expires_and_the_journal_fences_a_deposed_leader(cluster, tmp_path):
    prefix = f"t{next(_counter)}"
    config = parse_config({"bus": _bus(prefix, cluster.url, lease_ttl_seconds=2.0, lease_renew_seconds=0.5),
                           "storage": {"data_dir": str(tmp_path)}})
    nc = await nats.connect(cluster.url.split(","))
    try:
        js = nc.jetstream(timeout=5)
        a, b = Lease(js, config, "a"), Lease(js, config, "b")
        await a.ensure()
        await b.ensure()
        epoch_a = await a.try_acquire()
        assert epoch_a and await b.try_acquire() is None and b.holder == "a"
        await a.renew()                                  # compare-and-set on its revision
        journal = Journal(js, config)
        from vvtv_autopilot.infra.bus import ensure_streams
        await ensure_streams(js, config)
        seq_a = await journal.append(LeaderEntry(epoch_a, "a", "2026-01-01T00:00:00Z"), 0)
        # a stops renewing (a pause): its lease expires and b takes over with a higher epoch
        epoch_b = await wait_for(b.try_acquire, timeout=WAIT, what="the lease to expire")
        assert epoch_b > epoch_a
        with pytest.raises(Exception):
            await a.renew()
        seq_b = await journal.append(LeaderEntry(epoch_b, "b", "2026-01-01T00:00:05Z"), seq_a)
        with pytest.raises(Fenced):                      # a wakes and writes late: refused
            await journal.append(StepsEntry(epoch_a, "a", []), seq_a)
        assert [type(e).__name__ for _, e in await _journal(js, config.bus.streams.journal)] == ["LeaderEntry", "LeaderEntry"]
        assert seq_b == seq_a + 1
        await b.release()
        assert await a.try_acquire() > epoch_b           # released: taken at once, not after the TTL
    finally:
        await nc.close()


def test_a_standby_is_silent_while_a_leader_holds_the_lease_and_refuses_when_none_does(tmp_path):
    config = parse_config({"bus": _bus("unit", None, replicas=1), "storage": {"data_dir": str(tmp_path)}})
    service = Service(config)
    ha = Replication(service)
    ha.lease.holder, ha.lease.holder_seen = "other-replica", time.monotonic()
    assert ha.standby_reply("Canary") is None and ha.status()["leader"] == "other-replica"
    ha.lease.holder_seen = time.monotonic() - (TTL + RENEW + 1)      # not seen for longer than a lease lives
    refusal = ha.standby_reply("Canary")
    assert refusal["ok"] is False and refusal["leader"] is None and "no leader" in refusal["error"]
    ha.lease.holder, ha.lease.holder_seen = ha.instance, time.monotonic()
    assert "taking over" in ha.standby_reply("Idle")["error"]
    assert ha.status()["role"] == "standby"


# --- two replicas on one single server ------------------------------------------------------------

async def test_two_replicas_on_one_server_run_one_cycle_without_splitting_events(tmp_path):
    server = EmbeddedNats(tmp_path / "nats")
    await server.start()
    prefix = "solo"
    services: list[Service] = []
    nc = await nats.connect(server.url)
    try:
        for name in ("a", "b"):
            cfg = make_config(tmp_path / name, server.url, bus=_bus(prefix, server.url, replicas=1),
                              canary_duration_minutes=0.2)
            svc = Service(cfg)
            await svc.start()
            services.append(svc)
        leader, standby = services
        assert leader.ha.is_leader and not standby.ha.is_leader
        replies = await statuses(nc, prefix, expect=2)
        assert sorted(r["role"] for r in replies) == ["leader", "standby"]
        assert {r["leader"] for r in replies} == {leader.ha.instance}
        spy = ApplySpy()
        await spy.attach(nc, prefix)
        sim = SimulatedVVTV(nc, prefix=prefix)
        sim.live = {"selection.diversity_weight": 0.35}
        await sim.start(tick=0.1)
        # one propose, one answer: the standby stays silent
        answers: asyncio.Queue = asyncio.Queue()

        async def on(msg):
            answers.put_nowait(json.loads(msg.data))

        inbox = nc.new_inbox()
        await nc.subscribe(inbox, cb=on)
        await nc.publish(f"{prefix}.autopilot.ctl.propose", json.dumps(
            {"actor": "test", "changes": {"selection.diversity_weight": 0.45}}).encode(), reply=inbox)
        reply = await asyncio.wait_for(answers.get(), timeout=WAIT)
        assert reply["ok"], reply
        cycle_id = reply["cycle_id"]
        await wait_for(lambda: leader.core.state.last_cycle and leader.core.state.last_cycle["cycle_id"] == cycle_id,
                       what="the cycle to end")
        await wait_for(lambda: standby.ha.applied_seq >= leader.ha.applied_seq, what="the standby to catch up")
        assert answers.empty(), "a second answer to one propose"
        await sim.stop()
        assert len(spy.ids(cycle_id, "canary")) == 1
        # the standby's core saw every event the leader did: the same samples, state and card
        assert standby.core.state.last_cycle == leader.core.state.last_cycle
        assert standby.core.state.card_version == leader.core.state.card_version
        assert standby.card.history.current_version_id() == leader.card.history.current_version_id()
        js = nc.jetstream()
        for svc in services:
            await svc.stop()
        services = []
        await _check_cycle(js, prefix, cycle_id, [tmp_path / "a" / "data", tmp_path / "b" / "data"],
                           make_config(tmp_path / "a", server.url, bus=_bus(prefix, server.url, replicas=1),
                                       canary_duration_minutes=0.2))
    finally:
        for svc in services:
            await svc.stop()
        await nc.close()
        server.stop()


# --- the cluster: SIGKILL and SIGSTOP of the leader --------------------------------------------------

@pytest.fixture
def replicas(cluster, tmp_path):
    started: list[Replica] = []
    prefix = f"t{next(_counter)}"
    bus = _bus(prefix, cluster.url)
    config = tmp_path / "autopilot.yaml"
    config.write_text(_yaml(bus))

    def make(name: str) -> Replica:
        r = Replica(tmp_path, name, config, cluster.url).start()
        started.append(r)
        return r

    make.prefix, make.bus = prefix, bus
    yield make
    for r in started:
        r.stop()


async def test_sigkill_of_the_leader_mid_canary_the_standby_takes_over_and_finishes(cluster, replicas, tmp_path):
    prefix = replicas.prefix
    nc = await nats.connect(cluster.url.split(","))
    sim = SimulatedVVTV(nc, prefix=prefix)
    sim.live = {"selection.diversity_weight": 0.35}
    spy = ApplySpy()
    await spy.attach(nc, prefix)
    try:
        a = replicas("a")
        await wait_for(lambda: leader_of(nc, prefix, 1), what="a to lead")
        b = replicas("b")
        await wait_for(lambda: _roles(nc, prefix, ["leader", "standby"]), what="b to stand by")
        await sim.start(tick=0.1)
        cycle_id = (await _propose(nc, prefix))["cycle_id"]
        before = await wait_for(lambda: _in_canary(nc, prefix, 2), what="the canary to collect samples")
        old = before["instance"]
        victim, survivor = (a, b) if old == a.instance else (b, a)
        killed_at = time.monotonic()
        victim.signal(signal.SIGKILL)
        victim.proc.wait(timeout=30)
        new = await wait_for(lambda: leader_of(nc, prefix, 1, not_instance=old), timeout=TTL + 20,
                             what="the standby to take over")
        took = time.monotonic() - killed_at
        assert new["instance"] == survivor.instance and new["epoch"] > before["epoch"]
        assert took < TTL + 10, f"takeover took {took:.1f}s"

        async def judged():   # the canary is judged again soon after the takeover, not after an ack_wait
            s = await leader_of(nc, prefix, 1)
            look = s and s["replication"]["last_gate_look"]
            return look and look["epoch"] == new["epoch"] and look["cycle_id"] == cycle_id

        await wait_for(judged, timeout=10, what="the new leader to judge the canary within 10 s")
        ended = await wait_for(lambda: _ended(nc, prefix, cycle_id), what="the cycle to end after the takeover")
        assert ended["last_cycle"]["outcome"] in ("Deployed", "RolledBack")
        # VVTV: one canary apply; at most one live apply per effect id; later requests carry the new epoch
        assert len(spy.ids(cycle_id, "canary")) == 1
        assert len(spy.ids(cycle_id, "live")) <= 1 and len(spy.ids(cycle_id, "live_rollback")) <= 1
        assert len(sim.applied) == len({r["effect_id"] for r in spy.requests})
        assert max(r["epoch"] for r in spy.requests) == new["epoch"]
        # the killed replica comes back as a standby and catches up
        await sim.stop()
        victim.start()
        await wait_for(lambda: _caught_up(nc, prefix, 2), what="the restarted replica to catch up")
        survivor.stop()
        victim.stop()
        outcome = await _check_cycle(nc.jetstream(), prefix, cycle_id, [a.data, b.data], _config(replicas, tmp_path))
        assert outcome[:4] == ["Analyzing", "Bounded", "Validated", "Canary"]
    finally:
        await sim.stop()
        await nc.close()


async def test_sigstop_past_the_lease_the_old_leader_is_fenced_and_stands_by(cluster, replicas, tmp_path):
    prefix = replicas.prefix
    nc = await nats.connect(cluster.url.split(","))
    sim = SimulatedVVTV(nc, prefix=prefix)
    sim.live = {"selection.diversity_weight": 0.35}
    spy = ApplySpy()
    await spy.attach(nc, prefix)
    try:
        a = replicas("a")
        await wait_for(lambda: leader_of(nc, prefix, 1), what="a to lead")
        b = replicas("b")
        await wait_for(lambda: _roles(nc, prefix, ["leader", "standby"]), what="b to stand by")
        await sim.start(tick=0.1)
        cycle_id = (await _propose(nc, prefix))["cycle_id"]
        before = await wait_for(lambda: _in_canary(nc, prefix, 2), what="the canary to collect samples")
        paused, other = (a, b) if before["instance"] == a.instance else (b, a)
        paused.signal(signal.SIGSTOP)
        new = await wait_for(lambda: leader_of(nc, prefix, 1, not_instance=before["instance"]), timeout=TTL + 20,
                             what="the standby to take over from the paused leader")
        assert new["instance"] == other.instance and new["epoch"] > before["epoch"]
        paused.signal(signal.SIGCONT)

        async def stood_down():
            for s in await statuses(nc, prefix, 2):
                if s["instance"] == paused.instance and s["role"] == "standby" and s["leader"] == other.instance:
                    return s
            return None

        old = await wait_for(stood_down, what="the old leader to stand by")
        assert old["replication"]["last_step_down"]["epoch"] == before["epoch"]
        await wait_for(lambda: _ended(nc, prefix, cycle_id), what="the cycle to end")
        # nothing of the old epoch after the new leader's marker: its late writes were refused
        entries = await _journal(nc.jetstream(), replicas.bus["streams"]["journal"])
        marker = next(seq for seq, e in entries if isinstance(e, LeaderEntry) and e.epoch == new["epoch"])
        assert all(e.epoch == new["epoch"] for seq, e in entries if seq > marker)
        assert len(spy.ids(cycle_id, "canary")) == 1 and len(spy.ids(cycle_id, "live")) <= 1
        await sim.stop()
        await wait_for(lambda: _caught_up(nc, prefix, 2), what="the old leader to replay the new one's journal")
        a.stop()
        b.stop()
        await _check_cycle(nc.jetstream(), prefix, cycle_id, [a.data, b.data], _config(replicas, tmp_path))
    finally:
        await sim.stop()
        await nc.close()


# --- the cluster: a NATS node dies; a rolling update -------------------------------------------------

async def test_a_nats_node_killed_mid_canary_the_cycle_completes_and_the_node_catches_up(cluster, tmp_path):
    prefix = f"t{next(_counter)}"
    bus = _bus(prefix, cluster.url)
    services: list[Service] = []
    nc = await nats.connect(cluster.node_url(2))   # the test's own client stays on n2
    sim = SimulatedVVTV(nc, prefix=prefix)
    sim.live = {"selection.diversity_weight": 0.35}
    try:
        for name in ("a", "b"):
            svc = Service(make_config(tmp_path / name, cluster.url, bus=bus, canary_duration_minutes=0.4))
            await svc.start()
            services.append(svc)
        spy = ApplySpy()
        await spy.attach(nc, prefix)
        await sim.start(tick=0.1)
        cycle_id = (await _propose(nc, prefix))["cycle_id"]
        await wait_for(lambda: _in_canary(nc, prefix, 2), what="the canary to collect samples")
        # kill the node the leader is connected to (n0 or n1: never the test's n2)
        leader = next(s for s in services if s.ha.is_leader)
        port = int(str(leader.nc.connected_url.port)) if leader.nc.connected_url else cluster.client_ports[0]
        victim = cluster.client_ports.index(port) if port in cluster.client_ports[:2] else 0
        cluster.kill(victim)
        await wait_for(lambda: _ended(nc, prefix, cycle_id), what="the cycle to end with a node down")
        assert len(spy.ids(cycle_id, "canary")) == 1 and len(spy.ids(cycle_id, "live")) <= 1
        await cluster.restart(victim)

        async def node_current():
            replicas = await stream_replicas_current(nc, bus["streams"]["journal"])
            node = replicas.get(f"n{victim}")
            return node is not None and node["current"] and not node.get("offline") and node["lag"] == 0

        await wait_for(node_current, what=f"n{victim} to catch up the journal")
        await sim.stop()
        standby = next(s for s in services if not s.ha.is_leader)
        await wait_for(lambda: standby.ha.applied_seq >= max(s.ha.applied_seq for s in services),
                       what="the standby to catch up")
        for svc in services:
            await svc.stop()
        services = []
        await _check_cycle(nc.jetstream(), prefix, cycle_id, [tmp_path / "a" / "data", tmp_path / "b" / "data"],
                           make_config(tmp_path / "a", cluster.url, bus=bus, canary_duration_minutes=0.4))
    finally:
        await sim.stop()
        for svc in services:
            await svc.stop()
        await nc.close()


async def test_a_rolling_update_during_a_canary_has_no_gap_and_no_double_action(cluster, tmp_path):
    prefix = f"t{next(_counter)}"
    bus = _bus(prefix, cluster.url, snapshot_every_entries=20)
    nc = await nats.connect(cluster.url.split(","))
    sim = SimulatedVVTV(nc, prefix=prefix)
    sim.live = {"selection.diversity_weight": 0.35}
    old = Service(make_config(tmp_path / "old", cluster.url, bus=bus, canary_duration_minutes=0.4))
    new = Service(make_config(tmp_path / "new", cluster.url, bus=bus, canary_duration_minutes=0.4))
    try:
        await old.start()
        spy = ApplySpy()
        await spy.attach(nc, prefix)
        await sim.start(tick=0.1)
        cycle_id = (await _propose(nc, prefix))["cycle_id"]
        await wait_for(lambda: _in_canary(nc, prefix, 1), what="the canary to collect samples")
        await wait_for(lambda: old.ha._snapshot_seq > 0, what="a snapshot")
        await new.start()                                   # a new replica joins: from the snapshot, then the journal
        assert new.ha.restored_snapshot and not new.ha.is_leader
        await wait_for(lambda: new.ha.applied_seq >= old.ha.applied_seq - 2, what="the new replica to catch up")
        await old.stop()                                    # the old one leaves: its lease is released at once
        await wait_for(lambda: new.ha.is_leader, timeout=TTL + 20, what="the new replica to lead")
        await wait_for(lambda: new.core.state.last_cycle and new.core.state.last_cycle["cycle_id"] == cycle_id,
                       what="the cycle to end under the new leader")

        async def ended_in_store():   # the core's state changes before its transaction commits
            records = await new.store.transitions(cycle_id)
            return bool(records) and records[-1].to in ("Deployed", "RolledBack", "Failed")

        await wait_for(ended_in_store, what="the cycle's end committed in the new leader's store")
        assert len(spy.ids(cycle_id, "canary")) == 1 and len(spy.ids(cycle_id, "live")) <= 1
        looks = new.ha.last_gate_look
        assert looks is not None and looks["cycle_id"] == cycle_id
        await sim.stop()
        await new.stop()
        await _check_cycle(nc.jetstream(), prefix, cycle_id, [tmp_path / "new" / "data"],
                           make_config(tmp_path / "new", cluster.url, bus=bus, canary_duration_minutes=0.4))
    finally:
        await sim.stop()
        await old.stop()
        await new.stop()
        await nc.close()


# --- helpers over ctl.status ---------------------------------------------------------------------------

async def _roles(nc, prefix: str, roles: list[str]):
    got = await statuses(nc, prefix, len(roles))
    return sorted(s.get("role") for s in got) == sorted(roles) and got


async def _ended(nc, prefix: str, cycle_id: str):
    leader = await leader_of(nc, prefix, 2)
    return leader if leader and leader["state"] == "Idle" and (leader["last_cycle"] or {}).get("cycle_id") == cycle_id else None


async def _caught_up(nc, prefix: str, expect: int):
    got = await statuses(nc, prefix, expect)
    seqs = {s["replication"]["journal_seq"] for s in got}
    return len(got) == expect and len(seqs) == 1 and {s["role"] for s in got} == {"leader", "standby"}


def _config(replicas, tmp_path: Path):
    return parse_config(json.loads(_yaml(replicas.bus)) | {"storage": {"data_dir": str(tmp_path / "x")}})
