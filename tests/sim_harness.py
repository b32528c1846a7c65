"""A deterministic simulated world around the PURE core (no bus, no store, no sleeping).

``SimWorld`` owns a simulated clock and one priority queue of world events keyed
by time. It drives an :class:`Autopilot` the way ``infra/service.py`` does, only
with simulated time:

* the daily timer (and every other timer) comes from the core's own ``schedule``
  effects: a tiny priority queue keyed by ``at``; a newer schedule of the same
  name replaces the older one (as the JetStream scheduled message does);
* a simulated VVTV answers ``apply`` (one ``effect_id`` once) and, in
  ``golden.mode: service``, ``golden`` effects; every reply comes back as an
  ``Inbound`` keyed ``reply:<effect_id>``;
* live metrics every simulated hour; while VVTV runs a canary, control/canary
  batches (binomial split at the configured share, the canary's batches tagged
  with its version id) every check interval;
* the response surface (:class:`DriftingSurface`) over ``selection.diversity_weight``
  whose optimum drifts slowly over the days;
* failure injection (:class:`Faults`): apply refusals, lost apply replies (VVTV did
  apply, the autopilot sees ``ApplyResult(applied=False, error="no reply ...")``
  after ``apply_timeout_seconds``), golden timeouts / failures, critical alert
  storms, duplicated inbound events (same key: skipped, as the store's inbox
  does), process crashes (state + running cycle serialized with msgspec, the
  Autopilot rebuilt from them, then a Boot event).

Metric batches are drawn as exact sufficient statistics (mean ~ N(mu, sd/sqrt n),
M2 ~ sd^2 chi2(n-1)), so a day costs milliseconds. Everything the core was fed is
kept (``fed``) with the state just before every non-metric event, for replay.
"""

from __future__ import annotations

import copy
import heapq
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import msgspec
import numpy as np

from vvtv_autopilot.handlers import bounds as B
from vvtv_autopilot.handlers.card import get_path, version_id
from vvtv_autopilot.handlers.golden import GoldenSet, builtin_golden_set, evaluate_golden, parse_golden_set
from vvtv_autopilot.schemas.config import Config, parse_config
from vvtv_autopilot.schemas.events import (AlertEvent, ApplyResult, Boot, Effect, GoldenResult, Inbound, MetricStats,
                                           TimerEvent, TransitionRecord)
from vvtv_autopilot.schemas.messages import parse_time, rfc3339
from vvtv_autopilot.statemachine import Autopilot, AutopilotState, CycleData, Step
from vvtv_autopilot.statemachine.definition import TERMINAL

P = "selection.diversity_weight"
T0 = datetime(2026, 3, 2, tzinfo=timezone.utc)   # a Monday; day 0 starts here
START_CARD = {"selection": {"diversity_weight": 0.35, "novelty_weight": 0.2}}
HOUR = timedelta(hours=1)
LATENCY = timedelta(milliseconds=400)             # VVTV's answer time

_state_enc = msgspec.json.Encoder()
_state_dec = msgspec.json.Decoder(AutopilotState)
_cycle_dec = msgspec.json.Decoder(CycleData)

# A golden set that refuses every diversity weight: P7's regression suite "finding" a bug.
FAILING_GOLDEN = parse_golden_set({"version": 1, "cases": [
    {"name": "injected_regression", "kind": "range", "parameter": P, "min": 0.9, "max": 1.0}]})


def cycle_no(cycle_id: str | None) -> int:
    return int(cycle_id.rsplit("-", 1)[1]) if cycle_id else 0


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def sim_config(golden_mode: str = "builtin", **overrides: Any) -> Config:
    """The seed's defaults, except canary 60 min, a look every 5 min, and KPI margins
    (entropy 1 %, error_rate 2 % relative)."""
    tree = {
        "autopilot": {"canary_duration_minutes": 60, "check_interval_minutes": 5,
                      "sliding_bounds": {"initial_half_width_fraction": 0.1}},
        "parameters": {P: {"min": 0.1, "max": 0.6}},
        "kpis": {"selection_entropy": {"direction": "increase", "critical": False, "weight": 1.0, "margin": 0.01},
                 "error_rate": {"direction": "decrease", "critical": True, "weight": 0.0, "margin": 0.02}},
        "golden": {"mode": golden_mode},
    }
    return parse_config(_merge(tree, overrides))


