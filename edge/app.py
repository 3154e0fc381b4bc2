"""The edge: plain ASGI in front of OpenAI-compatible model servers.

Per request: check the key's shape and checksum (no I/O), find its record (in-process
cache, else Redis), check model, address and standing, admit it against limits and budgets
(one Redis script), proxy it to an upstream (streaming both ways), then, off the response
path, settle the limits and emit one usage event (or spool it when Redis is down).
"""

import asyncio
import logging
import random
import time
from collections import OrderedDict
from dataclasses import dataclass

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from edge import keyformat, metrics
from edge.accesslog import AccessLog
from edge.batching import ScriptBatcher
from edge.config import EdgeConfig, Route, Upstream
from edge.errors import EdgeError, invalid_key
from edge.limits import Admission, Limiter, Refusal
from edge.metering import (
    SSEUsage,
    count_tokens,
    estimate_prompt_tokens,
    max_output_tokens,
    new_event,
    output_text,
    prompt_text,
    usage_from,
    uuid7,
)
from edge.records import (
    INVALIDATE_CHANNEL,
    KEY_PREFIX,
    PRICE_PREFIX,
    KeyRecord,
    Price,
    RecordError,
    parse_key_record,
    parse_price,
)
from edge.resp import RespConnection, RespError
from edge.spool import Spool
from edge.tracing import Tracing
from edge.upstream import ConnectTimeout, ReadTimeout, UpstreamClient, UpstreamError, UpstreamResponse

logger = logging.getLogger("tollgate.edge")

USAGE_STREAM = "tg:usage"
# In the spool: this request's settlement (and served count) already took effect; replay its event only.
SETTLED = "settled"
PUBLISH_BATCH_SECONDS = 0.002
PROXIED = {
    "/v1/chat/completions": "chat.completions",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
}
HOP_BY_HOP = {
    b"connection",
    b"keep-alive",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"te",
    b"trailer",
    b"trailers",
    b"transfer-encoding",
    b"upgrade",
}
# The edge sets these itself (x-request-id, traceparent, content-type, accept-encoding) or must
# not pass them on (the client's key; expect, since the edge sends the body it already holds).
NOT_FORWARDED = HOP_BY_HOP | {
    b"host",
    b"authorization",
    b"x-api-key",
    b"content-length",
    b"content-type",
    b"accept-encoding",
    b"expect",
    b"x-request-id",
    b"traceparent",
}
NOT_RETURNED = HOP_BY_HOP | {b"content-length", b"content-encoding", b"server", b"date", b"x-request-id"}
JSON = [(b"content-type", b"application/json")]


@dataclass(slots=True)
class _CacheEntry:
    record: KeyRecord | None
    at: float


class AuthCache:
    """A bounded LRU of key records (None = known unknown), dropped on invalidation."""

    def __init__(self, size: int):
        self.size = size
        self._data: OrderedDict[str, _CacheEntry] = OrderedDict()

    def get(self, secret_hash: str) -> _CacheEntry | None:
        entry = self._data.get(secret_hash)
        if entry is not None:
            self._data.move_to_end(secret_hash)
        return entry

    def put(self, secret_hash: str, record: KeyRecord | None) -> None:
        self._data[secret_hash] = _CacheEntry(record, time.monotonic())
        self._data.move_to_end(secret_hash)
        while len(self._data) > self.size:
            self._data.popitem(last=False)

    def drop(self, hashes) -> None:
        for secret_hash in hashes:
            self._data.pop(secret_hash, None)

    def clear(self) -> None:
        self._data.clear()


class UpstreamPool:
    """Least in-flight requests per unit of weight; ties broken at random."""

    def __init__(self):
        self.inflight: dict[str, int] = {}

    def order(self, route: Route) -> tuple[Upstream, ...] | list[Upstream]:
        if len(route.upstreams) == 1:
            return route.upstreams

        def load(upstream: Upstream) -> tuple[float, float]:
            return (self.inflight.get(upstream.url, 0) / upstream.weight, random.random())

        return sorted(route.upstreams, key=load)


