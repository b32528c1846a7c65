"""OpenTelemetry: a span per transition and per cycle, with the cycle id."""

from __future__ import annotations

from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from vvtv_autopilot.handlers.card import version_id
from vvtv_autopilot.infra.telemetry import Telemetry
from vvtv_autopilot.schemas.config import TelemetryConfig, parse_config
from vvtv_autopilot.schemas.events import Boot, CommandEvent, Inbound
from vvtv_autopilot.statemachine import Autopilot


def test_a_span_per_transition_and_per_cycle_carry_the_cycle_id():
    telemetry = Telemetry(TelemetryConfig())  # quiet by default: no exporter
    exporter = InMemorySpanExporter()
    telemetry.provider.add_span_processor(SimpleSpanProcessor(exporter))
    ap = Autopilot(parse_config({}))
    card = {"selection": {"diversity_weight": 0.35}}
    ap.handle(Inbound(key="b", subject="boot", at="2026-11-26T00:00:00Z", event=Boot(card, version_id(card))))
    ap.state.overrides["selection.diversity_weight"] = {"value": 0.35, "until": "2026-11-27T00:00:00Z"}
    step = ap.handle(Inbound(key="c", subject="ctl.run-now", at="2026-11-26T00:00:05Z",
                             event=CommandEvent("run-now", {"actor": "t"})))
    telemetry.record(step)
    spans = exporter.get_finished_spans()
    names = [s.name for s in spans]
    assert names == ["transition Pending->Analyzing", "transition Analyzing->NoChange", "cycle"]
    cycle_id = step.reply["cycle_id"]
    assert all(s.attributes["vvtv.cycle_id"] == cycle_id for s in spans)
    assert spans[-1].attributes["vvtv.outcome"] == "NoChange"
    telemetry.shutdown()
