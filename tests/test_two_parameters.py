"""Two tunable parameters on the pure core (issue 9).

A cycle records only the parameters it changed (``CycleData.proposal`` holds the changes), so
with two parameters a past outcome lacks the other one; the optimizer read it as ``None`` and
raised ``TypeError`` in its exploration step on the second daily cycle. It now reads the
missing coordinate at the value that was live at that cycle (``complete_history``).
"""

from __future__ import annotations

from sim_harness import START_CARD, SimWorld, sim_config
from vvtv_autopilot.handlers.optimizer import CycleOutcome, OptimizerSettings, propose
from vvtv_autopilot.handlers.bounds import initial_bounds
from vvtv_autopilot.schemas.config import KpiSpec, ParameterSpec
from datetime import datetime, timezone

D, N = "selection.diversity_weight", "selection.novelty_weight"


def two_parameter_config():
    return sim_config(parameters={D: {"min": 0.1, "max": 0.6}, N: {"min": 0.0, "max": 0.5}})


def test_two_parameters_two_daily_cycles_on_the_pure_core():
    world = SimWorld(seed=3, config=two_parameter_config())
    world.run_days(3)   # raised TypeError in _optimizer_proposal on the second daily cycle
    cycles = sorted(world.cycles.values(), key=lambda c: c.no)
    assert [c.day for c in cycles] == [0, 1, 2]
    assert all(c.outcome is not None for c in cycles)
    # exploration is round-robin over the sorted names: the second cycle puts the novelty weight
    # on the canary (this world's VVTV judges only the diversity weight, so that canary has no data)
    canaries = [a for a in world.apply_log if a["arm"] == "canary" and a["purpose"] == "canary"]
    assert canaries[0]["parameters"][N] == START_CARD["selection"]["novelty_weight"]
    assert canaries[1]["parameters"][N] != START_CARD["selection"]["novelty_weight"]
    # ... and keeps the diversity weight where it was live: the first canary's value if it deployed
    live_d = canaries[0]["parameters"][D] if cycles[0].outcome == "Deployed" else START_CARD["selection"]["diversity_weight"]
    assert canaries[1]["parameters"][D] == live_d


def _bounds(current):
    t = datetime(2026, 3, 2, tzinfo=timezone.utc)
    specs = {D: ParameterSpec(min=0.1, max=0.6), N: ParameterSpec(min=0.0, max=0.5)}
    return {n: initial_bounds(n, specs[n], current[n], at=t, half_width_fraction=0.2)[0] for n in specs}


def test_missing_coordinates_read_at_the_value_live_at_that_cycle():
    from vvtv_autopilot.handlers._optimizer_proposal import complete_history
    # cycle 1 moved D 0.35 -> 0.36 (deployed); cycle 2 moved N 0.20 -> 0.22 (rolled back);
    # cycle 3 moved D 0.36 -> 0.37 (deployed). Now D = 0.37, N = 0.20.
    hist = [CycleOutcome({D: 0.36}, {D: 0.35}, {"e": 0.01}, outcome="deployed"),
            CycleOutcome({N: 0.22}, {N: 0.20}, {"e": -0.01}, outcome="rolled_back"),
            CycleOutcome({D: 0.37}, {D: 0.36}, {"e": 0.01}, outcome="deployed")]
    done = complete_history(hist, [D, N], {D: 0.37, N: 0.20})
    assert done[0].baseline == {D: 0.35, N: 0.20} and done[0].parameters == {D: 0.36, N: 0.20}
    assert done[1].baseline == {D: 0.36, N: 0.20} and done[1].parameters == {D: 0.36, N: 0.22}
    assert done[2].baseline == {D: 0.36, N: 0.20} and done[2].parameters == {D: 0.37, N: 0.20}
    # complete outcomes are kept as they are (one parameter: nothing changes)
    full = [CycleOutcome({D: 0.36}, {D: 0.35}, {"e": 0.01})]
    assert complete_history(full, [D], {D: 0.36})[0] is full[0]


def test_gp_with_partial_outcomes_is_deterministic():
    kpis = {"e": KpiSpec(direction="increase", weight=1.0), "err": KpiSpec(direction="decrease", critical=True, margin=0.05)}
    cur = {D: 0.35, N: 0.2}
    hist = []
    for i in range(8):
        name = (D, N)[i % 2]
        hist.append(CycleOutcome({name: cur[name] + 0.01}, {name: cur[name]}, {"e": 0.004 * (i % 3), "err": 0.0},
                                 {"e": 0.01, "err": 0.02}, "rolled_back"))
    kw = dict(analysis={}, history=hist, bounds=_bounds(cur), kpis=kpis, seed=5, current=cur,
              settings=OptimizerSettings())
    a, b = propose(**kw), propose(**kw)
    assert a.method == "gp"
    assert a == b
    assert set(a.parameters) == {D, N}