class Edge:
    def __init__(self, config: EdgeConfig):
        self.config = config
        self.cache = AuthCache(config.auth_cache_size)
        self.prices: dict[str, tuple[Price | None, float]] = {}
        self.pool = UpstreamPool()
        self.redis: aioredis.Redis | None = None
        self.upstreams = UpstreamClient(keepalive_seconds=60)
        self.limiter: Limiter | None = None
        self.spool = Spool(config.spool_dir, fsync_ms=config.spool_fsync_ms)
        self.access_log = AccessLog(enabled=config.access_log)
        self.tracing = Tracing()
        self._tasks: set[asyncio.Task] = set()
        self._outbox: list[tuple[dict, list | None]] = []
        self._outbox_timer: asyncio.TimerHandle | None = None
        self._in_flight: set[asyncio.Future] = set()  # the last reply of each batch on its way
        self._background: list[asyncio.Task] = []
        self.redis_ok = True

    # --- lifecycle -------------------------------------------------------------------
    async def startup(self) -> None:
        self.redis = aioredis.Redis.from_url(
            self.config.redis_url, socket_timeout=2, socket_connect_timeout=1, health_check_interval=15
        )
        self.limiter = Limiter(self.redis, self.config.lease_ttl_seconds)
        self.resp = RespConnection(self.config.redis_url)
        self.limiter.batcher = ScriptBatcher(self.resp, self.limiter.scripts())
        try:
            await self.limiter.batcher.load()
        except (RedisError, OSError):
            pass  # Redis may be down at start; scripts are loaded again on first use
        self.tracing.start()
        self._background = [
            asyncio.create_task(self._listen_invalidations()),
            asyncio.create_task(self.spool.run_fsync()),
            asyncio.create_task(self.access_log.run()),
            asyncio.create_task(self._replay_spool()),
        ]
        # Load the tokenizer now, off the event loop, rather than on the first request that
        # needs an estimate (loading blocks for a few hundred milliseconds).
        asyncio.get_running_loop().run_in_executor(None, count_tokens, "warm up")

    async def shutdown(self) -> None:
        if self._outbox_timer is not None:
            self._outbox_timer.cancel()
            self._publish_outbox()
        if self._in_flight:
            await asyncio.wait(self._in_flight, timeout=5)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=10)
        for task in self._background:
            task.cancel()
        self.access_log.flush()
        self.tracing.shutdown()
        if getattr(self, "resp", None) is not None:
            self.resp.close()
        self.spool.close()
        self.upstreams.close()
        if self.redis is not None:
            await self.redis.aclose()

    async def _listen_invalidations(self) -> None:
        """Drop cache entries named on tg:invalidate; clear all after a lost connection."""
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(INVALIDATE_CHANNEL)
                self.cache.clear()  # anything may have changed while we were not listening
                self.prices.clear()
                async for message in pubsub.listen():
                    try:
                        data = orjson.loads(message["data"])
                    except (orjson.JSONDecodeError, TypeError):
                        continue
                    self.cache.drop(data.get("hashes") or [])
                    for model in data.get("prices") or []:
                        self.prices.pop(model, None)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError):
                await asyncio.sleep(0.5)
            finally:
                try:
                    await pubsub.aclose()
                except (RedisError, OSError):
                    pass

    async def _replay_spool(self) -> None:
        while True:
            await asyncio.sleep(1)
            if not self.spool.has_backlog():
                continue
            try:
                await self.redis.ping()
                await self.spool.replay(self._xadd_batch)
                metrics.SPOOL_PENDING.set(self.spool.pending)
            except (RedisError, OSError):
                continue

    async def _xadd_batch(self, events: list[dict]) -> None:
        """Replay spooled events exactly as ``finish`` would have recorded them."""
        batch = []
        for spooled in events:
            event = dict(spooled)
            settle = event.pop("_settle", None)
            if event.pop("_settled", False):
                settle = SETTLED
            batch.append((event, settle))
        await self._record_batch(batch)

    def _batch_commands(self, batch: list[tuple[dict, list | None]]) -> list[tuple]:
        """Per request: its settlement with the served counters (one script), and its event."""
        commands = []
        for event, settle in batch:
            if settle != SETTLED:
                commands.append(self.limiter.settle_command(settle, event))
            commands.append(("XADD", USAGE_STREAM, "*", "data", orjson.dumps(event)))
        return commands

    async def _record_batch(self, batch: list[tuple[dict, list | None]]) -> None:
        """Record settlements, served counters and usage events in one round trip; raise
        RedisError or OSError if they could not all be recorded."""
        await self._complete_batch(self._batch_commands(batch), None)

    async def _complete_batch(self, commands: list[tuple], results: list | None) -> None:
        """Send the commands (unless ``results`` holds their replies) and make sure each took.

        A Redis that restarted has forgotten the scripts: load them and send again only the
        script calls that failed (the events already went in). Other errors propagate.
        """
        if results is None:
            results = await self.resp.execute(commands)
        for result in results:
            if isinstance(result, OSError):
                raise result
        retry = [
            commands[index]
            for index, result in enumerate(results)
            if isinstance(result, RespError) and result.is_noscript
        ]
        failures = [r for r in results if isinstance(r, RespError) and not r.is_noscript]
        if failures:
            raise failures[0]
        if retry:
            await self.limiter.batcher.load()
            for result in await self.resp.execute(retry):
                if isinstance(result, RespError):
                    raise result

    # --- ASGI -----------------------------------------------------------------------
    async def __call__(self, scope, receive, send):
        kind = scope["type"]
        if kind == "http":
            await self.handle(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive, send):
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:  # noqa: BLE001 - reported to the server
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def handle(self, scope, receive, send):
        started = time.perf_counter()
        path = scope["path"]
        method = scope["method"]
        request_id = _header(scope, b"x-request-id") or uuid7()
        try:
            if path in PROXIED:
                if method != "POST":
                    raise EdgeError(
                        405,
                        f"Method {method} not allowed on {path}.",
                        code="method_not_allowed",
                        headers=[(b"allow", b"POST")],
                    )
                await self.proxy(scope, receive, send, PROXIED[path], request_id, started)
                return
            if path == "/v1/models" and method == "GET":
                record = await self.authenticate(scope)
                metrics.REQUESTS.labels("200", "", str(record.org_id)).inc()
                await _respond(send, 200, self.models_body(record), request_id)
            elif path == "/healthz":
                await _respond(send, 200, b'{"status":"ok"}', request_id)
            elif path == "/readyz":
                await self.readyz(send, request_id)
            elif path == "/metrics":
                await _respond(
                    send, 200, metrics.render(), request_id, content_type=b"text/plain; version=0.0.4"
                )
            else:
                raise EdgeError(404, f"Unknown request URL: {method} {path}.", code="unknown_url")
        except EdgeError as error:
            if not error.metered:
                org = "" if error.org_id is None else str(error.org_id)
                metrics.REQUESTS.labels(str(error.status), error.model, org).inc()
                self.access_log.write(
                    request_id=request_id,
                    method=method,
                    path=path,
                    status=error.status,
                    error=error.code,
                    latency_ms=round((time.perf_counter() - started) * 1000, 3),
                )
            await _respond(send, error.status, error.body(), request_id, extra=error.headers)

    async def readyz(self, send, request_id):
        try:
            await self.redis.ping()
            await _respond(send, 200, b'{"status":"ok","redis":"ok"}', request_id)
        except (RedisError, OSError):
            await _respond(send, 503, b'{"status":"unavailable","redis":"error"}', request_id)

    def models_body(self, record: KeyRecord) -> bytes:
        names = sorted(
            {
                route.pattern
                for route in self.config.routes
                if not any(ch in route.pattern for ch in "*?[") and record.allows_model(route.pattern)
            }
        )
        return orjson.dumps(
            {
                "object": "list",
                "data": [
                    {"id": name, "object": "model", "created": 0, "owned_by": "tollgate"} for name in names
                ],
            }
        )

    # --- authentication ---------------------------------------------------------------
    async def authenticate(self, scope) -> KeyRecord:
        token = _bearer(scope)
        if token is None:
            raise EdgeError(
                401,
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.",
                code="missing_api_key",
            )
        if not keyformat.is_well_formed(token):
            raise invalid_key(
                "Incorrect API key provided: it is not a Tollgate key (tg_live_… or tg_test_…)."
            )
        secret_hash = keyformat.key_hash(token, self.config.pepper)
        entry = self.cache.get(secret_hash)
        now = time.monotonic()
        if entry is not None and now - entry.at < self.config.auth_cache_ttl:
            metrics.AUTH_CACHE_HIT.inc()
            record = entry.record
        else:
            try:
                raw = await self.redis.get(KEY_PREFIX + secret_hash)
                record = parse_key_record(raw) if raw is not None else None
                self.cache.put(secret_hash, record)
                metrics.AUTH_CACHE.labels("miss").inc()
            except (RedisError, OSError):
                if entry is not None and now - entry.at < self.config.stale_auth_seconds:
                    metrics.AUTH_CACHE.labels("stale").inc()
                    record = entry.record
                else:
                    raise EdgeError(
                        503,
                        "The key store is unreachable; retry shortly.",
                        type="server_error",
                        code="service_unavailable",
                        headers=[(b"retry-after", b"1")],
                    ) from None
            except RecordError:
                logger.exception("unreadable key record")
                record = None
        if record is None:
            raise invalid_key()
        reason = record.refusal()
        if reason == "revoked":
            raise invalid_key("This API key has been revoked.")
        if reason == "expired":
            raise invalid_key("This API key has expired.")
        if reason == "rotated":
            raise invalid_key(
                "This API key secret was rotated and its grace period has ended. Use the new secret."
            )
        if reason == "suspended":
            raise EdgeError(
                402,
                "Your organization is suspended. Settle the outstanding balance in the Tollgate console to resume.",
                type="insufficient_quota",
                code="organization_suspended",
            )
        client_ip = self._client_ip(scope)
        if not record.allows_ip(client_ip):
            raise EdgeError(
                403,
                f"Requests from {client_ip} are not allowed for this API key.",
                type="permission_error",
                code="ip_not_allowed",
            )
        return record

    def _client_ip(self, scope) -> str | None:
        if self.config.trust_forwarded_for:
            forwarded = _header(scope, b"x-forwarded-for")
            if forwarded:
                return forwarded.split(",")[0].strip()
        client = scope.get("client")
        return client[0] if client else None

    async def price(self, model: str) -> Price | None:
        cached = self.prices.get(model)
        now = time.monotonic()
        if cached is not None and now - cached[1] < 30:
            return cached[0]
        try:
            raw = await self.redis.get(PRICE_PREFIX + model)
            price = parse_price(raw) if raw is not None else None
        except (RedisError, OSError, RecordError):
            return cached[0] if cached is not None else None
        self.prices[model] = (price, now)
        return price

    # --- proxying -----------------------------------------------------------------------
    async def proxy(self, scope, receive, send, endpoint: str, request_id: str, started: float):
        record = await self.authenticate(scope)
        try:
            await self._proxy(record, scope, receive, send, endpoint, request_id, started)
        except EdgeError as error:
            error.org_id = record.org_id
            raise

    async def _proxy(self, record, scope, receive, send, endpoint: str, request_id: str, started: float):
        body = await _read_body(receive, self.config.body_limit_bytes)
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise EdgeError(
                400, "We could not parse the JSON body of your request.", code="invalid_json"
            ) from None
        if not isinstance(payload, dict):
            raise EdgeError(400, "The request body must be a JSON object.", code="invalid_json")
        model = payload.get("model")
        if not isinstance(model, str) or not model:
            raise EdgeError(400, "You must provide a model parameter.", param="model", code="missing_model")
        route = self.config.route_for(model)
        if route is None:
            raise EdgeError(
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                param="model",
                code="model_not_found",
            )
        if not record.allows_model(model):
            error = EdgeError(
                403,
                f"This API key is not allowed to use the model `{model}`.",
                type="permission_error",
                param="model",
                code="model_not_allowed",
            )
            error.model = model  # a routed name: the metric's label values stay a bounded set
            raise error
        stream = bool(payload.get("stream")) and endpoint != "embeddings"
        client_wants_usage = False
        if stream:
            options = payload.get("stream_options")
            client_wants_usage = isinstance(options, dict) and bool(options.get("include_usage"))
            if not client_wants_usage:
                payload["stream_options"] = {
                    **(options if isinstance(options, dict) else {}),
                    "include_usage": True,
                }
                body = orjson.dumps(payload)
        estimated_prompt = estimate_prompt_tokens(payload)
        estimated_output = (
            0 if endpoint == "embeddings" else max_output_tokens(payload, self.config.default_max_tokens)
        )
        price = await self.price(model)
        reserved = price.cost_micro_minor(estimated_prompt, estimated_output) if price else 0
        try:
            admission = await self._admit(record, estimated_prompt + estimated_output, reserved)
        except EdgeError as error:
            error.model = model
            raise
        exchange = _Exchange(
            edge=self,
            record=record,
            endpoint=endpoint,
            model=model,
            payload=payload,
            stream=stream,
            drop_usage_chunk=stream and not client_wants_usage,
            admission=admission,
            price=price,
            request_id=request_id,
            started=started,
            started_wall=time.time(),
        )
        await exchange.run(scope, receive, send, route, body)

    async def _admit(self, record: KeyRecord, tokens: int, cost: int) -> Admission | None:
        try:
            result = await self.limiter.admit(record, estimated_tokens=tokens, reserved_cost=cost)
        except (RedisError, OSError):
            # Redis is down: a known key keeps working from the cache; limits resume with it.
            return None
        if isinstance(result, Refusal):
            metrics.REFUSALS.labels(result.scope, result.kind).inc()
            raise _refusal_error(result)
        return result

    def finish(self, event: dict, admission: Admission | None) -> None:
        """Queue the settlement and the usage event; they are sent in batches, off the response path."""
        settle = None
        if admission is not None:
            keys, args = self.limiter.settle_args(
                admission,
                tokens=event["input_tokens"] + event["output_tokens"],
                cost=event["cost_micro_minor"],
            )
            settle = [keys, args]
        self._outbox.append((event, settle))
        if self._outbox_timer is None:
            # Let the other requests finishing now join this batch: one round trip for all.
            self._outbox_timer = asyncio.get_running_loop().call_later(
                PUBLISH_BATCH_SECONDS, self._publish_outbox
            )

    def _publish_outbox(self) -> None:
        """Write the batch now; a callback checks the replies when the last one is in.

        Only when something went wrong (Redis away, scripts forgotten) does a task take over,
        to load the scripts and send again, or to spool the batch.
        """
        self._outbox_timer = None
        batch, self._outbox = self._outbox, []
        if not batch:
            return
        commands = self._batch_commands(batch)
        replies = self.resp.send_nowait(commands)
        if replies is None:
            self._spawn(self._publish_slowly(batch, commands, None))
            return
        last = replies[-1]
        self._in_flight.add(last)

        def check(_last: asyncio.Future) -> None:
            self._in_flight.discard(last)
            results = [reply.exception() or reply.result() for reply in replies]
            if any(isinstance(result, Exception) for result in results):
                self._spawn(self._publish_slowly(batch, commands, results))

        last.add_done_callback(check)

    async def _publish_slowly(self, batch, commands: list[tuple], results: list | None) -> None:
        try:
            await self._complete_batch(commands, results)
        except (RedisError, OSError):
            metrics.PUBLISH_FAILURES.inc()
            for record in _spool_records(batch, results):
                self.spool.append(record)
                metrics.SPOOLED.inc()
            metrics.SPOOL_PENDING.set(self.spool.pending)

    def _spawn(self, coroutine) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _spool_records(batch: list[tuple[dict, list | None]], results: list | None) -> list[dict]:
    """What to spool of a batch Redis did not wholly take. ``results`` are its replies, two per
    request (settlement, event) in order, or None when nothing is known to have arrived.

    Replies come in order, so those before a break took effect: a request Redis confirmed is
    not spooled, and one whose settlement it confirmed but not its event is spooled to replay
    the event only, so that no settlement is applied twice. Otherwise the settlement waits in
    the spool with its event: the budget reservation is corrected and the lease released when
    Redis is back, not only the event sent.
    """
    records = []
    for index, (event, settle) in enumerate(batch):
        settled = results is not None and not isinstance(results[2 * index], Exception)
        recorded = results is not None and not isinstance(results[2 * index + 1], Exception)
        if settled and recorded:
            continue
        if settled:
            records.append({**event, "_settled": True})
        else:
            records.append({**event, "_settle": settle} if settle else event)
    return records


