"""OpenTelemetry spans for proxied requests, only when an OTLP exporter is configured.

Set ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) and every proxied
request becomes a server span, child of the caller's ``traceparent`` when there is one; the
upstream receives the span's own ``traceparent``. Without the variable nothing is imported and
the hot path pays nothing.
"""

import os
import time


class Tracing:
    def __init__(self):
        self.tracer = None
        self._provider = None
        self._propagator = None

    def start(self, env=None) -> None:
        env = os.environ if env is None else env
        if not (env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
            return
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        service = env.get("OTEL_SERVICE_NAME", "tollgate-edge")
        self._provider = TracerProvider(resource=Resource.create({"service.name": service}))
        self._provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        self.tracer = self._provider.get_tracer("tollgate.edge")
        self._propagator = TraceContextTextMapPropagator()

    def begin(self, name: str, traceparent: str | None, started_wall: float):
        """Start a server span; return (span, traceparent for the upstream), or (None, None)."""
        if self.tracer is None:
            return None, None
        from opentelemetry import trace

        parent = self._propagator.extract({"traceparent": traceparent}) if traceparent else None
        span = self.tracer.start_span(
            name, context=parent, kind=trace.SpanKind.SERVER, start_time=int(started_wall * 1e9)
        )
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, context=trace.set_span_in_context(span))
        return span, carrier.get("traceparent")

    @staticmethod
    def end(span, **attributes) -> None:
        if span is None:
            return
        for name, value in attributes.items():
            if value is not None:
                span.set_attribute(name, value)
        status = attributes.get("http.response.status_code") or 0
        if status >= 500:
            from opentelemetry.trace import Status, StatusCode

            span.set_status(Status(StatusCode.ERROR))
        span.end(end_time=time.time_ns())

    def shutdown(self) -> None:
        if self._provider is not None:
            self._provider.shutdown()
