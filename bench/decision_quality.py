"""Decision quality on realistic data (issue 9): prints figures, asserts nothing.

The world is tests/realistic_world.py (per-unit Bernoulli error_rate ~2 %, per-unit lognormal
selection_entropy sigma 0.8, ~2,000 units/min with a +-40 % daily swing, 20 % canary for 60 min,
two parameters, a drifting optimum, an error-rate cliff). Per configuration, over seeds x days:

* gain captured: the live card's entropy gain over doing nothing (the start card) as a share of
  the per-day safe optimum's gain, averaged over the days of a run (mean over seeds, worst seed),
  and on the last day;
* harmful deploys: deploys whose true effect (the world's truth at the canary's start) raises
  error_rate > 5 % or lowers entropy > 1 % (count, % of cycles); days the live card sat unsafe;
* canaries ending inconclusive, and why (rule and KPIs, read from the Gated transition's
  decision; falls back to the reason text, then "unparsed" when the decision changes shape);
* A/A (a second run of the same seeds in which every canary's candidate has the control's
  truth): the gate's false rollback and false proceed, and the two judges' on the same canaries;
* the judges on the SAME canaries the gate saw (each canary's full window, even when the gate
  stopped early): Kayenta-style (per KPI two-sided Mann-Whitney U at 98 %, fail when any KPI is
  significantly worse by direction, pass otherwise) and fixed-horizon Welch at the configured
  confidence (harm -> rollback, else an improvement -> deploy, else inconclusive): deploys and
  harmful deploys among them. Counterfactual: the judges do not steer the run.

    python bench/decision_quality.py [--seeds 20] [--days 30] [--first-seed 0] [--quick]
                                     [--config FILE.yaml ...] [--no-aa] [--no-builtin] [--only NAME]

``--config`` (repeatable) adds any YAML config (read like the service's ``--config``, without the
environment); the world models selection.diversity_weight and selection.novelty_weight and the
KPIs selection_entropy and error_rate (other parameters have no effect, other KPIs are null
lognormal streams).
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from realistic_world import (HARM_ENTROPY, HARM_ERROR, RealisticWorld, load_world_config,  # noqa: E402
                             realistic_config)

OPERATOR_KPIS = {"selection_entropy": {"direction": "increase", "critical": False, "weight": 1.0, "margin": 0.01},
                 "error_rate": {"direction": "decrease", "critical": True, "weight": 0.0, "margin": 0.10}}


# README's recommended canary policy: lengthen a canary (guardrail power, the step's predicted gain)
# up to 4 hours; the gate's anytime-valid test still ends a clear canary early.
RECOMMENDED = {"underpowered_action": "lengthen", "max_canary_duration_minutes": 240}


def configurations(files: list[str], builtin: bool, only: str | None = None) -> list[tuple[str, object]]:
    out = []
    if builtin:
        out.append(("defaults (project KPI specs)", realistic_config()))
        out.append(("recommended (defaults + lengthen up to 240 min)", realistic_config(autopilot=RECOMMENDED)))
        out.append(("operator (error_rate w=0, margin 10%)", realistic_config(kpis=OPERATOR_KPIS)))
        out.append(("operator, recommended policy (lengthen up to 240 min)",
                    realistic_config(autopilot=RECOMMENDED, kpis=OPERATOR_KPIS)))
    if only:
        out = [(n, c) for n, c in out if n.startswith(only)]
    for f in files:
        out.append((f"--config {f}", load_world_config(f)))
    return out


def run_config(config, seeds: list[int], days: int, aa: bool) -> dict:
    per_seed, canaries, aa_canaries = [], [], []
    t0 = time.perf_counter()
    for seed in seeds:
        w = RealisticWorld(seed=seed, config=config)
        w.run_days(days)
        s = w.summary()
        started = set(w.cycle_days())
        missing = [d for d in range(days) if d not in started
                   and not any(a <= _trigger(d) < u for a, u, _ in w.pauses)]
        s["missing_days"] = len(missing)
        per_seed.append(s)
        canaries.extend(w.canaries)
        if aa:
            a = RealisticWorld(seed=10_000 + seed, config=config, aa=True)
            a.run_days(days)
            aa_canaries.extend(a.canaries)
    return {"seeds": per_seed, "canaries": canaries, "aa": aa_canaries, "wall": time.perf_counter() - t0}


def _trigger(day: int):
    from datetime import timedelta

    from sim_harness import T0
    return T0 + timedelta(days=day, hours=3)


def pct(a: float, b: float) -> str:
    return f"{100.0 * a / b:.1f}%" if b else "n/a"


def report(name: str, r: dict, days: int) -> None:
    seeds = r["seeds"]
    caps = [s["captured_mean"] for s in seeds]
    finals = [s["captured_final"] for s in seeds]
    cycles = sum(s["cycles"] for s in seeds)
    outcomes = Counter()
    for s in seeds:
        outcomes.update(s["outcomes"])
    can = r["canaries"]
    gated = [c for c in can if c.gate is not None]
    deployed = [c for c in can if c.outcome == "Deployed"]
    harmful = sum(1 for c in deployed if c.harmful)
    print(f"\n## {name}")
    print(f"{len(seeds)} seeds x {days} days: {cycles} cycles ({', '.join(f'{k} {v}' for k, v in sorted(outcomes.items()))}); "
          f"days without a cycle while not paused: {sum(s['missing_days'] for s in seeds)}; "
          f"pauses {sum(s['pauses'] for s in seeds)}; wall {r['wall']:.0f} s")
    print(f"gain captured (share of the safe optimum's gain over doing nothing, time-averaged): "
          f"mean {100 * np.nanmean(caps):.1f}%, worst seed {100 * np.nanmin(caps):.1f}%; "
          f"last day mean {100 * np.nanmean(finals):.1f}%, worst {100 * np.nanmin(finals):.1f}%")
    print(f"harmful deploys (true error_rate > +{100 * HARM_ERROR:g}% or entropy < -{100 * HARM_ENTROPY:g}%): "
          f"{harmful} of {len(deployed)} deploys = {pct(harmful, cycles)} of cycles; "
          f"days live card unsafe: {sum(s['unsafe_days'] for s in seeds)}")
    rec = Counter(c.gate for c in gated)
    print(f"canaries {len(can)} (gated {len(gated)}): proceed {rec.get('proceed', 0)}, rollback {rec.get('rollback', 0)}, "
          f"inconclusive {rec.get('inconclusive', 0)} = {pct(rec.get('inconclusive', 0), len(gated))}")
    why = Counter(c.gate_why for c in gated if c.gate == "inconclusive")
    for k, v in why.most_common(6):
        print(f"    inconclusive: {v:4d}  {k}")
    rb = Counter(c.gate_why for c in gated if c.gate == "rollback")
    for k, v in rb.most_common(3):
        print(f"    rollback:     {v:4d}  {k}")
    truly_better = sum(1 for c in can if c.true_lift.get("selection_entropy", 0) > 0.0 and not c.harmful)
    print(f"canaries truly better and safe: {truly_better}")
    print(f"| judge on the same {len(can)} canaries | deploys | harmful among them | rollbacks | A/A false rollback | A/A false proceed |")
    print("|---|---:|---:|---:|---:|---:|")
    aa = r["aa"]
    aa_gated = [c for c in aa if c.gate is not None]

    def row(label, deploys, harm, rollbacks, aa_rb, aa_dep, aa_n):
        print(f"| {label} | {deploys} | {harm} | {rollbacks} | "
              f"{(pct(aa_rb, aa_n) + f' ({aa_rb}/{aa_n})') if aa_n else 'n/a'} | "
              f"{(pct(aa_dep, aa_n) + f' ({aa_dep}/{aa_n})') if aa_n else 'n/a'} |")

    row("autopilot gate (hybrid)", len(deployed), harmful, rec.get("rollback", 0) + rec.get("inconclusive", 0),
        sum(1 for c in aa_gated if c.gate == "rollback"), sum(1 for c in aa_gated if c.gate == "proceed"), len(aa_gated))
    row("Kayenta-style MW 98%", sum(c.kayenta == "deploy" for c in can),
        sum(c.kayenta == "deploy" and c.harmful for c in can), sum(c.kayenta == "rollback" for c in can),
        sum(c.kayenta == "rollback" for c in aa), sum(c.kayenta == "deploy" for c in aa), len(aa))
    row("Welch fixed horizon", sum(c.welch == "deploy" for c in can),
        sum(c.welch == "deploy" and c.harmful for c in can), sum(c.welch == "rollback" for c in can),
        sum(c.welch == "rollback" for c in aa), sum(c.welch == "deploy" for c in aa), len(aa))
    print("(gate 'rollbacks' = rollback + inconclusive; A/A false rollback for the gate = its harm rollbacks)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="3 seeds x 7 days")
    ap.add_argument("--config", action="append", default=[], metavar="FILE.yaml", help="also run this config")
    ap.add_argument("--no-builtin", action="store_true", help="only the --config files")
    ap.add_argument("--no-aa", action="store_true", help="skip the A/A runs")
    ap.add_argument("--only", metavar="NAME", help="only the built-in configuration whose name starts so "
                    "(defaults, recommended, operator, 'operator, rec')")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.days = 3, 7
    print("$ python " + " ".join(shlex.quote(a) for a in [str(Path(sys.argv[0]))] + sys.argv[1:]))
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    print(f"seeds {seeds[0]}..{seeds[-1]}, {args.days} days; world: tests/realistic_world.py "
          f"(A/A runs use seeds +10000)")
    t = time.perf_counter()
    for name, config in configurations(args.config, not args.no_builtin, args.only):
        r = run_config(config, seeds, args.days, not args.no_aa)
        report(name, r, args.days)
    print(f"\ntotal wall time {time.perf_counter() - t:.0f} s")


if __name__ == "__main__":
    main()