class _Exchange:
    """One proxied request: upstream choice and failover, streaming, and its usage event."""

    def __init__(
        self,
        *,
        edge: Edge,
        record,
        endpoint,
        model,
        payload,
        stream,
        drop_usage_chunk,
        admission,
        price,
        request_id,
        started,
        started_wall,
    ):
        self.edge = edge
        self.record = record
        self.endpoint = endpoint
        self.model = model
        self.payload = payload
        self.stream = stream
        self.drop_usage_chunk = drop_usage_chunk
        self.admission = admission
        self.price = price
        self.request_id = request_id
        self.started = started
        self.started_wall = started_wall
        self.status = 0
        self.usage: tuple[int, int, int] | None = None
        self.text = ""
        self.sse: SSEUsage | None = None
        self.first_byte: float | None = None
        self.upstream_started: float | None = None
        self.upstream_url = ""
        self.disconnected = False
        self.span = None

    async def run(self, scope, receive, send, route: Route, body: bytes):
        headers = self._upstream_headers(scope)
        task = asyncio.current_task()
        # Watch from the start: a client that leaves before the upstream's first byte (a
        # non-streamed answer still being generated) cancels the upstream request too.
        watcher = asyncio.create_task(_watch_disconnect(receive, task))
        response = None
        try:
            response = await self._connect(route, body, headers)
            await self._relay(response, send)
        except EdgeError as error:
            self.status = error.status
            error.metered = True  # _meter below counts it, logs it and emits its usage event
            raise
        except asyncio.CancelledError:
            if not watcher.done() or watcher.cancelled() or not watcher.result():
                raise
            self.disconnected = True
            # Swallow only the cancellation that the client's disconnect caused.
            task.uncancel()
        finally:
            watcher.cancel()
            if response is not None:
                response.release()
                self.edge.pool.inflight[self.upstream_url] -= 1
            self._meter()

    def _upstream_headers(self, scope) -> list[tuple[bytes, bytes]]:
        connection = _header(scope, b"connection")
        # Headers the client names in Connection are hop-by-hop too (RFC 9110, 7.6.1).
        named = (
            {token.strip().lower().encode("latin-1") for token in connection.split(",")} if connection else ()
        )
        headers = [
            (name, value)
            for name, value in scope["headers"]
            if name not in NOT_FORWARDED and name not in named
        ]
        headers.append((b"x-request-id", self.request_id.encode()))
        traceparent = _header(scope, b"traceparent")
        self.span, own_traceparent = self.edge.tracing.begin(
            f"POST /v1/{self.endpoint.replace('.', '/')}", traceparent, self.started_wall
        )
        if own_traceparent:
            traceparent = own_traceparent
        elif not traceparent:
            traceparent = f"00-{uuid7().replace('-', '')}-{random.getrandbits(64):016x}-01"
        headers.append((b"traceparent", traceparent.encode("latin-1")))
        headers.append((b"content-type", b"application/json"))
        headers.append((b"accept-encoding", b"identity"))
        return headers

    async def _connect(
        self, route: Route, body: bytes, headers: list[tuple[bytes, bytes]]
    ) -> UpstreamResponse:
        """Send the request, trying the next upstream on a connection failure or 502/503."""
        edge = self.edge
        path = ("/v1/" + self.endpoint.replace(".", "/")).encode()
        last_error: EdgeError | None = None
        candidates = edge.pool.order(route)
        for attempt, upstream in enumerate(candidates):
            if attempt:
                metrics.UPSTREAM_FAILOVERS.inc()
            send_headers = headers
            if upstream.api_key:
                send_headers = [*headers, (b"authorization", f"Bearer {upstream.api_key}".encode("latin-1"))]
            edge.pool.inflight[upstream.url] = edge.pool.inflight.get(upstream.url, 0) + 1
            self.upstream_url = upstream.url
            self.upstream_started = time.perf_counter()
            try:
                response = await edge.upstreams.post(
                    upstream.url,
                    path,
                    send_headers,
                    body,
                    connect_timeout=upstream.connect_timeout,
                    read_timeout=upstream.read_timeout,
                )
            except asyncio.CancelledError:
                edge.pool.inflight[upstream.url] -= 1
                raise
            except (ConnectTimeout, ReadTimeout) as exc:
                edge.pool.inflight[upstream.url] -= 1
                last_error = EdgeError(
                    504,
                    "The model server did not answer in time.",
                    type="server_error",
                    code="upstream_timeout",
                )
                if isinstance(exc, ReadTimeout):
                    # The upstream has the request and may be generating: another would run it twice.
                    break
                continue
            except UpstreamError:
                edge.pool.inflight[upstream.url] -= 1
                last_error = EdgeError(
                    502,
                    "The model server could not be reached.",
                    type="server_error",
                    code="upstream_unavailable",
                )
                continue
            if response.status in (502, 503) and attempt < len(candidates) - 1:
                response.release()
                edge.pool.inflight[upstream.url] -= 1
                continue
            return response
        raise last_error

    async def _relay(self, response: UpstreamResponse, send):
        self.status = response.status
        headers = [(name, value) for name, value in response.headers if name not in NOT_RETURNED]
        headers.append((b"x-request-id", self.request_id.encode()))
        if self.admission is not None:
            headers += self.admission.headers
        if not (response.header(b"content-type") or b"").startswith(b"text/event-stream"):
            try:
                data = await response.read()
            except UpstreamError as exc:
                # Nothing has gone to the client yet: say what happened instead of a torn answer.
                timed_out = isinstance(exc, ReadTimeout)
                raise EdgeError(
                    504 if timed_out else 502,
                    "The model server did not finish its answer in time."
                    if timed_out
                    else "The model server broke off its answer.",
                    type="server_error",
                    code="upstream_timeout" if timed_out else "upstream_unavailable",
                ) from None
            self.first_byte = time.perf_counter()
            headers.append((b"content-length", str(len(data)).encode()))
            await send({"type": "http.response.start", "status": response.status, "headers": headers})
            await send({"type": "http.response.body", "body": data})
            self._read_json_usage(data)
            return
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        sse = SSEUsage(drop_usage_chunk=self.drop_usage_chunk)
        try:
            while (chunk := await response.next_chunk()) is not None:
                if self.first_byte is None:
                    self.first_byte = time.perf_counter()
                out = sse.feed(chunk)
                if out:
                    await send({"type": "http.response.body", "body": out, "more_body": True})
            rest = sse.flush()
            await send({"type": "http.response.body", "body": rest, "more_body": False})
        except UpstreamError:
            # The upstream broke off or went quiet mid-stream: end the client's stream; meter what came.
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            self.usage = sse.usage
            self.sse = sse

    def _read_json_usage(self, data: bytes) -> None:
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if isinstance(obj, dict):
            self.usage = usage_from(obj)
            if self.usage is None:
                self.text = output_text(obj)

    def _meter(self) -> None:
        ended = time.perf_counter()
        ended_wall = time.time()  # before any token counting, which is not the request's time
        estimated = False
        if self.usage is not None:
            input_tokens, output_tokens, cached = self.usage
        elif self.status and self.status < 400 or self.disconnected:
            input_tokens = count_tokens(prompt_text(self.payload))
            output_tokens = count_tokens(self.sse.text() if self.sse is not None else self.text)
            cached = 0
            estimated = True
        else:
            input_tokens = output_tokens = cached = 0
        status = 499 if self.disconnected else self.status
        cost = self.price.cost_micro_minor(input_tokens, output_tokens, cached) if self.price else 0
        total = ended - self.started
        upstream = ended - self.upstream_started if self.upstream_started else 0.0
        if self.first_byte and self.upstream_started:
            metrics.TTFT.observe(self.first_byte - self.started)
        metrics.TOTAL.observe(total)
        metrics.UPSTREAM.observe(upstream)
        if self.first_byte and self.upstream_started and not self.stream:
            metrics.OVERHEAD.observe(max(total - (self.first_byte - self.upstream_started), 0.0))
        elif self.upstream_started:
            metrics.OVERHEAD.observe(max(self.upstream_started - self.started, 0.0))
        metrics.REQUESTS.labels(str(status), self.model, str(self.record.org_id)).inc()
        event = new_event(
            request_id=self.request_id,
            key_id=self.record.key_id,
            org_id=self.record.org_id,
            environment=self.record.environment,
            endpoint=self.endpoint,
            model=self.model,
            stream=self.stream,
            status=status,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cached_tokens=cached,
            estimated=estimated,
            cost_micro_minor=cost,
            latency_ms=round(total * 1000, 3),
            ttft_ms=round((self.first_byte - self.started) * 1000, 3) if self.first_byte else None,
            upstream=self.upstream_url,
            started_at_ms=int(self.started_wall * 1000),
            ended_at_ms=int(ended_wall * 1000),
        )
        self.edge.access_log.write(
            request_id=self.request_id,
            method="POST",
            path="/v1/" + self.endpoint.replace(".", "/"),
            status=status,
            model=self.model,
            org_id=self.record.org_id,
            key_id=self.record.key_id,
            stream=self.stream,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            latency_ms=event["latency_ms"],
            upstream=self.upstream_url,
        )
        self.edge.tracing.end(
            self.span,
            **{
                "http.response.status_code": status,
                "gen_ai.request.model": self.model,
                "gen_ai.usage.input_tokens": input_tokens,
                "gen_ai.usage.output_tokens": output_tokens,
                "tollgate.request_id": self.request_id,
                "tollgate.org_id": self.record.org_id,
                "tollgate.key_id": self.record.key_id,
                "tollgate.upstream": self.upstream_url or None,
            },
        )
        self.edge.finish(event, self.admission)


