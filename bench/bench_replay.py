"""Replay throughput, both replays: recorded transitions replayed per second.

    python bench/bench_replay.py [--days 30] [--seed 11] [--repeat 3] [--cycles 1000] [--canaries]

A simulated run (tests/sim_harness.py, ``--days`` days) records every cycle: the state before it,
its inbox from the event that started it (metric batches included) and its transitions.

* **Exact replay** (statemachine.replay.replay_cycle; ``vvtv-autopilot replay CYCLE_ID``): each
  ended cycle's inbox, as JSON, is decoded with msgspec, stepped through a fresh core (the
  optimizer, the gate and the power plan decide again) and compared with the record.
  Baseline: decoding the same inbox with msgspec.
* **Log replay** (statemachine.log_replay; ``vvtv-autopilot replay --all --log``): the run is
  committed to a real SQLite store by infra/store.py (tests/recorded_store.py), grown to
  ``--cycles`` cycles with copies under fresh ids, and every cycle is rebuilt from its stored
  transitions and checked against its row. Timed from opening the file: the read is included.
  Baseline: reading the same rows from the same file and decoding every detail with msgspec.

``--canaries``: the optimizer's small steps (optimizer_step_sizing: none), so nearly every
cycle runs a canary (more transitions and metric batches per cycle). Prints figures; asserts
only that every replay agrees with its record.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from recorded_store import clone_cycles, fill_store  # noqa: E402
from sim_harness import SimWorld, sim_config  # noqa: E402
from vvtv_autopilot.infra.webdata import WebData  # noqa: E402
from vvtv_autopilot.schemas.events import Inbound  # noqa: E402
from vvtv_autopilot.statemachine.definition import TERMINAL  # noqa: E402
from vvtv_autopilot.statemachine.log_replay import replay_logs  # noqa: E402
from vvtv_autopilot.statemachine.replay import compare, replay_cycle  # noqa: E402


def exact(world: SimWorld, repeat: int) -> None:
    index = {ib.key: i for i, ib in enumerate(world.fed)}
    cases = []
    for c in world.cycles.values():
        if c.outcome not in TERMINAL:
            continue
        end = index[c.transitions[-1].cause["key"]]    # the event of its last transition
        cases.append((c, [msgspec.json.encode(ib) for ib in world.fed[c.fed_index:end + 1]]))
    transitions = sum(len(c.transitions) for c, _ in cases)
    inbounds = sum(len(raw) for _, raw in cases)
    decoder = msgspec.json.Decoder(Inbound)
    best_replay = best_decode = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for c, raw in cases:
            replayed = replay_cycle(world.config, c.state_before, [decoder.decode(r) for r in raw], c.cycle_id,
                                    golden=world.golden)
            assert compare(c.transitions, replayed) == [], c.cycle_id
        best_replay = min(best_replay, time.perf_counter() - t)
        t = time.perf_counter()
        for _, raw in cases:
            [decoder.decode(r) for r in raw]
        best_decode = min(best_decode, time.perf_counter() - t)
    print(f"exact replay (decode + step the core + compare): {len(cases)} cycles, {transitions:,} transitions, "
          f"{inbounds:,} inbound events (metric batches included)")
    print(f"  {transitions / best_replay:,.0f} transitions/s, {inbounds / best_replay:,.0f} events/s "
          f"({best_replay * 1000:.0f} ms, best of {repeat})")
    print(f"  baseline, decoding the same inbox with msgspec: {inbounds / best_decode:,.0f} events/s "
          f"({best_decode * 1000:.1f} ms); the exact replay costs {best_replay / best_decode:,.0f}x the decoding")


async def log(world: SimWorld, cycles: int, repeat: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as folder:
        path = Path(folder) / "autopilot.db"
        await fill_store(path, world)
        clone_cycles(path, cycles)
        best_log = best_read = best_base = float("inf")
        for _ in range(repeat):
            t = time.perf_counter()
            data = await WebData.open(path)
            rows, cycle_rows = await data.transition_log()
            read = time.perf_counter() - t
            results = replay_logs(rows, cycle_rows)
            await data.close()
            best_log = min(best_log, time.perf_counter() - t)
            best_read = min(best_read, read)
            bad = [(r.cycle_id, [str(p) for p in r.problems[:2]]) for r in results if r.problems]
            assert not bad, bad[:3]
            t = time.perf_counter()
            data = await WebData.open(path)
            rows, cycle_rows = await data.transition_log()
            for r in rows:
                msgspec.json.decode(r.detail)
            await data.close()
            best_base = min(best_base, time.perf_counter() - t)
        n = sum(r.transitions for r in results)
        print(f"log replay (read + decode + check every move + compare with the row): {len(results):,} cycles, "
              f"{n:,} transitions, in a real SQLite file ({path.stat().st_size / 1e6:.1f} MB)")
        print(f"  {n / best_log:,.0f} transitions/s, {len(results) / best_log:,.0f} cycles/s "
              f"({best_log * 1000:.1f} ms, of which {best_read * 1000:.1f} ms reading; best of {repeat})")
        print(f"  baseline, reading the same rows and decoding every detail with msgspec: {n / best_base:,.0f} "
              f"transitions/s ({best_base * 1000:.1f} ms); the log replay costs {best_log / best_base:.2f}x the decoding")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cycles", type=int, default=1000, help="cycles in the log replay's store (default 1000)")
    ap.add_argument("--canaries", action="store_true", help="the optimizer's small steps: a canary nearly every day")
    args = ap.parse_args()
    if args.days < 1 or args.repeat < 1 or args.cycles < 1:
        ap.error("--days, --repeat and --cycles must be at least 1")
    print(f"$ python bench/bench_replay.py --days {args.days} --seed {args.seed} --repeat {args.repeat} "
          f"--cycles {args.cycles}" + (" --canaries" if args.canaries else ""))
    config = sim_config(autopilot={"optimizer_step_sizing": "none"}) if args.canaries else None
    world = SimWorld(seed=args.seed, config=config)
    t = time.perf_counter()
    world.run_days(args.days)
    outcomes = world.outcomes()
    print(f"simulated {args.days} days in {time.perf_counter() - t:.1f} s: {len(world.cycles)} cycles ("
          + ", ".join(f"{n} {o}" for o, n in sorted(outcomes.items())) + f"), {len(world.fed):,} inbound events")
    exact(world, args.repeat)
    asyncio.run(log(world, args.cycles, args.repeat))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