# --- the world's truth ------------------------------------------------------------------------


@dataclass(frozen=True)
class DriftingSurface:
    """KPI -> (mean, sd) at a diversity weight and a time.

    selection_entropy peaks at ``opt(t)``; error_rate is flat until the knee
    ``knee(t)`` and grows ``err_slope`` (relative) per unit of weight beyond it.
    Both drift: linearly plus a slow wobble (period ``wobble_days``). Daily and
    hourly seasonality multiply both arms alike (they cancel in a canary, not in
    the live analysis)."""

    opt0: float = 0.42
    knee0: float = 0.385
    drift_per_day: float = 0.0015
    knee_drift_per_day: float = 0.001
    wobble: float = 0.008
    wobble_days: float = 11.0
    entropy_peak: float = 2.4
    curvature: float = 8.0
    entropy_sd: float = 0.25
    err_base: float = 0.02
    err_slope: float = 4.0
    err_sd: float = 0.004
    seasonal: float = 0.01

    def days(self, t: datetime) -> float:
        return (t - T0).total_seconds() / 86400.0

    def opt(self, t: datetime) -> float:
        d = self.days(t)
        return self.opt0 + self.drift_per_day * d + self.wobble * math.sin(2 * math.pi * d / self.wobble_days)

    def knee(self, t: datetime) -> float:
        d = self.days(t)
        return self.knee0 + self.knee_drift_per_day * d + 0.5 * self.wobble * math.sin(2 * math.pi * d / self.wobble_days)

    def entropy(self, w: float, t: datetime) -> float:
        return self.entropy_peak - self.curvature * (w - self.opt(t)) ** 2

    def error(self, w: float, t: datetime) -> float:
        return self.err_base * (1.0 + self.err_slope * max(0.0, w - self.knee(t)))

    def season(self, t: datetime) -> float:
        d = self.days(t)
        return 1.0 + self.seasonal * math.sin(2 * math.pi * d)   # time of day

    def kpis(self, w: float, t: datetime) -> dict[str, tuple[float, float]]:
        s = self.season(t)
        return {"selection_entropy": (self.entropy(w, t) * s, self.entropy_sd),
                "error_rate": (self.error(w, t) * s, self.err_sd)}

    def safe_optimum(self, t: datetime, margin: float, lo: float = 0.1, hi: float = 0.6) -> float:
        """The best entropy whose error rate is within ``margin`` of the flat error rate."""
        grid = np.linspace(lo, hi, 5001)
        ok = [w for w in grid if self.error(w, t) <= self.err_base * (1 + margin)]
        return float(max(ok, key=lambda w: self.entropy(w, t)))


# --- failure injection ------------------------------------------------------------------------------


@dataclass
class Faults:
    """What goes wrong, keyed by the cycle's ordinal (1 = the first cycle the autopilot
    starts; the suffix of its cycle id), so a plan hits cycles whatever pauses intervene."""

    apply_refuse: dict[int, set[str]] = field(default_factory=dict)    # cycle -> purposes VVTV refuses
    apply_timeout: dict[int, set[str]] = field(default_factory=dict)   # cycle -> purposes whose reply is lost (VVTV applied)
    golden_fail: set[int] = field(default_factory=set)                 # the golden set fails every candidate
    golden_timeout: set[int] = field(default_factory=set)              # service mode: no golden reply
    alert_storm: dict[int, int] = field(default_factory=dict)          # cycle -> critical alerts during its canary
    crash_in_canary: dict[int, list[float]] = field(default_factory=dict)  # cycle -> seconds after canary start
    crash_after_gate: set[int] = field(default_factory=set)            # crash while the live apply is in flight
    duplicate_rate: float = 0.0                                        # share of inbounds delivered twice
    downtime: timedelta = timedelta(seconds=30)


# --- the world --------------------------------------------------------------------------------------


@dataclass(order=True)
class _Ev:
    at: datetime
    seq: int
    kind: str = field(compare=False)
    data: Any = field(compare=False, default=None)


@dataclass
class CycleInfo:
    cycle_id: str
    no: int
    day: int
    started_at: datetime
    fed_index: int
    state_before: bytes
    base_w: float
    transitions: list[TransitionRecord] = field(default_factory=list)
    candidate_w: float | None = None
    canary_started: datetime | None = None
    crashed: int = 0

    @property
    def outcome(self) -> str | None:
        return self.transitions[-1].to if self.transitions and self.transitions[-1].to in TERMINAL else None


