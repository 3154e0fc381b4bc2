"""The models a key may call, answered to ``GET /v1/models`` in OpenAI's list shape.

A route named after one model lists that name. A glob route (``demo-*``, ``*``) lists what
its upstreams answer to their own ``GET /v1/models``; each upstream's answer is kept for
``LISTING_TTL_SECONDS`` in each process, and concurrent requests wait for one ask. A model is
listed when the edge would route it to the route that listed it (the first matching route
wins, so a name another route catches is that route's to list) and the key may use it.

An upstream that cannot be reached, is too slow or answers anything but a model list adds
nothing to the list and is logged; it is asked again after ``FAILURE_TTL_SECONDS``, so a dead
upstream does not hold up every request. The list itself never fails.
"""

import asyncio
import logging
import time

import orjson

from edge.config import EdgeConfig, Route, Upstream
from edge.records import KeyRecord
from edge.upstream import UpstreamClient, UpstreamError

logger = logging.getLogger("tollgate.edge")

LISTING_TTL_SECONDS = 60.0
FAILURE_TTL_SECONDS = 5.0
# The whole ask (connect, answer, body): a client listing models waits at most this long.
LISTING_TIMEOUT_SECONDS = 5.0
MODELS_PATH = b"/v1/models"


class Catalogue:
    def __init__(self, config: EdgeConfig, upstreams: UpstreamClient):
        self.config = config
        self.upstreams = upstreams
        self._globs = [route for route in config.routes if _is_glob(route.pattern)]
        self._exact = [route for route in config.routes if not _is_glob(route.pattern)]
        # upstream -> (monotonic time it expires, the models it listed)
        self._listings: dict[Upstream, tuple[float, tuple[dict, ...]]] = {}
        self._asking: dict[Upstream, asyncio.Task] = {}

    async def body(self, record: KeyRecord) -> bytes:
        """Return the list of models ``record`` may call, sorted by id, each id once."""
        listed: dict[str, dict] = {}
        for route in self._exact:
            if self._lists(route, route.pattern, record):
                listed[route.pattern] = {
                    "id": route.pattern,
                    "object": "model",
                    "created": 0,
                    "owned_by": "tollgate",
                }
        asked = [(route, upstream) for route in self._globs for upstream in route.upstreams]
        listings = await asyncio.gather(*(self._listing(upstream) for _, upstream in asked))
        for (route, _), models in zip(asked, listings, strict=True):
            for model in models:
                if model["id"] not in listed and self._lists(route, model["id"], record):
                    listed[model["id"]] = model
        return orjson.dumps({"object": "list", "data": [listed[name] for name in sorted(listed)]})

    def _lists(self, route: Route, model: str, record: KeyRecord) -> bool:
        return self.config.route_for(model) is route and record.allows_model(model)

    async def _listing(self, upstream: Upstream) -> tuple[dict, ...]:
        cached = self._listings.get(upstream)
        if cached is not None and time.monotonic() < cached[0]:
            return cached[1]
        task = self._asking.get(upstream)
        if task is None:
            task = self._asking[upstream] = asyncio.create_task(self._ask(upstream))
            task.add_done_callback(lambda _: self._asking.pop(upstream, None))
        # Shielded: a client that leaves does not cancel the ask the others wait for.
        return await asyncio.shield(task)

    async def _ask(self, upstream: Upstream) -> tuple[dict, ...]:
        try:
            async with asyncio.timeout(LISTING_TIMEOUT_SECONDS):
                models = await self._read(upstream)
        except (UpstreamError, TimeoutError, ValueError) as exc:
            logger.warning("no model list from %s: %s", upstream.url, str(exc) or type(exc).__name__)
            self._listings[upstream] = (time.monotonic() + FAILURE_TTL_SECONDS, ())
            return ()
        self._listings[upstream] = (time.monotonic() + LISTING_TTL_SECONDS, models)
        return models

    async def _read(self, upstream: Upstream) -> tuple[dict, ...]:
        headers = [(b"accept", b"application/json"), (b"accept-encoding", b"identity")]
        if upstream.api_key:
            headers.append((b"authorization", f"Bearer {upstream.api_key}".encode("latin-1")))
        response = await self.upstreams.get(
            upstream.url,
            MODELS_PATH,
            headers,
            connect_timeout=min(upstream.connect_timeout, LISTING_TIMEOUT_SECONDS),
            read_timeout=LISTING_TIMEOUT_SECONDS,
        )
        try:
            if response.status != 200:
                raise ValueError(f"it answered {response.status}")
            return _models(await response.read())
        finally:
            response.release()


def _models(raw: bytes) -> tuple[dict, ...]:
    """Parse an OpenAI model list; keep OpenAI's four fields of each model, nothing else."""
    listing = orjson.loads(raw)
    data = listing.get("data") if isinstance(listing, dict) else None
    if not isinstance(data, list):
        raise ValueError("its answer is not a model list")
    models = []
    for item in data:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not item["id"]:
            continue
        created = item.get("created")
        owned_by = item.get("owned_by")
        models.append(
            {
                "id": item["id"],
                "object": "model",
                "created": created if isinstance(created, int) and not isinstance(created, bool) else 0,
                "owned_by": owned_by if isinstance(owned_by, str) else "tollgate",
            }
        )
    return tuple(models)


def _is_glob(pattern: str) -> bool:
    return any(char in pattern for char in "*?[")
