"""Dashboard page times with a store of 1,000 cycles.

    python bench/bench_web.py [--cycles 1000] [--seed 3] [--repeat 20] [--store DIR]

Fills a real SQLite store with the cycles of a simulated world (tests/sim_harness.py: the
pure core through simulated days, every step committed as the service commits it: inbox,
transitions, cycle rows, snapshots, the state before each cycle; ``--simulated`` days of them, 30 by
default, and earlier time-shifted copies up to ``--cycles``, since simulating 1,000 cycles
takes over a quarter of an hour as the optimizer's history grows), then serves the dashboard
from it (infra/web.py, aiohttp on 127.0.0.1) and times each page over HTTP: the first
request (cold: nothing cached) and the median and worst of ``--repeat`` more. Prints figures;
asserts nothing. ``--store DIR`` keeps (or reuses) the filled store.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from recorded_store import clone_cycles, fill_store  # noqa: E402
from sim_harness import SimWorld  # noqa: E402
from vvtv_autopilot.infra.clock import now  # noqa: E402
from vvtv_autopilot.infra.web import WebServer  # noqa: E402
from vvtv_autopilot.schemas.messages import parse_time  # noqa: E402


async def fill(path: Path, cycles: int, seed: int, simulated: int) -> SimWorld:
    world = SimWorld(seed=seed)
    t = time.perf_counter()
    world.run_days(simulated)     # about a cycle a day, fewer while paused
    print(f"simulated {len(world.cycles)} cycles over {len(world.steps)} events in {time.perf_counter() - t:.0f} s", flush=True)
    t = time.perf_counter()
    await fill_store(path, world)
    copies = clone_cycles(path, cycles)
    print(f"committed to {path} in {time.perf_counter() - t:.0f} s ({path.stat().st_size / 1e6:.0f} MB); "
          f"{copies} earlier copies of the simulated cycles")
    return world


async def timed(http: aiohttp.ClientSession, url: str, repeat: int, method: str = "GET", data=None) -> tuple[float, float, float, int]:
    times = []
    size = 0
    for _ in range(repeat + 1):
        t = time.perf_counter()
        async with http.request(method, url, data=data() if callable(data) else data) as r:
            body = await r.read()
            assert r.status == 200, (url, r.status, body[:300])
        times.append((time.perf_counter() - t) * 1000)
        size = len(body)
    return times[0], statistics.median(times[1:]), max(times[1:]), size


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--simulated", type=int, default=30,
                    help="days actually simulated (the rest are time-shifted copies of their cycles; simulating 1,000 cycles takes > 15 min)")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--store", type=Path, default=None)
    args = ap.parse_args()
    print(f"$ python bench/bench_web.py --cycles {args.cycles} --simulated {args.simulated} --seed {args.seed} "
          f"--repeat {args.repeat}", flush=True)
    scratch = None if args.store else tempfile.TemporaryDirectory(prefix="bench-web-")
    folder = args.store or Path(scratch.name)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "autopilot.db"
    world = SimWorld(seed=args.seed) if path.exists() else await fill(path, args.cycles, args.seed, args.simulated)
    config = world.config.model_copy(update={"web": world.config.web.model_copy(update={"listen": "127.0.0.1:0"})})
    at = now()
    web = WebServer(config, path, lambda: world.ap.status(at))
    url = await web.start()
    try:
        ids = await web.data.summaries()
        originals = [c for c in ids if "-c" not in c.cycle_id[-5:]]
        print(f"{len(ids)} cycles in the store")
        deployed = next(c.cycle_id for c in reversed(originals) if c.outcome == "Deployed")
        rolled = next(c.cycle_id for c in reversed(originals) if c.outcome == "RolledBack")
        # the dashboard's "now" is the world's last event (its monitoring window)
        world_now = max((parse_time(c.started_at) for c in ids), default=at)
        print(f"last cycle started {world_now.isoformat()}")
        await web._warm                # the start-up warm-up, then empty the caches: "cold" is the worst case
        web.data._summaries.clear()
        web.data._ranges.clear()
        async with aiohttp.ClientSession() as http:
            rows = []
            for name, path_, method, data in [
                ("dashboard /", "/", "GET", None),
                ("live fragment /fragment/live", "/fragment/live", "GET", None),
                ("review, deployed /cycles/ID", f"/cycles/{deployed}", "GET", None),
                ("review, rolled back /cycles/ID", f"/cycles/{rolled}", "GET", None),
                ("canary report /api/cycles/ID/report", f"/api/cycles/{deployed}/report", "GET", None),
                ("export /cycles/ID/export.jsonl", f"/cycles/{deployed}/export.jsonl", "GET", None),
                ("/metrics", "/metrics", "GET", None),
                ("/api/status", "/api/status", "GET", None),
                ("what-if (confidence 0.999) POST", f"/cycles/{deployed}/what-if", "POST",
                 lambda: {"confidence": "0.999"}),
            ]:
                rows.append((name,) + await timed(http, url + path_, args.repeat if method == "GET" else 3, method, data))
        print(f"{'page':<40}{'cold ms':>9}{'median ms':>11}{'max ms':>9}{'bytes':>10}")
        for name, cold, med, worst, size in rows:
            print(f"{name:<40}{cold:>9.1f}{med:>11.1f}{worst:>9.1f}{size:>10,}")
    finally:
        await web.stop()
        if scratch is not None:
            scratch.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