class SimWorld:
    def __init__(self, *, seed: int = 1, config: Config | None = None, surface: DriftingSurface | None = None,
                 faults: Faults | None = None, batch_per_interval: int = 2000, golden_mode: str = "builtin"):
        self.config = config or sim_config(golden_mode)
        self.golden_mode = self.config.golden.mode
        self.golden: GoldenSet | None = builtin_golden_set() if self.golden_mode == "builtin" else None
        self.surface = surface or DriftingSurface()
        self.faults = faults or Faults()
        self.rng = np.random.default_rng(seed)
        self.batch = batch_per_interval
        self.ap = Autopilot(self.config, golden=self.golden)
        self.now = T0
        self._q: list[_Ev] = []
        self._seq = 0
        self._timer_gen: dict[str, int] = {}
        self._stream_seq = 0
        self._boots = 0
        # VVTV
        self.disk_card: dict[str, Any] = copy.deepcopy(START_CARD)
        self.vvtv_live: float = float(get_path(START_CARD, P))
        self.vvtv_canary: tuple[float, str] | None = None
        self.vvtv_applied: set[str] = set()
        self.apply_log: list[dict[str, Any]] = []
        # what happened
        self.seen_keys: set[str] = set()
        self.duplicates_skipped = 0
        self.fed: list[Inbound] = []
        self.steps: list[Step] = []
        self.cycles: dict[str, CycleInfo] = {}
        self.card_changes: list[tuple[datetime, str, str]] = []   # (at, old, new version)
        self.card_change_steps: list[Step] = []
        self.paused_before: list[bool] = []
        self.violations: list[str] = []
        self.pauses: list[tuple[datetime, datetime, str]] = []   # (from, until, by)
        self.drift_events: list = []                              # every DriftEvent the core raised
        self.crashes: list[tuple[datetime, str | None, str | None]] = []  # (at, cycle, state)
        self.daily_live: list[dict[str, float]] = []              # per day end: w, true KPIs, optimum
        self._stormed: set[int] = set()

    # --- queue ------------------------------------------------------------------------------------

    def _push(self, at: datetime, kind: str, data: Any = None) -> None:
        self._seq += 1
        heapq.heappush(self._q, _Ev(at, self._seq, kind, data))

    def _stream_key(self, stream: str) -> tuple[str, int]:
        self._stream_seq += 1
        return f"{stream}:{self._stream_seq}", self._stream_seq

    def _deliver(self, at: datetime, subject: str, event: Any, key: str | None = None, stream: str | None = None) -> None:
        seq = None
        if key is None:
            key, seq = self._stream_key(stream or "SIM")
        ib = Inbound(key=key, subject=subject, at=rfc3339(at), event=event, stream_seq=seq)
        self._push(at, "inbound", ib)
        if self.faults.duplicate_rate and self.rng.random() < self.faults.duplicate_rate:
            self._push(at + timedelta(seconds=float(self.rng.uniform(0.1, 90))), "inbound", ib)  # a redelivery

    # --- running ----------------------------------------------------------------------------------

    def boot(self) -> Step:
        self._boots += 1
        card = copy.deepcopy(self.disk_card)
        ib = Inbound(key=f"boot:{self._boots}", subject="boot", at=rfc3339(self.now), event=Boot(card, version_id(card)))
        return self._feed(ib)

    def run_days(self, days: int) -> None:
        if not self.fed:
            self.boot()
            self._push(T0 + timedelta(minutes=59, seconds=59), "live_tick")
        end = T0 + timedelta(days=days)
        for d in range(days):
            self._push(T0 + timedelta(days=d + 1) - timedelta(seconds=1), "day_end", d)
        while self._q and self._q[0].at <= end:
            ev = heapq.heappop(self._q)
            self.now = max(self.now, ev.at)
            getattr(self, "_on_" + ev.kind)(ev)

    def day_of(self, t: datetime) -> int:
        return int((t - T0).total_seconds() // 86400)

    # --- feeding the core -------------------------------------------------------------------------

    def _on_inbound(self, ev: _Ev) -> None:
        ib: Inbound = ev.data
        if ib.key in self.seen_keys:          # the store's inbox: a duplicate stops here
            self.duplicates_skipped += 1
            return
        # the core reads its time from the envelope: a redelivery carries the first delivery's time
        self._feed(msgspec.structs.replace(ib, at=rfc3339(self.now)) if parse_time(ib.at) < self.now else ib)

    def _feed(self, ib: Inbound) -> Step:
        self.seen_keys.add(ib.key)
        before = None if isinstance(ib.event, MetricStats) else _state_enc.encode(self.ap.state)
        previous = self.ap.cycle.data.cycle_id if self.ap.cycle is not None else None
        paused = self.ap.paused(self.now)
        self.paused_before.append(paused)
        version_before = self.ap.state.card_version
        index = len(self.fed)
        self.fed.append(ib)
        step = self.ap.handle(ib)
        self.steps.append(step)
        current = self.ap.cycle.data.cycle_id if self.ap.cycle is not None else None
        if current is not None and current != previous and before is not None:
            self.cycles[current] = CycleInfo(current, cycle_no(current), self.day_of(self.now), self.now, index, before,
                                             base_w=self._card_point(self.ap.state.card))
            if paused:
                self.violations.append(f"{current} started while paused")
        for t in step.transitions:
            info = self.cycles[t.cycle_id]
            info.transitions.append(t)
            if t.to == "Canary":
                info.canary_started = parse_time(t.at)
                info.candidate_w = self._proposal_point(self.ap.cycle.data.proposal, info.base_w)
                for off in self.faults.crash_in_canary.get(info.no, []):
                    self._push(info.canary_started + timedelta(seconds=off), "crash")
            if t.to == "Gated" and t.detail.get("recommendation") == "proceed":
                if paused:
                    self.violations.append(f"{t.cycle_id} judged proceed while paused")
                if info.no in self.faults.crash_after_gate:
                    self._push(self.now + LATENCY / 4, "crash")
            if t.to == "Validated" and info.candidate_w is None:
                info.candidate_w = self._proposal_point(self.ap.cycle.data.proposal, info.base_w)
        if self.ap.state.card_version != version_before and not isinstance(ib.event, Boot):   # a Boot adopts the disk card
            self.card_changes.append((self.now, version_before, self.ap.state.card_version))
            self.card_change_steps.append(step)
        self.drift_events.extend(step.drift_rows)   # the state keeps only the monitor's window of them
        for e in step.effects:   # every pause the core ordered (one step may order two: fail-safe, then drift)
            if e.kind == "publish" and e.subject == "autopilot.evt.alert" and e.body.get("kind") == "paused":
                self.pauses.append((self.now, parse_time(e.body["until"]), e.body.get("actor") or ""))
        for e in step.effects:
            self._effect(e)
        return step

    # --- where VVTV stands: one float (diversity weight) here; a subclass may use a point -----------

    def _card_point(self, card: dict[str, Any]) -> Any:
        return float(get_path(card, P))

    def _proposal_point(self, proposal: dict[str, float] | None, base: Any) -> Any:
        """The candidate: a cycle's proposal holds only the parameters it changes."""
        return float((proposal or {}).get(P, base))

    def _request_point(self, parameters: dict[str, Any]) -> Any:
        return float(parameters[P])

    def _effect(self, e: Effect) -> None:
        if e.kind == "schedule":
            name = e.body["name"]
            gen = self._timer_gen.get(name, 0) + 1
            self._timer_gen[name] = gen
            self._push(max(parse_time(e.body["at"]), self.now), "timer", (name, gen, e.body["event"]))
        elif e.kind == "apply":
            self._push(self.now + LATENCY / 2, "vvtv_apply", e)
        elif e.kind == "golden":
            self._push(self.now + LATENCY, "vvtv_golden", e)
        elif e.kind == "write_card":
            self.disk_card = copy.deepcopy(e.body["card"])

    def _on_timer(self, ev: _Ev) -> None:
        name, gen, body = ev.data
        if self._timer_gen.get(name) != gen:
            return   # replaced by a newer schedule of the same name
        if body.get("kind") == "daily" and self.faults.golden_fail and self.golden is not None:
            upcoming = self.ap.state.cycle_counter + 1
            self.ap.golden = FAILING_GOLDEN if upcoming in self.faults.golden_fail else self.golden
        event = TimerEvent(body["kind"], body.get("cycle_id"), body.get("token"))
        self._deliver(self.now, f"vvtv.autopilot.timer.fire.{name}", event, stream="VVTV_AUTOPILOT_TIMER")

    # --- VVTV ------------------------------------------------------------------------------------------

    def _on_vvtv_apply(self, ev: _Ev) -> None:
        e: Effect = ev.data
        req = e.body["request"]
        purpose = e.body["purpose"]
        day = cycle_no(req.get("cycle_id"))
        self.apply_log.append({"at": self.now, "purpose": purpose, **req})
        if purpose in self.faults.apply_refuse.get(day, set()):
            result = ApplyResult(e.effect_id, req["cycle_id"], purpose, False, "simulated refusal")
            self._deliver(self.now + LATENCY / 2, "apply", result, key=f"reply:{e.effect_id}")
            return
        if e.effect_id not in self.vvtv_applied:   # apply one effect id once
            self.vvtv_applied.add(e.effect_id)
            w = self._request_point(req["parameters"])
            if req["arm"] == "live":
                self.vvtv_live, self.vvtv_canary = w, None
            elif w == self.vvtv_live:
                self.vvtv_canary = None
            else:
                self.vvtv_canary = (w, req["version_id"])
                self._push(self.now + timedelta(minutes=self.config.autopilot.check_interval_minutes) - timedelta(seconds=1),
                           "canary_tick", (req["version_id"], self.now))
        if purpose in self.faults.apply_timeout.get(day, set()):
            t = self.config.autopilot.apply_timeout_seconds
            result = ApplyResult(e.effect_id, req["cycle_id"], purpose, False, f"no reply within {t:g}s (TimeoutError)")
            self._deliver(self.now + timedelta(seconds=t), "apply", result, key=f"reply:{e.effect_id}")
            return
        result = ApplyResult(e.effect_id, req["cycle_id"], purpose, True, None)
        self._deliver(self.now + LATENCY / 2, "apply", result, key=f"reply:{e.effect_id}")

    def _on_vvtv_golden(self, ev: _Ev) -> None:
        e: Effect = ev.data
        req = e.body["request"]
        no = cycle_no(req["cycle_id"])
        if no in self.faults.golden_timeout:
            t = self.config.golden.timeout_seconds
            result = GoldenResult(e.effect_id, req["cycle_id"], False, 0, [], error=f"no valid reply within {t:g}s (TimeoutError)")
            self._deliver(self.now + timedelta(seconds=t), "golden", result, key=f"reply:{e.effect_id}")
            return
        gs = FAILING_GOLDEN if no in self.faults.golden_fail else builtin_golden_set()
        reply = evaluate_golden(gs, req["parameters"])
        result = GoldenResult(e.effect_id, req["cycle_id"], reply.passed, reply.cases_run,
                              [{"case": f.case, "reason": f.reason} for f in reply.failures])
        self._deliver(self.now + LATENCY, "golden", result, key=f"reply:{e.effect_id}")

    def _stats(self, mean: float, sd: float, n: int) -> tuple[float, float]:
        m = float(self.rng.normal(mean, sd / math.sqrt(n)))
        m2 = float(sd * sd * self.rng.chisquare(n - 1))
        return m, m2

    def _metric(self, kpi: str, arm: str, version: str | None, w: float, n: int, at: datetime) -> None:
        mean, sd = self.surface.kpis(w, at)[kpi]
        m, m2 = self._stats(mean, sd, n)
        self._deliver(at, f"vvtv.metrics.{kpi}", MetricStats(kpi, arm, version, n, m, m2, rfc3339(at)), stream="VVTV_METRICS")

    def _on_live_tick(self, ev: _Ev) -> None:
        n = self.batch * int(round(60 / self.config.autopilot.check_interval_minutes))
        for kpi in ("selection_entropy", "error_rate"):
            self._metric(kpi, "live", None, self.vvtv_live, n, self.now)
        self._push(self.now + HOUR, "live_tick")

    def _on_canary_tick(self, ev: _Ev) -> None:
        version, _since = ev.data
        if self.vvtv_canary is None or self.vvtv_canary[1] != version:
            return   # the canary arm was put back
        share = self.config.autopilot.canary_traffic_percentage
        n_canary = int(self.rng.binomial(self.batch, share))
        n_control = self.batch - n_canary
        for kpi in ("selection_entropy", "error_rate"):
            self._metric(kpi, "control", None, self.vvtv_live, n_control, self.now)
            self._metric(kpi, "canary", version, self.vvtv_canary[0], n_canary, self.now)
        self._push(self.now + timedelta(minutes=self.config.autopilot.check_interval_minutes), "canary_tick", ev.data)
        no = self.ap.state.cycle_counter
        storm = self.faults.alert_storm.get(no, 0)
        if storm and no not in self._stormed:
            self._stormed.add(no)
            for i in range(storm):
                at = self.now + timedelta(minutes=2 + 7 * i)
                alert = AlertEvent(f"alert-{no}-{i}", "critical", "AlertEngine",
                                   "error_rate above SLO", rfc3339(at), kpi="error_rate")
                self._deliver(at, "vvtv.alerts.critical", alert, stream="VVTV_ALERTS")

    # --- crash ------------------------------------------------------------------------------------------

    def _on_crash(self, ev: _Ev) -> None:
        """The process dies; everything it committed survives: its state and the open cycle."""
        running = self.ap.running()
        self.crashes.append((self.now, running.data.cycle_id if running else None, running.state if running else None))
        if running is not None:
            self.cycles[running.data.cycle_id].crashed += 1
        state = _state_dec.decode(_state_enc.encode(self.ap.state))
        cycle = _cycle_dec.decode(_state_enc.encode(running.data)) if running is not None else None
        golden = self.ap.golden
        self.ap = Autopilot(self.config, state, cycle, golden=golden)
        # it comes back after the downtime; what arrived meanwhile waits on the bus
        restart = self.now + self.faults.downtime
        held = [e for e in self._q if e.at < restart and e.kind in ("inbound", "timer")]
        self._q = [e for e in self._q if not (e.at < restart and e.kind in ("inbound", "timer"))]
        heapq.heapify(self._q)
        self.now = restart
        self.boot()
        for e in sorted(held):
            self._push(restart, e.kind, e.data)

    # --- the day's record ---------------------------------------------------------------------------------

    def _on_day_end(self, ev: _Ev) -> None:
        t = self.now
        w = float(get_path(self.ap.state.card, P))
        margin = self.config.kpis["error_rate"].margin
        opt = self.surface.safe_optimum(t, margin)
        self.daily_live.append({
            "day": ev.data, "w": w, "vvtv_w": self.vvtv_live, "canary_open": self.vvtv_canary is not None,
            "entropy": self.surface.entropy(w, t), "error": self.surface.error(w, t),
            "entropy_w0": self.surface.entropy(float(get_path(START_CARD, P)), t),
            "error_w0": self.surface.error(float(get_path(START_CARD, P)), t),
            "opt_w": opt, "entropy_opt": self.surface.entropy(opt, t),
            "paused": self.ap.paused(t),
            "bounds_problems": [p for b in self.ap.tuning.bounds.values() for p in B.check_invariants(b, t)],
            "bounds": msgspec.to_builtins(self.ap.tuning.bounds[P]) if P in self.ap.tuning.bounds else None,
        })

    # --- summaries ---------------------------------------------------------------------------------------

    def outcomes(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.cycles.values():
            out[c.outcome or "running"] = out.get(c.outcome or "running", 0) + 1
        return out

    def true_error_lift(self, c: CycleInfo) -> float | None:
        """The true relative change of error_rate the canary caused (canary vs control), at its start."""
        if c.candidate_w is None or c.canary_started is None:
            return None
        base = self.surface.error(c.base_w, c.canary_started)
        return (self.surface.error(c.candidate_w, c.canary_started) - base) / base

    def gain(self) -> dict[str, float]:
        """Entropy at the end vs doing nothing (same final surface), vs the start, vs the optimum."""
        first, last = self.daily_live[0], self.daily_live[-1]
        return {
            "vs_nothing_pct": 100 * (last["entropy"] / last["entropy_w0"] - 1),
            "vs_day0_pct": 100 * (last["entropy"] / first["entropy"] - 1),
            "vs_optimum_pct": 100 * (last["entropy"] / last["entropy_opt"] - 1),
            "error_vs_nothing_pct": 100 * (last["error"] / last["error_w0"] - 1),
            "w_start": first["w"], "w_end": last["w"], "opt_end": last["opt_w"],
        }
