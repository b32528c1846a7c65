"""``infra.bus.barrier``: once it returns, the server has what the connection sent.

nats-py 2.16's ``flush()`` writes its PING ahead of commands still queued for
its flusher task, so a SUB made just before it may reach the server after the
PONG. The autopilot, the simulated VVTV and the tests rely on "subscribed, so
a publish from elsewhere is delivered" (a control responder, an apply
responder); this checks that promise many times over on a real server.
"""

from __future__ import annotations

import asyncio

import nats

from conftest import WAIT
from vvtv_autopilot.infra.bus import barrier

ROUNDS = 200


async def test_a_subscription_behind_a_barrier_gets_the_next_publish_from_another_connection(nats_server):
    subscriber = await nats.connect(nats_server.url, name="barrier-sub")
    publisher = await nats.connect(nats_server.url, name="barrier-pub")
    try:
        for round_ in range(ROUNDS):
            subject = f"barrier.probe.{round_}"
            sub = await subscriber.subscribe(subject)
            await barrier(subscriber, WAIT)
            await publisher.publish(subject, str(round_).encode())
            await barrier(publisher, WAIT)
            msg = await sub.next_msg(timeout=WAIT)
            assert msg.data == str(round_).encode()
            await sub.unsubscribe()
    finally:
        await asyncio.wait_for(subscriber.close(), timeout=WAIT)
        await asyncio.wait_for(publisher.close(), timeout=WAIT)