async def _watch_disconnect(receive, task: asyncio.Task) -> bool:
    """Cancel the exchange when the client goes away; return whether it did."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            task.cancel()
            return True


def _refusal_error(refusal: Refusal) -> EdgeError:
    retry_after = str(max(1, -(-refusal.reset_ms // 1000)))
    scope = "organization" if refusal.scope == "organization" else "API key"
    if refusal.kind == "budget":
        return EdgeError(
            429,
            f"This request would exceed the {scope}'s monthly budget of {refusal.limit / 100:.2f}: "
            "the edge reserves a request's worst-case cost (prompt and max_tokens) until it ends. "
            "Lower max_tokens, raise the budget in the Tollgate console, or wait for the next month.",
            type="insufficient_quota",
            code="insufficient_quota",
        )
    if refusal.kind == "concurrency":
        message = f"Too many concurrent requests for this {scope} (limit {refusal.limit}). Retry shortly."
        kind = "requests"
    else:
        unit = "requests" if refusal.kind == "requests" else "tokens"
        message = (
            f"Rate limit reached for this {scope}: {refusal.limit} {unit} per minute. "
            f"Retry after {retry_after}s."
        )
        kind = unit
    headers = [(b"retry-after", retry_after.encode())]
    if refusal.kind in ("requests", "tokens"):
        headers += [
            (f"x-ratelimit-limit-{kind}".encode(), str(refusal.limit).encode()),
            (f"x-ratelimit-remaining-{kind}".encode(), str(refusal.remaining).encode()),
            (f"x-ratelimit-reset-{kind}".encode(), f"{retry_after}s".encode()),
        ]
    return EdgeError(429, message, type=kind, code="rate_limit_exceeded", headers=headers)


def _header(scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def _bearer(scope) -> str | None:
    authorization = _header(scope, b"authorization")
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return ""
    api_key = _header(scope, b"x-api-key")
    return api_key.strip() if api_key else None


async def _read_body(receive, limit: int) -> bytes:
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise EdgeError(499, "Client closed the request.", code="client_closed")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise EdgeError(
                413, f"The request body exceeds the {limit} byte limit.", code="request_too_large"
            )
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


async def _respond(
    send, status: int, body: bytes, request_id: str, *, content_type=b"application/json", extra=None
):
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", request_id.encode()),
    ]
    if extra:
        headers += extra
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def create_app(config: EdgeConfig | None = None) -> Edge:
    from edge.config import load_config

    return Edge(config or load_config())
