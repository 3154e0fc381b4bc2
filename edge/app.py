"""The edge: plain ASGI in front of OpenAI-compatible model servers.

Per request: authenticate the key (edge/auth.py), admit it against its price, limits and
budgets (edge/admission.py), proxy it to an upstream (edge/proxy.py), and meter it
(edge/meter.py): its usage event is journaled before the client has the end of the answer
and published to Redis in batches off the response path (edge/publication.py). The model
list a key sees comes from edge/catalogue.py.
"""

import asyncio
import ctypes
import hmac
import ipaddress
import logging
import os
import random
import signal
import time

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from edge import metrics
from edge.accesslog import AccessLog
from edge.admission import Admitter, Prices
from edge.auth import Authenticator, bearer, header
from edge.batching import ScriptBatcher
from edge.catalogue import Catalogue
from edge.cluster import ClusterConnection
from edge.config import MASTER_PID_ENV, EdgeConfig
from edge.errors import EdgeError
from edge.journal import Journal
from edge.limits import SCRIPTS, Limiter
from edge.meter import Meter, MeteredRequest
from edge.metering import uuid7
from edge.proxy import Exchange, UpstreamPool, forward_headers
from edge.publication import Publisher
from edge.records import INVALIDATE_CHANNEL
from edge.requestid import client_request_id
from edge.resp import RespConnection
from edge.spool import Spool
from edge.store import DataPlane
from edge.tracing import Tracing
from edge.upstream import UpstreamClient

logger = logging.getLogger("tollgate.edge")

PROXIED = {
    "/v1/chat/completions": "chat.completions",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
}
ORPHAN_CHECK_SECONDS = 1.0


