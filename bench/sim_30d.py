"""30-day autopilot simulation on the pure core, for a few seeds; prints a table, asserts nothing.

The world is tests/sim_harness.py: a response surface over selection.diversity_weight whose
optimum drifts, a simulated VVTV (2,000 samples per KPI per 5 minutes, 20 % canary share),
the daily timer only, canary 60 min looking every 5 min, golden set built in.

    python bench/sim_30d.py [--days 30] [--seeds 1 2 3 4 5] [--faults]

Columns: cycle outcomes; entropy at the end vs day 0 (the surface drifted meanwhile), vs doing
nothing (the start card on the final surface) and vs the drifting safe optimum; error_rate vs
doing nothing; pauses ordered (and days whose 03:00 fell in one); drift events; wall time.
Rows "w=1" use the README's default weight 1.0 for the critical error_rate (the gate then
averages the guardrail's noise into its improvement score); the other rows set it to 0.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from sim_harness import T0, Faults, SimWorld, sim_config  # noqa: E402

FAULTS = Faults(apply_timeout={2: {"canary"}, 13: {"live"}}, apply_refuse={3: {"canary"}}, golden_fail={5, 6},
                crash_in_canary={8: [600.0], 9: [1500.0]}, crash_after_gate={10}, alert_storm={11: 3},
                duplicate_rate=0.05)


def run(seed: int, days: int, *, weight: float, faults: bool) -> dict:
    config = sim_config(kpis={"error_rate": {"weight": weight}})
    world = SimWorld(seed=seed, config=config, faults=FAULTS if faults else None)
    t = time.perf_counter()
    world.run_days(days)
    wall = time.perf_counter() - t
    out = Counter(c.outcome for c in world.cycles.values())
    g = world.gain()
    paused_days = sum(1 for d in range(days)
                      if any(a <= T0 + timedelta(days=d, hours=3) < u for a, u, _ in world.pauses))
    margin = config.kpis["error_rate"].margin
    harmful = sum(1 for c in world.cycles.values() if c.outcome == "Deployed" and world.true_error_lift(c) > margin)
    return {"seed": seed, "w": weight, "cycles": len(world.cycles), "dep": out["Deployed"], "rb": out["RolledBack"],
            "noch": out["NoChange"], "fail": out["Failed"] + out["Aborted"], "g0": g["vs_day0_pct"],
            "gn": g["vs_nothing_pct"], "gopt": g["vs_optimum_pct"], "err": g["error_vs_nothing_pct"],
            "pauses": len(world.pauses), "pdays": paused_days, "drift": len(world.drift_events),
            "harm": harmful, "crash": len(world.crashes), "dup": world.duplicates_skipped,
            "ms": 1000 * wall / days, "wend": g["w_end"], "opt": g["opt_end"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    ap.add_argument("--faults", action="store_true", help="also run the failure-injection plan")
    args = ap.parse_args()
    head = (f"{'seed':>4} {'w':>3} {'cyc':>4} {'dep':>4} {'rb':>4} {'noch':>4} {'fail':>4} | {'vs d0%':>7} {'vs nil%':>7} "
            f"{'vs opt%':>7} {'err%':>6} | {'w_end':>6} {'opt':>6} | {'paus':>4} {'pdays':>5} {'drift':>5} {'harm':>4}"
            f" {'crash':>5} {'dup':>4} | {'ms/day':>6}")
    rows = []
    for faults in ([False, True] if args.faults else [False]):
        print(f"\n{args.days}-day simulation{' with failure injection' if faults else ''}")
        print(head)
        print("-" * len(head))
        for weight in (0.0, 1.0):
            for seed in args.seeds:
                r = run(seed, args.days, weight=weight, faults=faults)
                rows.append(r)
                print(f"{r['seed']:>4} {r['w']:>3g} {r['cycles']:>4} {r['dep']:>4} {r['rb']:>4} {r['noch']:>4} {r['fail']:>4} | "
                      f"{r['g0']:>+7.2f} {r['gn']:>+7.2f} {r['gopt']:>+7.2f} {r['err']:>+6.2f} | {r['wend']:>6.3f} "
                      f"{r['opt']:>6.3f} | {r['pauses']:>4} {r['pdays']:>5} {r['drift']:>5} {r['harm']:>4} "
                      f"{r['crash']:>5} {r['dup']:>4} | {r['ms']:>6.1f}")


if __name__ == "__main__":
    main()
