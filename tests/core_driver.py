"""The pure-core test driver shared by the ``test_core_*`` files: no bus, no store.

A :class:`Driver` builds an ``Autopilot`` from a parsed configuration, feeds it
``Inbound`` envelopes (Boot first) and keeps every ``Step`` it returned. Replies
(golden, apply), metric batches (numpy draws from a seeded generator) and timers
are driven by hand, so every decision is reproducible and each file runs in a
second or two. The helpers below pick effects, publishes, schedules and moves
out of steps; tests import them like ``from core_driver import Driver, at``.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np

from vvtv_autopilot.handlers.card import version_id
from vvtv_autopilot.handlers.stats import RunningStats
from vvtv_autopilot.schemas.config import parse_config
from vvtv_autopilot.schemas.events import (ApplyResult, Boot, CommandEvent, Effect, GoldenResult, Inbound, MetricStats,
                                           TimerEvent, TransitionRecord)
from vvtv_autopilot.schemas.messages import rfc3339
from vvtv_autopilot.statemachine import Autopilot, Step

P = "selection.diversity_weight"
CARD = {"selection": {"diversity_weight": 0.35}}
T0 = datetime(2026, 11, 26, tzinfo=timezone.utc)
KPIS = {"selection_entropy": {"direction": "increase", "weight": 1.0},
        "error_rate": {"direction": "decrease", "critical": True, "margin": 0.1}}
HAPPY_PATH = ["Analyzing", "Bounded", "Validated", "Canary", "Gated", "Deployed"]


def make_config(**autopilot: Any):
    tree = {"canary_duration_minutes": 60, "check_interval_minutes": 10, "min_samples_per_arm": 30,
            "max_execution_time_minutes": 10, "sliding_bounds": {"initial_half_width_fraction": 0.5}}
    tree.update(autopilot)
    return parse_config({"autopilot": tree, "kpis": KPIS})


def at(minutes: float) -> str:
    return rfc3339(T0 + timedelta(minutes=minutes))


class Driver:
    """Feeds the core one Inbound at a time and keeps everything it produced."""

    def __init__(self, config=None, ap: Autopilot | None = None, *, seed: int = 7, counter: int = 0):
        self.config = config or make_config()
        self.ap = ap or Autopilot(self.config)
        self.rng = np.random.default_rng(seed)
        self.inbounds: list[Inbound] = []
        self.steps: list[Step] = []
        self.n = counter

    # --- plumbing ---------------------------------------------------------------------

    def feed(self, event: Any, when: str, subject: str) -> Step:
        self.n += 1
        inbound = Inbound(key=f"k{self.n}", subject=subject, at=when, event=event, stream_seq=self.n)
        self.inbounds.append(inbound)
        step = self.ap.handle(inbound)
        self.steps.append(step)
        return step

    @property
    def transitions(self) -> list[TransitionRecord]:
        return [t for s in self.steps for t in s.transitions]

    def boot(self, when: str = at(0), card: dict | None = None) -> Step:
        card = card or CARD
        return self.feed(Boot(card, version_id(card)), when, "boot")

    def command(self, verb: str, when: str, **body: Any) -> Step:
        body.setdefault("actor", "tester")
        return self.feed(CommandEvent(verb, body), when, f"ctl.{verb}")

    def timer(self, kind: str, when: str, cycle_id: str | None = None, token: str | None = None) -> Step:
        running = self.ap.running()
        if kind == "deadline" and token is None and running is not None and running.data.cycle_id == cycle_id:
            token = running.data.deadline  # as the scheduled deadline message carries it
        return self.feed(TimerEvent(kind, cycle_id, token), when, f"timer.{kind}")

    def golden(self, step: Step, when: str, passed: bool = True) -> Step:
        e = effect(step, "golden")
        cid = e.body["request"]["cycle_id"]
        return self.feed(GoldenResult(e.effect_id, cid, passed, cases_run=3,
                                      failures=[] if passed else [{"case": "x", "why": "bad"}]), when, "reply.golden")

    def apply(self, step: Step, purpose: str, when: str, applied: bool = True, error: str | None = None) -> Step:
        e = effect(step, "apply", purpose)
        return self.feed(ApplyResult(e.effect_id, e.body["request"]["cycle_id"], purpose, applied, error),
                         when, "reply.apply")

    def metric(self, kpi: str, arm: str, version: str | None, values, when: str) -> Step:
        s = RunningStats.of(values)
        return self.feed(MetricStats(kpi, arm, version, s.n, s.mean, s.m2, when), when, f"metrics.{arm}")

    def arms(self, when: str, version: str | None, *, lift: float = 0.1, n_control: int = 800,
             n_canary: int = 200) -> list[Step]:
        """One batch per KPI and arm: selection_entropy lifted by ``lift`` on the canary,
        error_rate the same on both arms. 4:1 matches the 20 % canary share (no SRM)."""
        r = self.rng
        return [
            self.metric("selection_entropy", "control", None, r.normal(1.0, 0.1, n_control), when),
            self.metric("selection_entropy", "canary", version, r.normal(1.0 + lift, 0.1, n_canary), when),
            self.metric("error_rate", "control", None, r.normal(0.02, 0.004, n_control), when),
            self.metric("error_rate", "canary", version, r.normal(0.02, 0.004, n_canary), when),
        ]

    def answer_live(self, when: str, applied: bool = True) -> Step | None:
        """Answer the live apply the running cycle awaits, from whichever step asked for it."""
        cycle = self.ap.running()
        if cycle is None or cycle.state != "Gated":
            return None
        asked = next(st for st in reversed(self.steps)
                     if any(e.effect_id == cycle.data.awaiting for e in st.effects))
        return self.apply(asked, "live", when, applied)

    # --- reaching a stage -------------------------------------------------------------

    def to_canary(self, start: float = 1.0) -> tuple[str, Step]:
        """run-now at ``start`` minutes, golden passes 1 min later, the canary applies 1 min after."""
        s = self.command("run-now", at(start))
        assert s.reply["ok"], s.reply
        cid = s.reply["cycle_id"]
        s = self.golden(s, at(start + 1))
        s = self.apply(s, "canary", at(start + 2))
        assert self.ap.running().state == "Canary"
        return cid, s

    @property
    def candidate(self) -> str:
        return self.ap.running().data.candidate_version


def effects(step: Step, kind: str, purpose: str | None = None) -> list[Effect]:
    return [e for e in step.effects if e.kind == kind and (purpose is None or e.body.get("purpose") == purpose)]


def effect(step: Step, kind: str, purpose: str | None = None) -> Effect:
    found = effects(step, kind, purpose)
    assert len(found) == 1, (kind, purpose, [(e.kind, e.body.get("purpose")) for e in step.effects])
    return found[0]


def publishes(step: Step, tail: str) -> list[dict]:
    return [e.body for e in step.effects if e.kind == "publish" and e.subject == tail]


def schedules(step: Step, name: str | None = None) -> list[dict]:
    return [e.body for e in step.effects if e.kind == "schedule" and (name is None or e.body["name"] == name)]


def moves(records: list[TransitionRecord]) -> list[tuple[str, str, str]]:
    return [(t.from_, t.to, t.trigger) for t in records]


def booted(**autopilot: Any) -> Driver:
    d = Driver(make_config(**autopilot) if autopilot else None)
    d.boot()
    return d
