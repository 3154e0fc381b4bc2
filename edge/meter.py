"""Metering: what a proxied request used and cost, as its usage event, metrics, log and span;
and the event of a known key's request that the edge refused.

The event is made (and handed to publication) the moment the answer is complete, before
the client has its last bytes; the rest is bookkeeping once the exchange is over.
"""

import time
from dataclasses import dataclass, field

from edge import metrics
from edge.accesslog import AccessLog
from edge.errors import EdgeError
from edge.events import UsageEvent
from edge.limits import Admission
from edge.metering import count_tokens, new_event, prompt_text
from edge.proxy import Exchange
from edge.publication import Publisher
from edge.records import KeyRecord, Price
from edge.tracing import Tracing


@dataclass(slots=True)
class MeteredRequest:
    record: KeyRecord
    endpoint: str
    model: str
    route: str  # the configured route's name or pattern: the metrics' model label
    payload: dict
    stream: bool
    admission: Admission | None
    price: Price | None
    request_id: str
    started: float  # perf_counter
    started_wall: float
    span: object = None
    event: UsageEvent | None = field(default=None)


class Meter:
    def __init__(self, publisher: Publisher, access_log: AccessLog, tracing: Tracing):
        self.publisher = publisher
        self.access_log = access_log
        self.tracing = tracing

    def answered(self, request: MeteredRequest, exchange: Exchange) -> None:
        """Make the request's event and hand it to publication (journaled at once)."""
        if request.event is not None:
            return
        ended = time.perf_counter()
        ended_wall = time.time()  # before any token counting, which is not the request's time
        estimated = False
        if exchange.usage is not None:
            input_tokens, output_tokens, cached = exchange.usage
        elif exchange.status and exchange.status < 400 or exchange.disconnected:
            input_tokens = count_tokens(prompt_text(request.payload))
            output_tokens = count_tokens(exchange.output_text())
            cached = 0
            estimated = True
        else:
            input_tokens = output_tokens = cached = 0
        status = 499 if exchange.disconnected else exchange.status
        price = request.price
        request.event = new_event(
            request_id=request.request_id,
            key_id=request.record.key_id,
            org_id=request.record.org_id,
            environment=request.record.environment,
            endpoint=request.endpoint,
            model=request.model,
            stream=request.stream,
            status=status,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cached_tokens=cached,
            estimated=estimated,
            cost_micro_minor=price.cost_micro_minor(input_tokens, output_tokens, cached) if price else 0,
            latency_ms=round((ended - request.started) * 1000, 3),
            ttft_ms=round((exchange.first_byte - request.started) * 1000, 3) if exchange.first_byte else None,
            upstream=exchange.upstream_url,
            started_at_ms=int(request.started_wall * 1000),
            ended_at_ms=int(ended_wall * 1000),
            secret_id=request.record.secret_id,
        )
        self.publisher.record(request.event, request.admission)

    def refused(
        self,
        error: EdgeError,
        *,
        record: KeyRecord,
        endpoint: str,
        model: str,
        stream: bool,
        request_id: str,
        started: float,
    ) -> None:
        """Make the event of a known key's request the edge refused and hand it to publication:
        no tokens, no cost, and the reason. Its metrics and log line are the error's (Edge.handle)."""
        elapsed = time.perf_counter() - started
        ended_wall = time.time()
        event = new_event(
            request_id=request_id,
            key_id=record.key_id,
            org_id=record.org_id,
            environment=record.environment,
            endpoint=endpoint,
            model=model,
            stream=stream,
            status=error.status,
            input_tokens=0,
            output_tokens=0,
            cached_tokens=0,
            estimated=False,
            cost_micro_minor=0,
            latency_ms=round(elapsed * 1000, 3),
            ttft_ms=None,
            upstream="",
            started_at_ms=int((ended_wall - elapsed) * 1000),
            ended_at_ms=int(ended_wall * 1000),
            refusal=error.refusal,
            secret_id=record.secret_id,
        )
        self.publisher.record(event, None)

    def finished(self, request: MeteredRequest, exchange: Exchange) -> None:
        """The exchange is over (answered, failed or abandoned): its event, metrics, log and span."""
        if request.event is None:
            self.answered(request, exchange)
        event = request.event
        total = time.perf_counter() - request.started
        if exchange.first_byte and exchange.upstream_started:
            metrics.TTFT.observe(exchange.first_byte - request.started)
        metrics.TOTAL.observe(total)
        metrics.UPSTREAM.observe(
            time.perf_counter() - exchange.upstream_started if exchange.upstream_started else 0.0
        )
        if exchange.first_byte and exchange.upstream_started and not request.stream:
            metrics.OVERHEAD.observe(max(total - (exchange.first_byte - exchange.upstream_started), 0.0))
        elif exchange.upstream_started:
            metrics.OVERHEAD.observe(max(exchange.upstream_started - request.started, 0.0))
        metrics.REQUESTS.labels(str(event["status"]), request.route, str(request.record.org_id)).inc()
        self.access_log.write(
            request_id=request.request_id,
            method="POST",
            path="/v1/" + request.endpoint.replace(".", "/"),
            status=event["status"],
            model=request.model,
            org_id=request.record.org_id,
            key_id=request.record.key_id,
            stream=request.stream,
            input_tokens=event["input_tokens"],
            output_tokens=event["output_tokens"],
            latency_ms=event["latency_ms"],
            upstream=exchange.upstream_url,
        )
        self.tracing.end(
            request.span,
            **{
                "http.response.status_code": event["status"],
                "gen_ai.request.model": request.model,
                "gen_ai.usage.input_tokens": event["input_tokens"],
                "gen_ai.usage.output_tokens": event["output_tokens"],
                "tollgate.request_id": request.request_id,
                "tollgate.org_id": request.record.org_id,
                "tollgate.key_id": request.record.key_id,
                "tollgate.upstream": exchange.upstream_url or None,
            },
        )
