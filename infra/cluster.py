"""A JetStream cluster on loopback, for tests and benchmarks (README, "Deployment: replicas").

Three (or N) real ``nats-server`` processes, each with its own JetStream store:
``-js -sd DIR --server_name nK --cluster nats://127.0.0.1:P --routes <the
others> --cluster_name C``. :meth:`NatsCluster.start` returns once every node is
ready and JetStream has a meta leader, so R3 streams can be created at once. A
node can be killed (SIGKILL) and started again on the same ports and store, to
rejoin and catch up.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from pathlib import Path

import nats

from ..schemas.errors import BusError
from .natsserver import EmbeddedNats

log = logging.getLogger("vvtv_autopilot.cluster")


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


class NatsCluster:
    def __init__(self, root: Path, nodes: int = 3, name: str = "vvtv"):
        self.root = Path(root)
        self.name = name
        ports = free_ports(2 * nodes)
        self.client_ports, self.cluster_ports = ports[:nodes], ports[nodes:]
        self.nodes: list[EmbeddedNats] = [self._node(k) for k in range(nodes)]

    def _node(self, k: int) -> EmbeddedNats:
        routes = ",".join(f"nats://127.0.0.1:{p}" for i, p in enumerate(self.cluster_ports) if i != k)
        return EmbeddedNats(self.root / f"n{k}", port=self.client_ports[k], extra_args=[
            "--server_name", f"n{k}", "--cluster_name", self.name,
            "--cluster", f"nats://127.0.0.1:{self.cluster_ports[k]}", "--routes", routes])

    @property
    def url(self) -> str:
        """Every node, comma-separated (``bus.url`` / ``--nats-url`` accept this)."""
        return ",".join(self.node_url(k) for k in range(len(self.nodes)))

    def node_url(self, k: int) -> str:
        return f"nats://127.0.0.1:{self.client_ports[k]}"

    async def start(self, timeout: float = 60.0) -> str:
        try:
            await asyncio.gather(*(node.start(timeout) for node in self.nodes))
            await self.wait_meta_leader(timeout)
        except BaseException:
            self.stop()
            raise
        return self.url

    async def wait_meta_leader(self, timeout: float = 60.0) -> None:
        """Until JetStream answers account info on every running node (it cannot before
        the meta leader is elected)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for k, node in enumerate(self.nodes):
            if node.pid is None:
                continue
            nc = await nats.connect(self.node_url(k), allow_reconnect=False)
            try:
                js = nc.jetstream(timeout=2.0)
                while True:
                    try:
                        await js.account_info()
                        break
                    except Exception as exc:
                        if loop.time() > deadline:
                            raise BusError(f"no JetStream meta leader on node n{k} within {timeout}s: {exc!r}") from exc
                        await asyncio.sleep(0.2)
            finally:
                await nc.close()

    def kill(self, k: int) -> None:
        """SIGKILL node ``k`` (its store stays)."""
        self.nodes[k].kill()

    async def restart(self, k: int, timeout: float = 60.0) -> None:
        """Node ``k`` again, on its ports and store: it rejoins the cluster and catches up."""
        self.nodes[k] = self._node(k)
        await self.nodes[k].start(timeout)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


async def stream_replicas_current(nc, stream: str) -> dict[str, dict]:
    """Per server name: ``{"current": bool, "lag": int, "leader": bool}`` of ``stream``'s replicas."""
    js = nc.jetstream(timeout=5.0)
    info = await js.stream_info(stream)
    cluster = info.cluster
    out = {}
    if cluster is None:
        return out
    if cluster.leader:
        out[cluster.leader] = {"current": True, "lag": 0, "leader": True}
    for peer in cluster.replicas or []:
        out[peer.name] = {"current": bool(peer.current), "lag": int(peer.lag or 0), "leader": False,
                          "offline": bool(getattr(peer, "offline", False))}
    return out


async def statuses(nc, prefix: str, expect: int, timeout: float = 3.0) -> list[dict]:
    """Every replica's answer to one ``ctl.status`` (up to ``expect`` of them, within ``timeout``):
    a core request takes only the first answer, so this collects them on an inbox of its own."""
    queue: asyncio.Queue = asyncio.Queue()

    async def on(msg):
        if msg.data:   # not the server's "no responders" status
            queue.put_nowait(json.loads(msg.data))

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on)
    await nc.flush()
    await nc.publish(f"{prefix}.autopilot.ctl.status", b"{}", reply=inbox)
    out, deadline = [], time.monotonic() + timeout
    while len(out) < expect and time.monotonic() < deadline:
        try:
            out.append(await asyncio.wait_for(queue.get(), timeout=max(0.01, deadline - time.monotonic())))
        except asyncio.TimeoutError:
            break
    try:
        await sub.unsubscribe()
    except Exception:  # the connection may be closing; the answers are in
        pass
    return out
