"""Replay throughput: recorded cycles replayed through the pure core, transitions per second.

    python bench/bench_replay.py [--days 30] [--seed 11] [--repeat 3]

A 30-day simulated run (tests/sim_harness.py) records every cycle: the state before it and
its inbox from the event that started it (metric batches included). Each cycle is replayed
exactly (statemachine.replay.replay_cycle) and compared with its record. Prints recorded
transitions replayed per second and inbound events stepped per second, against a baseline
measured in the same run: decoding the same inbox from JSON with msgspec (the least any
replay from the store must do).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from sim_harness import SimWorld  # noqa: E402
from vvtv_autopilot.schemas.events import Inbound  # noqa: E402
from vvtv_autopilot.statemachine.definition import TERMINAL  # noqa: E402
from vvtv_autopilot.statemachine.replay import compare, replay_cycle  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    print(f"$ python bench/bench_replay.py --days {args.days} --seed {args.seed} --repeat {args.repeat}")
    world = SimWorld(seed=args.seed)
    world.run_days(args.days)
    cases = []
    for c in world.cycles.values():
        if c.outcome not in TERMINAL:
            continue
        end = next(i for i in range(c.fed_index, len(world.fed)) if world.fed[i].at >= c.transitions[-1].at)
        cases.append((c, [msgspec.json.encode(ib) for ib in world.fed[c.fed_index:end + 1]]))
    transitions = sum(len(c.transitions) for c, _ in cases)
    inbounds = sum(len(raw) for _, raw in cases)
    decoder = msgspec.json.Decoder(Inbound)
    best_replay = best_decode = float("inf")
    for _ in range(args.repeat):
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
    print(f"{len(cases)} cycles, {transitions} transitions, {inbounds} inbound events (metric batches included)")
    print(f"replay (decode + step + compare): {transitions / best_replay:,.0f} transitions/s, "
          f"{inbounds / best_replay:,.0f} events/s ({best_replay * 1000:.0f} ms, best of {args.repeat})")
    print(f"baseline, decode only: {inbounds / best_decode:,.0f} events/s; replay costs "
          f"{best_replay / best_decode:.1f}x the decoding")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
