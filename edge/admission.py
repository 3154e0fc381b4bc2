"""May this request run now? Its price, then its limits and budgets, checked in Redis.

A priced model is never served without its price: the budget reservation is made from it.
An internal error (a script error, a bad argument) refuses the request; only Redis being
unreachable lets a known key through without its limits, and only when the edge is
configured to fail open (``fail_open``, the default). Either way it is counted and logged.
"""

import logging
import time

from edge import metrics
from edge.config import EdgeConfig
from edge.errors import service_unavailable
from edge.limits import Admission, AdmissionLost, Limiter, Refusal, refusal_error
from edge.metering import estimate_prompt_tokens, max_output_tokens
from edge.records import PRICE_PREFIX, KeyRecord, Price, RecordError, parse_price
from edge.resp import RespError, unreachable
from edge.store import DataPlane

logger = logging.getLogger("tollgate.edge")

PRICE_TTL_SECONDS = 30.0


class Prices:
    """Prices per model, cached for 30 s and dropped on invalidation."""

    def __init__(self, data_plane: DataPlane, stale_seconds: float):
        self.data_plane = data_plane
        self.stale_seconds = stale_seconds
        self._cache: dict[str, tuple[Price | None, float]] = {}

    def drop(self, models) -> None:
        for model in models:
            self._cache.pop(model, None)

    def expire(self) -> None:
        """Invalidations may have been missed: read every price again before trusting it."""
        oldest = time.monotonic() - PRICE_TTL_SECONDS
        self._cache = {model: (price, min(at, oldest)) for model, (price, at) in self._cache.items()}

    async def get(self, model: str) -> Price | None:
        """The model's price, None for a model without one; raise a 503 EdgeError when it
        cannot be known now (Redis away or rebuilding, and no recent price in the cache)."""
        cached = self._cache.get(model)
        now = time.monotonic()
        if cached is not None and now - cached[1] < PRICE_TTL_SECONDS:
            return cached[0]
        stale = cached is not None and now - cached[1] < self.stale_seconds
        try:
            raw, synced = await self.data_plane.read(PRICE_PREFIX + model)
        except (OSError, RespError) as exc:
            if stale:
                return cached[0]
            if not unreachable(exc):
                logger.error("price look-up failed: %s", exc)
            raise service_unavailable(
                "The price of this model cannot be read right now; retry shortly."
            ) from None
        if raw is None and not synced:
            if stale:
                return cached[0]
            raise service_unavailable("The price of this model is being restored; retry shortly.")
        try:
            price = parse_price(raw) if raw is not None else None
        except RecordError:
            logger.exception("unreadable price record for %s", model)
            raise service_unavailable(
                "The price of this model cannot be read right now; retry shortly."
            ) from None
        self._cache[model] = (price, now)
        return price


class Admitter:
    def __init__(self, config: EdgeConfig, limiter: Limiter, prices: Prices):
        self.config = config
        self.limiter = limiter
        self.prices = prices
        self._unchecked_since: float | None = None

    async def admit(
        self, record: KeyRecord, payload: dict, endpoint: str, model: str
    ) -> tuple[Admission | None, Price | None]:
        """Reserve the request's worst case against every limit; return the admission (unchecked,
        or None, when Redis is unreachable and the edge fails open) and the price. Raise EdgeError."""
        estimated_output = (
            0 if endpoint == "embeddings" else max_output_tokens(payload, self.config.default_max_tokens)
        )
        estimated_prompt = estimate_prompt_tokens(payload)
        price = await self.prices.get(model)
        reserved = price.cost_micro_minor(estimated_prompt, estimated_output) if price else 0
        try:
            result = await self.limiter.admit(
                record, estimated_tokens=estimated_prompt + estimated_output, reserved_cost=reserved
            )
        except (OSError, RespError) as exc:
            if not unreachable(exc):
                metrics.ADMISSION_ERRORS.labels("internal").inc()
                logger.error("admission failed: %s", exc)
                raise service_unavailable(
                    "The edge could not check this request against its limits; retry shortly."
                ) from None
            metrics.ADMISSION_ERRORS.labels("unreachable").inc()
            if not self.config.fail_open:
                raise service_unavailable("The limit store is unreachable; retry shortly.") from None
            self._note_unchecked()
            # The script may have run before the connection broke: its lease is released when
            # the request is settled (see Limiter.settle_args), so a concurrency slot is not
            # held until the lease expires.
            return (exc.admission if isinstance(exc, AdmissionLost) else None), price
        if self._unchecked_since is not None:
            logger.warning(
                "limits are checked again after %.1fs without Redis", time.monotonic() - self._unchecked_since
            )
            self._unchecked_since = None
        if isinstance(result, Refusal):
            metrics.REFUSALS.labels(result.scope, result.kind).inc()
            raise refusal_error(result)
        return result, price

    def _note_unchecked(self) -> None:
        metrics.UNCHECKED.inc()
        if self._unchecked_since is None:
            self._unchecked_since = time.monotonic()
            logger.warning("Redis is unreachable: known keys are served without limits (fail_open)")
