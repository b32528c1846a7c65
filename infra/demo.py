"""``vvtv-autopilot demo``: the real thing, small and fast.

An embedded nats-server, the autopilot service and a simulated VVTV in one
process, over a few simulated days with canaries seconds long: a better
proposal that is deployed, a harmful one that is rolled back, a day without
a proposal, and a canary cut short by a critical alert. Prints each day as it
ends, and keeps its data in a folder it names at the end, with the commands to
inspect it (``history``, ``report``, ``replay`` with ``--data-dir``).
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import textwrap
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import msgspec

from ..handlers.card import parameter_values
from ..handlers.golden import builtin_golden_set, evaluate_golden
from ..schemas.config import Config
from ..schemas.messages import rfc3339
from ..statemachine.definition import TERMINAL
from .service import Service
from .simulator import SimulatedVVTV

DEMO_OVERRIDES = {
    "canary_duration_minutes": 0.15,       # 9 s canaries
    "check_interval_minutes": 0.05,        # a look every 3 s
    "min_samples_per_arm": 30,
    "apply_timeout_seconds": 5,
}

SCENARIOS = [
    ("better diversity", {"selection.diversity_weight": 0.45}, None),
    ("too much diversity", {"selection.diversity_weight": 0.6}, None),
    ("optimizer's own proposal", None, None),
    ("critical alert mid-canary", {"selection.diversity_weight": 0.5}, "alert"),
]


def _demo_config(config: Config, data_dir: Path) -> Config:
    tree = config.model_dump(mode="json")
    tree["autopilot"].update(DEMO_OVERRIDES)
    tree["storage"]["data_dir"] = str(data_dir)
    tree["bus"]["url"] = None
    tree["business_logic"]["path"] = None
    tree["golden"]["timeout_seconds"] = 5
    # The demo's days are seconds: start with the whole hard range open.
    tree["autopilot"]["sliding_bounds"]["initial_half_width_fraction"] = 0.5
    # Seconds-long canaries cannot show a 1 % non-inferiority on a noisy rate;
    # the demo judges the error rate against a 10 % margin instead.
    if "error_rate" in tree["kpis"]:
        tree["kpis"]["error_rate"]["margin"] = max(tree["kpis"]["error_rate"]["margin"], 0.10)
    return Config.model_validate(tree)


async def run_demo(config: Config, *, cycles: int = 4, as_json: bool = False, data_dir: Path | None = None) -> int:
    if data_dir is None:  # a new folder, kept: the demo ends with the commands to inspect it
        data_dir = Path(tempfile.mkdtemp(prefix="vvtv-demo-"))
    config = _demo_config(config, data_dir or Path(config.storage.data_dir))
    service = Service(config)
    ended: asyncio.Queue = asyncio.Queue()
    paths: dict[str, list[str]] = {}
    proposed: dict[str, str] = {}

    def on_step(step) -> None:
        for t in step.transitions:
            paths.setdefault(t.cycle_id, [t.from_]).append(t.to)
            if t.to == "Bounded":
                proposed[t.cycle_id] = ", ".join(f"{c['parameter_name'].rsplit('.', 1)[-1]} {c['old_value']}->{c['new_value']:.3g}"
                                                 for c in t.detail.get("changes", []))
            if t.to in TERMINAL:
                ended.put_nowait((t.cycle_id, t.to, t.detail))

    service.listeners.append(on_step)
    started = time.monotonic()
    await service.start()
    golden_set = builtin_golden_set()
    sim = SimulatedVVTV(service.nc, prefix=config.bus.prefix,
                        golden=lambda req: msgspec.to_builtins(evaluate_golden(golden_set, req["parameters"])))
    sim.live = _params(service, config)
    await sim.start()
    rows: list[dict[str, Any]] = []
    if not as_json:
        print(f"demo: {cycles} simulated day(s), canaries of {DEMO_OVERRIDES['canary_duration_minutes'] * 60:.0f} s; "
              f"data in {data_dir}\n")
        print(f"{'day':<4}{'scenario':<27}{'change':<32}{'outcome':<11}{'secs':>5}")
        sys.stdout.flush()
    try:
        for day, (label, changes, trouble) in enumerate((SCENARIOS * 5)[:cycles], start=1):
            body: dict[str, Any] = {"actor": "demo", "reason": f"day {day}: {label}"}
            verb = "propose" if changes else "run-now"
            if changes:
                body["changes"] = changes
            t0 = time.monotonic()
            reply = await _request(service, verb, body)
            if not reply.get("ok"):
                rows.append({"day": day, "scenario": label, "cycle_id": None, "outcome": "refused", "why": reply.get("error")})
                if not as_json:
                    _print_row(rows[-1])
                continue
            cycle_id = reply["cycle_id"]
            if trouble == "alert":
                await _wait_state(service, "Canary", 30)
                await asyncio.sleep(1.0)  # let some canary traffic flow first
                await service.js.publish(f"{config.bus.prefix}.alerts.critical", json.dumps({
                    "alert_id": f"demo-{day}", "severity": "critical", "source": "demo", "kpi": "error_rate",
                    "message": "error budget burning", "fired_at": rfc3339(datetime.now(timezone.utc))}).encode())
            while True:
                done_id, outcome, detail = await asyncio.wait_for(ended.get(), timeout=90)
                if done_id == cycle_id:
                    break
            rows.append({"day": day, "scenario": label, "cycle_id": cycle_id, "outcome": outcome,
                         "path": " > ".join(paths.get(cycle_id, [])),
                         "change": proposed.get(cycle_id, "-"), "seconds": round(time.monotonic() - t0, 1),
                         "why": _why(service, cycle_id, detail)})
            if not as_json:
                _print_row(rows[-1])
        triage = await _request(service, "triage", {"actor": "demo", "reason": "end of the demo", "run": True})
    finally:
        await sim.stop()
        drift = await service.store.drift_events(10)
        counters = await service.store.counters()
        card = service.card.history.current_card()
        await service.stop()
    result = {"data_dir": str(data_dir), "cycles": rows, "card": card, "counters": counters, "seconds": round(time.monotonic() - started, 1),
              "metric_batches_published": sim.published, "drift_events": drift, "triage": triage}
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        print()
        for e in drift:
            print(f"drift monitor: {e['event_type']} -> {e['action_taken']}")
        if triage.get("ok"):
            print(f"triage {triage['report_id']}: {json.dumps(triage['failure_counts'], sort_keys=True)}, "
                  f"{triage['patch_suggestions']} patch suggestion(s)")
        print(f"\nfinal card: {json.dumps(card, sort_keys=True)}")
        print(f"metric batches published: {sim.published}; store counters: {json.dumps(counters, sort_keys=True)}")
        print(f"demo took {result['seconds']} s")
        first = next((r["cycle_id"] for r in rows if r.get("cycle_id")), None)
        print(f"\nthe demo's data is kept in {data_dir}; inspect it with:")
        print(f"  vvtv-autopilot history --data-dir {data_dir}")
        if first:
            print(f"  vvtv-autopilot report {first} --data-dir {data_dir}")
            print(f"  vvtv-autopilot replay {first} --data-dir {data_dir}")
    ok = any(r["outcome"] == "Deployed" for r in rows) and any(r["outcome"] == "RolledBack" for r in rows)
    return 0 if ok or cycles < 2 else 1


def _params(service: Service, config: Config) -> dict[str, float]:
    return {k: float(v) for k, v in parameter_values(service.core.state.card, list(config.parameters)).items()}


def _print_row(r: dict[str, Any]) -> None:
    """One day, printed as it ends; the reason in full, wrapped (never cut mid-number)."""
    print(f"{r['day']:<4}{r['scenario']:<27}{r.get('change', '-'):<32}{r['outcome']:<11}{r.get('seconds', 0):>5}")
    if r.get("path"):
        print(f"{'':<4}{r['path']}")
    if r.get("why"):
        print(textwrap.fill(f"why: {r['why']}", width=100, initial_indent=" " * 4, subsequent_indent=" " * 9))
    sys.stdout.flush()


def _why(service: Service, cycle_id: str, detail: dict[str, Any]) -> str:
    if "reason" in detail:
        return str(detail["reason"])
    gate = (service.core.cycle.data.gate or {}) if service.core.cycle and service.core.cycle.data.cycle_id == cycle_id else {}
    return str(gate.get("reason", ""))


async def _request(service: Service, verb: str, body: dict[str, Any]) -> dict[str, Any]:
    msg = await service.nc.request(f"{service.config.bus.prefix}.autopilot.ctl.{verb}", json.dumps(body).encode(), timeout=30)
    return json.loads(msg.data)


async def _wait_state(service: Service, state: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.core.running() is not None and service.core.running().state == state:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"the cycle did not reach {state} within {timeout}s")
