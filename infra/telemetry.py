"""OpenTelemetry: a span per transition and a span per cycle, with the cycle id.

Spans are made after commit from the recorded transitions, with the times
the core used, so traces agree with the audit log. Quiet by default
(``telemetry.exporter: none``); ``console`` prints spans, ``otlp`` exports
them (needs the ``otlp`` extra).
"""

from __future__ import annotations

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.sdk.resources import Resource

from ..schemas.config import TelemetryConfig
from ..schemas.errors import ConfigError
from ..schemas.messages import parse_time
from ..statemachine.definition import TERMINAL
from ..statemachine.step import Step


def _ns(at: str) -> int:
    return int(parse_time(at).timestamp() * 1e9)


class Telemetry:
    def __init__(self, config: TelemetryConfig):
        self.provider = TracerProvider(resource=Resource.create({"service.name": "vvtv-autopilot"}))
        if config.exporter == "console":
            self.provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
        elif config.exporter == "otlp":
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            except ImportError:
                raise ConfigError([("telemetry.exporter", "otlp", "needs the otlp extra: pip install 'vvtv-autopilot[otlp]'")]) from None
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=config.otlp_endpoint)))
        self.tracer = self.provider.get_tracer("vvtv_autopilot")
        self.spans = 0

    def record(self, step: Step) -> None:
        for t in step.transitions:
            at = _ns(t.at)
            span = self.tracer.start_span(f"transition {t.from_}->{t.to}", start_time=at, attributes={
                "vvtv.cycle_id": t.cycle_id, "vvtv.seq": t.seq, "vvtv.trigger": t.trigger,
                "vvtv.from": t.from_, "vvtv.to": t.to, "vvtv.cause": step.inbound.key})
            span.end(end_time=at)
            self.spans += 1
            if t.to in TERMINAL:
                started = next((r["started_at"] for r in step.cycle_rows if r["cycle_id"] == t.cycle_id), t.at)
                cycle = self.tracer.start_span("cycle", start_time=_ns(started), attributes={
                    "vvtv.cycle_id": t.cycle_id, "vvtv.outcome": t.to, "vvtv.transitions": t.seq})
                cycle.end(end_time=max(at, _ns(started)))
                self.spans += 1

    def shutdown(self) -> None:
        self.provider.shutdown()