class Edge:
    def __init__(self, config: EdgeConfig):
        self.config = config
        self.pool = UpstreamPool(config.routes)
        self.upstreams = UpstreamClient(keepalive_seconds=60)
        self.catalogue = Catalogue(config, self.upstreams)
        self.access_log = AccessLog(enabled=config.access_log)
        self.tracing = Tracing()
        self._background: list[asyncio.Task] = []

    # --- lifecycle -------------------------------------------------------------------
    async def startup(self) -> None:
        config = self.config
        # redis-py serves only the invalidation subscription and /readyz; the request path
        # goes through one pipelined connection (edge/resp.py, edge/batching.py).
        self.redis = aioredis.Redis.from_url(
            config.redis_url, socket_timeout=2, socket_connect_timeout=1, health_check_interval=15
        )
        self.resp = (ClusterConnection if config.redis_cluster else RespConnection)(config.redis_url)
        batcher = ScriptBatcher(self.resp, SCRIPTS)
        self.limiter = Limiter(batcher, config.lease_ttl_seconds)
        data_plane = DataPlane(batcher)
        self.auth = Authenticator(config, data_plane)
        self.prices = Prices(data_plane, config.stale_auth_seconds)
        self.admitter = Admitter(config, self.limiter, self.prices)
        self.spool = Spool(config.spool_dir, fsync_ms=config.spool_fsync_ms)
        self.publisher = Publisher(
            self.resp, self.limiter, self.spool, Journal(config.spool_dir), shards=config.usage_stream_shards
        )
        self.meter = Meter(self.publisher, self.access_log, self.tracing)
        self.publisher.recover_journals()
        try:
            await batcher.load()
        except OSError:
            pass  # Redis may be down at start; scripts are loaded again on first use
        self.tracing.start()
        master = int(os.environ.get(MASTER_PID_ENV) or 0)
        if master:
            _exit_with_parent()
        self._background = [
            asyncio.create_task(self._listen_invalidations()),
            asyncio.create_task(self.spool.run_fsync()),
            asyncio.create_task(self.access_log.run()),
            asyncio.create_task(self.publisher.run_replay()),
        ]
        if master:
            self._background.append(asyncio.create_task(_stop_when_orphaned(master)))
        # Load the tokenizer now, off the event loop, rather than on the first request that
        # needs an estimate (loading blocks for a few hundred milliseconds).
        from edge.metering import count_tokens

        asyncio.get_running_loop().run_in_executor(None, count_tokens, "warm up")

    async def shutdown(self) -> None:
        await self.publisher.drain()
        for task in self._background:
            task.cancel()
        self.access_log.flush()
        self.tracing.shutdown()
        self.resp.close()
        self.spool.close()
        self.publisher.journal.close()
        self.upstreams.close()
        await self.redis.aclose()

    async def _listen_invalidations(self) -> None:
        """Drop cache entries named on tg:invalidate; clear all after a lost connection."""
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(INVALIDATE_CHANNEL)
                # Anything may have changed while we were not listening: read everything again
                # before trusting it, but keep it as the stale fallback for a Redis that came
                # back empty.
                self.auth.expire()
                self.prices.expire()
                async for message in pubsub.listen():
                    try:
                        data = orjson.loads(message["data"])
                    except (orjson.JSONDecodeError, TypeError):
                        continue
                    self.auth.drop(data.get("hashes") or [])
                    self.prices.drop(data.get("prices") or [])
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError):
                await asyncio.sleep(0.5)
            finally:
                try:
                    await pubsub.aclose()
                except (RedisError, OSError):
                    pass

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
        request_id = client_request_id(header(scope, b"x-request-id")) or uuid7()
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
            elif path == "/v1/models" and method == "GET":
                record = await self.auth.authenticate(scope)
                metrics.REQUESTS.labels("200", "", str(record.org_id)).inc()
                await respond(send, 200, await self.catalogue.body(record), request_id)
            elif path == "/healthz":
                await respond(send, 200, b'{"status":"ok"}', request_id)
            elif path == "/readyz":
                await self.readyz(send, request_id)
            elif path == "/metrics":
                self._check_metrics_access(scope)
                await respond(
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
            await respond(send, error.status, error.body(), request_id, extra=error.headers)

    def _check_metrics_access(self, scope) -> None:
        """``/metrics`` shows organization ids: it answers the bearer of ``metrics_token`` when
        one is configured, else only clients on this host (loopback)."""
        token = self.config.metrics_token
        if token:
            offered = (bearer(scope) or "").encode()
            if not hmac.compare_digest(offered, token.encode()):
                raise EdgeError(401, "The metrics need the configured bearer token.", code="invalid_api_key")
            return
        client = scope.get("client")
        if not client or not _is_loopback(client[0]):
            raise EdgeError(
                403,
                "The metrics answer clients on this host only; set metrics_token to scrape from elsewhere.",
                type="permission_error",
                code="metrics_forbidden",
            )

    async def readyz(self, send, request_id):
        try:
            await self.redis.ping()
            await respond(send, 200, b'{"status":"ok","redis":"ok"}', request_id)
        except (RedisError, OSError):
            await respond(send, 503, b'{"status":"unavailable","redis":"error"}', request_id)

    # --- proxying -----------------------------------------------------------------------
    async def proxy(self, scope, receive, send, endpoint: str, request_id: str, started: float):
        try:
            record = await self.auth.authenticate(scope)
        except EdgeError as error:
            if error.refusal:
                # A known key refused for its standing or address: its request is in the
                # organization's log, under the model it asked for.
                payload = await _refused_payload(receive, self.config.body_limit_bytes)
                model = payload.get("model")
                known = isinstance(model, str) and 0 < len(model) <= 200 and self.config.route_for(model)
                self.meter.refused(
                    error,
                    record=error.record,
                    endpoint=endpoint,
                    model=model if known else "",
                    stream=bool(payload.get("stream")),
                    request_id=request_id,
                    started=started,
                )
            raise
        try:
            await self._proxy(record, scope, receive, send, endpoint, request_id, started)
        except EdgeError as error:
            error.org_id = record.org_id
            raise

    async def _proxy(self, record, scope, receive, send, endpoint: str, request_id: str, started: float):
        body = await read_body(receive, self.config.body_limit_bytes)
        payload = _json_object(body)
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
        try:
            if not record.allows_model(model):
                raise EdgeError(
                    403,
                    f"This API key is not allowed to use the model `{model}`.",
                    type="permission_error",
                    param="model",
                    code="model_not_allowed",
                    refusal="model_not_allowed",
                )
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
            admission, price = await self.admitter.admit(record, payload, endpoint, model)
        except EdgeError as error:
            error.model = route.pattern  # the metric's label: configured names only, a bounded set
            if error.refusal:
                self.meter.refused(
                    error,
                    record=record,
                    endpoint=endpoint,
                    model=model,
                    stream=bool(payload.get("stream")),
                    request_id=request_id,
                    started=started,
                )
            raise
        request = MeteredRequest(
            record=record,
            endpoint=endpoint,
            model=model,
            route=route.pattern,
            payload=payload,
            stream=stream,
            admission=admission,
            price=price,
            request_id=request_id,
            started=started,
            started_wall=time.time(),
        )
        request.span, traceparent = self.tracing.begin(
            f"POST /v1/{endpoint.replace('.', '/')}", header(scope, b"traceparent"), request.started_wall
        )
        if not traceparent:
            traceparent = header(scope, b"traceparent") or (
                f"00-{uuid7().replace('-', '')}-{random.getrandbits(64):016x}-01"
            )
        exchange = Exchange(
            upstreams=self.upstreams,
            pool=self.pool,
            endpoint=endpoint,
            drop_usage_chunk=stream and not client_wants_usage,
            request_id=request_id,
            extra_headers=admission.headers if admission is not None else [],
            on_answered=lambda exchange: self.meter.answered(request, exchange),
        )
        try:
            await exchange.run(receive, send, route, body, forward_headers(scope, request_id, traceparent))
        except EdgeError as error:
            error.metered = True  # metered below: counted, logged, and its usage event emitted
            raise
        finally:
            self.meter.finished(request, exchange)


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _json_object(body: bytes) -> dict:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise EdgeError(
            400, "We could not parse the JSON body of your request.", code="invalid_json"
        ) from None
    if not isinstance(payload, dict):
        raise EdgeError(400, "The request body must be a JSON object.", code="invalid_json")
    return payload


async def _refused_payload(receive, limit: int) -> dict:
    """Read what a refused request asked for, for its usage event; an unreadable body is {}."""
    try:
        return _json_object(await read_body(receive, limit))
    except EdgeError:
        return {}


def _exit_with_parent() -> None:
    """Have the kernel stop this worker (SIGTERM) when the process that started it dies, so a
    killed master never leaves workers holding the port."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: _stop_when_orphaned covers it


async def _stop_when_orphaned(master: int) -> None:
    """Stop gracefully (SIGTERM to ourselves) once the master is gone (also when it died before
    this worker had started: the kernel's parent-death signal is not sent after the fact)."""
    while True:
        if os.getppid() != master:
            logger.warning("the edge's master process is gone: this worker stops")
            os.kill(os.getpid(), signal.SIGTERM)
            return
        await asyncio.sleep(ORPHAN_CHECK_SECONDS)


async def read_body(receive, limit: int) -> bytes:
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


async def respond(
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
