"""Benchmark of metric ingestion, bus to SQLite (prints, never asserts).

    /tmp/venv/bin/python bench/bench_ingest.py [--messages 20000] [--samples 100] [--batch 1000]
        [--variants 1,100,1000] [--mode both] [--window-step 1] [--repeat 3] [--profile]

Each measurement gets its own nats-server (``EmbeddedNats`` in a temp dir) and,
for the full path, its own ``Service`` (config as in tests/conftest.make_config,
data dir in the same temp dir). Messages are valid ``vvtv.metrics.selection_entropy``
batches (README, "The bus") of the ``live`` arm, encoded before the clock starts,
published with ``js.publish_async`` from a separate connection.

Rows, per message size:
- ``publish``: publish_async of all messages until every PubAck is back (no consumer);
- ``baseline``: the service's transport and nothing else: a durable push consumer
  with ``AckPolicy.ALL`` (same settings as the service's), batches of ``--batch``,
  ``msg.metadata`` and a msgspec decode to ``MetricBatch`` per message, one ack per
  batch; no numpy, no core, no store;
- ``full``: the service: the same consumer, decode, reduce to sufficient stats, step
  the core, one SQLite transaction per batch (``synchronous=FULL``), one ack. Done when
  ``await service.store.counters()`` shows ``live_samples == messages * samples``.

Modes:
- ``concurrent``: the consumer is up, the clock runs from the first publish to the
  last message consumed (publisher and consumer share the Python process);
- ``drain``: all messages are published first (that is the ``publish`` row), then the
  clock runs from the consumer's start to the last message consumed.

``--profile`` runs cProfile on the main thread during the full-path drain of the
main size (``--samples``, first repeat) and prints the top functions; it slows
that run down (its numbers then sit in the min-max column). SQLite itself runs in
aiosqlite's worker thread, so it shows up as time waiting, not as sqlite3 calls.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import logging
import pstats
import statistics
import shutil
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import msgspec
import nats
import numpy as np
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamConfig

from vvtv_autopilot.infra import bus as busmod
from vvtv_autopilot.infra.natsserver import EmbeddedNats
from vvtv_autopilot.infra.service import Service
from vvtv_autopilot.schemas.config import Config, parse_config
from vvtv_autopilot.schemas.messages import MetricBatch

SUBJECT = "vvtv.metrics.selection_entropy"
BASE_SUBJECT = "bench.metrics.selection_entropy"
BASE_TIME = datetime(2026, 11, 26, 0, 0, tzinfo=timezone.utc)
DEADLINE = 120.0  # per measurement; a stuck run is reported, not waited on forever
POLL = 0.02


def make_config(tmp: Path, url: str) -> Config:
    """As tests/conftest.make_config (which needs pytest to import)."""
    return parse_config({
        "autopilot": {"canary_duration_minutes": 0.1, "check_interval_minutes": 0.025, "min_samples_per_arm": 30,
                      "apply_timeout_seconds": 10},
        "bus": {"url": url},
        "storage": {"data_dir": str(tmp / "data")},
        "golden": {"timeout_seconds": 10},
        "kpis": {"selection_entropy": {"direction": "increase", "weight": 1.0},
                 "error_rate": {"direction": "decrease", "critical": True, "margin": 0.1}},
    })


def make_payloads(messages: int, samples: int, window_step: float, seed: int = 1) -> list[bytes]:
    """Valid metric batches; message i covers the minute ending BASE_TIME + i * window_step."""
    rng = np.random.default_rng(seed)
    enc = msgspec.json.Encoder()
    out = []
    for i in range(messages):
        end = BASE_TIME + timedelta(seconds=i * window_step)
        out.append(enc.encode({
            "kpi": "selection_entropy", "arm": "live",
            "window_start": (end - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "window_end": end.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "values": rng.normal(0.7, 0.1, samples).tolist(),
        }))
    return out


async def publish_all(js, subject: str, payloads: list[bytes]) -> float:
    """publish_async every payload, wait for all PubAcks; returns the end time."""
    futures = []
    for p in payloads:
        futures.append(await js.publish_async(subject, p))
    await js.publish_async_completed()
    for f in futures:  # surface a failed publish instead of timing garbage
        f.result()
    return time.perf_counter()


class Run:
    """One server in one temp dir, cleaned up whatever happens."""

    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
        self.server = EmbeddedNats(self.tmp / "nats")
        self.conns: list = []

    async def __aenter__(self) -> "Run":
        self.url = await self.server.start()
        return self

    async def connect(self):
        nc = await nats.connect(self.url)
        self.conns.append(nc)
        return nc

    async def __aexit__(self, *exc) -> None:
        for nc in self.conns:
            if not nc.is_closed:
                await nc.close()
        self.server.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


# --- baseline: the same transport, nothing else ---------------------------------------------------

class _Buffer:
    def __init__(self) -> None:
        self.msgs: list = []
        self.ready = asyncio.Event()

    async def on_msg(self, msg) -> None:
        self.msgs.append(msg)
        self.ready.set()


async def _baseline_setup(run: Run, batch: int):
    pub = (await run.connect()).jetstream()
    await pub.add_stream(StreamConfig(name="BENCH", subjects=["bench.metrics.>"], max_age=7 * 86400.0))
    cons = (await run.connect()).jetstream()
    cfg = ConsumerConfig(
        durable_name="bench", filter_subject="bench.metrics.>", ack_policy=AckPolicy.ALL,
        deliver_policy=DeliverPolicy.ALL, deliver_subject="_INBOX.bench.metrics", ack_wait=60.0,
        max_ack_pending=20_000, max_deliver=-1, flow_control=True, idle_heartbeat=5.0)
    await cons.add_consumer("BENCH", cfg)
    buf = _Buffer()
    await cons.subscribe_bind("BENCH", cfg, "bench", cb=buf.on_msg, manual_ack=True)
    return pub, buf


async def _baseline_consume(buf: "_Buffer", total: int, batch: int) -> float:
    dec = msgspec.json.Decoder(MetricBatch)
    got = 0
    deadline = time.perf_counter() + DEADLINE
    while got < total and time.perf_counter() < deadline:
        try:
            await asyncio.wait_for(buf.ready.wait(), timeout=1.0)
        except asyncio.TimeoutError:
            continue
        buf.ready.clear()
        while buf.msgs:
            msgs = buf.msgs[:batch]
            del buf.msgs[:batch]
            for msg in msgs:
                _ = msg.metadata.sequence.stream
                dec.decode(msg.data)
            await msgs[-1].ack()
            got += len(msgs)
    if got < total:
        raise RuntimeError(f"baseline consumed {got} of {total} within {DEADLINE}s")
    return time.perf_counter()


async def baseline(payloads: list[bytes], batch: int, mode: str) -> dict[str, float]:
    async with Run() as run:
        pub, sub = await _baseline_setup(run, batch)
        if mode == "drain":
            t0 = time.perf_counter()
            t_pub = await publish_all(pub, BASE_SUBJECT, payloads)
            t1 = time.perf_counter()
            t_end = await _baseline_consume(sub, len(payloads), batch)
            return {"publish": t_pub - t0, "consume": t_end - t1}
        consumer = asyncio.create_task(_baseline_consume(sub, len(payloads), batch))
        t0 = time.perf_counter()
        t_pub = await publish_all(pub, BASE_SUBJECT, payloads)
        t_end = await consumer
        return {"publish": t_pub - t0, "consume": t_end - t0}


# --- full path: the service -----------------------------------------------------------------------

async def _wait_samples(service: Service, want: int) -> float:
    deadline = time.perf_counter() + DEADLINE
    while time.perf_counter() < deadline:
        counters = await service.store.counters()
        if counters.get("live_samples", 0) >= want:
            return time.perf_counter()
        await asyncio.sleep(POLL)
    counters = await service.store.counters()
    raise RuntimeError(f"service ingested {counters.get('live_samples', 0)} of {want} samples within {DEADLINE}s "
                       f"(counters {counters})")


async def full_path(payloads: list[bytes], samples: int, batch: int, mode: str,
                    profile: cProfile.Profile | None = None) -> dict[str, float]:
    want = len(payloads) * samples
    async with Run() as run:
        config = make_config(run.tmp, run.url)
        pub = (await run.connect()).jetstream()
        service = Service(config, nats_url=run.url, batch_size=batch)
        try:
            if mode == "drain":
                await busmod.ensure_streams(pub, config)  # the service binds to it at start
                t0 = time.perf_counter()
                t_pub = await publish_all(pub, SUBJECT, payloads)
                publish = t_pub - t0
                await service.start()
                if profile is not None:
                    profile.enable()
                t1 = time.perf_counter()
                t_end = await _wait_samples(service, want)
                if profile is not None:
                    profile.disable()
                return {"publish": publish, "consume": t_end - t1}
            await service.start()
            waiter = asyncio.create_task(_wait_samples(service, want))
            t0 = time.perf_counter()
            t_pub = await publish_all(pub, SUBJECT, payloads)
            t_end = await waiter
            return {"publish": t_pub - t0, "consume": t_end - t0}
        finally:
            await service.stop()


# --- the report ---------------------------------------------------------------------------------------

def messages_for(size: int, messages: int, samples: int) -> int:
    """The main size gets --messages; bigger messages are fewer, so bytes stay bounded."""
    if size <= samples:
        return messages
    return max(200, messages * samples // size)


async def main_async(args) -> None:
    sizes = sorted({int(s) for s in args.variants.split(",") if s.strip()} | {args.samples})
    modes = ["concurrent", "drain"] if args.mode == "both" else [args.mode]
    profile = cProfile.Profile() if args.profile else None
    rows = []
    for size in sizes:
        n = messages_for(size, args.messages, args.samples)
        payloads = make_payloads(n, size, args.window_step)
        kib = sum(map(len, payloads)) / n / 1024
        for mode in modes:
            pubs, bases, fulls = [], [], []
            for r in range(args.repeat):  # interleaved, so drift in the machine's load hits both alike
                base = await baseline(payloads, args.batch, mode)
                prof = profile if (mode == "drain" and size == args.samples and r == 0) else None
                full = await full_path(payloads, size, args.batch, mode, prof)
                pubs.append(n / (base["publish"] if mode == "drain" else full["publish"]))
                bases.append(n / base["consume"])
                fulls.append(n / full["consume"])
                print(f"  .. {size:>5} samples/msg, {mode:<10} #{r + 1}: baseline {bases[-1]:9,.0f} msg/s, "
                      f"full {fulls[-1]:9,.0f} msg/s", file=sys.stderr, flush=True)
            rows.append((size, n, kib, mode, pubs, bases, fulls))

    med = statistics.median
    print()
    print(f"medians of {args.repeat} interleaved run(s); rates in messages/s, samples/s = messages/s x samples/msg")
    print("publish: publish_async until all PubAcks; concurrent: first publish -> last message consumed; "
          "drain: backlog published first, consumer clock only")
    print()
    print(f"| {'samples/msg':>11} | {'msgs':>6} | {'KiB/msg':>7} | {'mode':<10} | {'publish msg/s':>13} | "
          f"{'baseline msg/s':>14} | {'full msg/s':>10} | {'full min-max':>15} | {'full samples/s':>14} | "
          f"{'full/baseline':>13} |")
    print(f"|{'-' * 12}:|{'-' * 7}:|{'-' * 8}:|{'-' * 12}|{'-' * 14}:|{'-' * 15}:|{'-' * 11}:|{'-' * 16}:|"
          f"{'-' * 15}:|{'-' * 14}:|")
    for size, n, kib, mode, pubs, bases, fulls in rows:
        b_rate, f_rate = med(bases), med(fulls)
        spread = f"{min(fulls):,.0f}-{max(fulls):,.0f}"
        print(f"| {size:>11} | {n:>6} | {kib:>7.2f} | {mode:<10} | {med(pubs):>13,.0f} | {b_rate:>14,.0f} | "
              f"{f_rate:>10,.0f} | {spread:>15} | {f_rate * size:>14,.0f} | {f_rate / b_rate:>13.2f} |")

    if profile is not None:
        out = io.StringIO()
        stats = pstats.Stats(profile, stream=out)
        stats.sort_stats("tottime").print_stats(25)
        print(f"\ncProfile, main thread, full-path drain at {args.samples} samples/msg (top 25 by tottime):")
        print(out.getvalue())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=20_000, help="messages at the main size (default 20000)")
    ap.add_argument("--samples", type=int, default=100, help="samples per message, main size (default 100)")
    ap.add_argument("--batch", type=int, default=1000, help="fetch batch size of the service and baseline (default 1000)")
    ap.add_argument("--variants", default="1,100,1000",
                    help="other samples/msg sizes, comma separated; sizes above --samples get proportionally "
                         "fewer messages (default 1,100,1000; '' for none)")
    ap.add_argument("--mode", choices=["concurrent", "drain", "both"], default="both")
    ap.add_argument("--window-step", type=float, default=1.0,
                    help="seconds between consecutive messages' window_end (default 1: 20000 msgs span ~5.6 h, "
                         "i.e. ~6 hourly live buckets)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per cell, the table shows medians (default 3)")
    ap.add_argument("--profile", action="store_true", help="cProfile the full-path drain at the main size")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("vvtv_autopilot.card").setLevel(logging.ERROR)  # "no card yet: writing one", every run
    cmd = " ".join(["bench/bench_ingest.py", *sys.argv[1:]])
    print(f"$ {sys.executable} {cmd}")
    print(f"messages={args.messages} samples={args.samples} batch={args.batch} variants={args.variants!r} "
          f"mode={args.mode} window_step={args.window_step}s repeat={args.repeat}")
    t = time.perf_counter()
    asyncio.run(main_async(args))
    print(f"\nbenchmark wall time {time.perf_counter() - t:.0f} s")


if __name__ == "__main__":
    main()
