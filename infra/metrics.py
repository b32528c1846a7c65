"""Prometheus metrics (``/metrics``) through OpenTelemetry's Prometheus exporter.

The figures come from the store (the source of truth: they survive restarts) and the
core's state, read into a :class:`MetricsSnapshot` just before each scrape; observable
instruments report that snapshot. Each :class:`AutopilotMetrics` has its own
Prometheus registry, so several services in one process (tests) do not mix.

Series (Prometheus names, as the exporter writes them):

* ``vvtv_autopilot_cycles_total{outcome}`` — ended cycles by outcome (Deployed, RolledBack, ...)
* ``vvtv_autopilot_gate_decisions_total{recommendation}`` — canaries judged (proceed, rollback, inconclusive)
* ``vvtv_autopilot_dead_letters_total`` — inbound messages refused by validation
* ``vvtv_autopilot_samples_ingested_total{arm}`` — metric samples counted (live, canary, ignored)
* ``vvtv_autopilot_paused`` — 1 while paused
* ``vvtv_autopilot_last_cycle_age_seconds`` — since the last cycle started
* ``vvtv_autopilot_canary_running`` — 1 while a canary runs
"""

from __future__ import annotations

from dataclasses import dataclass, field

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST

_SAMPLE_COUNTERS = {"live_samples": "live", "canary_samples": "canary", "ignored_arm_samples": "ignored"}


@dataclass
class MetricsSnapshot:
    cycles_by_outcome: dict[str, int] = field(default_factory=dict)
    gate_decisions: dict[str, int] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    paused: bool = False
    canary_running: bool = False
    last_cycle_age_seconds: float | None = None


class AutopilotMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.reader = PrometheusMetricReader(registry=self.registry, disable_target_info=True,
                                             scope_info_enabled=False)
        self.provider = MeterProvider(metric_readers=[self.reader],
                                      resource=Resource.create({"service.name": "vvtv-autopilot"}))
        self.snapshot = MetricsSnapshot()
        meter = self.provider.get_meter("vvtv_autopilot")
        meter.create_observable_counter("vvtv_autopilot_cycles", [self._cycles],
                                        description="Ended autopilot cycles by outcome")
        meter.create_observable_counter("vvtv_autopilot_gate_decisions", [self._gate],
                                        description="Canaries judged by the gate, by recommendation")
        meter.create_observable_counter("vvtv_autopilot_dead_letters", [self._dead],
                                        description="Inbound messages refused by validation (dead letters)")
        meter.create_observable_counter("vvtv_autopilot_samples_ingested", [self._samples],
                                        description="Metric samples counted, by arm")
        meter.create_observable_gauge("vvtv_autopilot_paused", [self._paused],
                                      description="1 while the autopilot is paused")
        meter.create_observable_gauge("vvtv_autopilot_canary_running", [self._canary],
                                      description="1 while a canary runs")
        meter.create_observable_gauge("vvtv_autopilot_last_cycle_age_seconds", [self._age], unit="s",
                                      description="Seconds since the last cycle started")

    def render(self, snapshot: MetricsSnapshot) -> bytes:
        """The Prometheus text format for this snapshot."""
        self.snapshot = snapshot
        return generate_latest(self.registry)

    def shutdown(self) -> None:
        self.provider.shutdown()

    # --- callbacks (read the snapshot taken just before the scrape) ---------------------------

    def _cycles(self, options: CallbackOptions) -> list[Observation]:
        return [Observation(n, {"outcome": k}) for k, n in sorted(self.snapshot.cycles_by_outcome.items())]

    def _gate(self, options: CallbackOptions) -> list[Observation]:
        return [Observation(n, {"recommendation": k}) for k, n in sorted(self.snapshot.gate_decisions.items())]

    def _dead(self, options: CallbackOptions) -> list[Observation]:
        return [Observation(self.snapshot.counters.get("dead_letters", 0))]

    def _samples(self, options: CallbackOptions) -> list[Observation]:
        return [Observation(self.snapshot.counters.get(name, 0), {"arm": arm}) for name, arm in _SAMPLE_COUNTERS.items()]

    def _paused(self, options: CallbackOptions) -> list[Observation]:
        return [Observation(int(self.snapshot.paused))]

    def _canary(self, options: CallbackOptions) -> list[Observation]:
        return [Observation(int(self.snapshot.canary_running))]

    def _age(self, options: CallbackOptions) -> list[Observation]:
        age = self.snapshot.last_cycle_age_seconds
        return [] if age is None else [Observation(age)]
