"""The edge's reading of what the portal publishes in Redis (schema version 1).

The portal's side of this contract is ``keys/edge_record.py`` (key records) and
``billing/edge_prices.py`` (prices); tests/contract runs both against one Redis.
"""

import fnmatch
import ipaddress
import time
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal

import orjson

SCHEMA_VERSION = 1
KEY_PREFIX = "tg:key:"
PRICE_PREFIX = "tg:price:"
INVALIDATE_CHANNEL = "tg:invalidate"
# Written by the portal at the end of a full resync; gone when Redis lost its data.
SYNCED_KEY = "tg:synced"


class RecordError(ValueError):
    """A record the edge cannot read (wrong version or shape)."""


@dataclass(frozen=True, slots=True)
class Limits:
    rpm: int | None
    tpm: int | None
    concurrency: int | None
    budget_minor: int | None


@dataclass(frozen=True, slots=True)
class KeyRecord:
    key_id: str
    org_id: int
    org_status: str
    environment: str
    status: str
    expires_at: int | None
    secret_expires_at: int | None
    allowed_models: tuple[str, ...]
    allowed_networks: tuple
    key_limits: Limits
    org_limits: Limits
    # Why the organization is not active ("", "billing", "staff") and where it pays its invoices.
    org_status_reason: str = ""
    org_billing_url: str = ""
    secret_id: int | None = None  # the secret this record is for; its usage events name it

    def refusal(self, now: float | None = None) -> str | None:
        """Return why this secret cannot be used now, or None."""
        now = time.time() if now is None else now
        if self.status != "active":
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        if self.secret_expires_at is not None and now >= self.secret_expires_at:
            return "rotated"
        if self.org_status == "suspended":
            return "billing_suspended" if self.org_status_reason == "billing" else "suspended"
        return None

    def allows_model(self, model: str) -> bool:
        if not self.allowed_models:
            return True
        return any(fnmatch.fnmatchcase(model, pattern) for pattern in self.allowed_models)

    def allows_ip(self, address: str | None) -> bool:
        return not self.allowed_networks or address_in(address, self.allowed_networks)


def address_in(address: str | None, networks) -> bool:
    """Whether an address lies in one of the networks; something that is not an address never does."""
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def _limits(raw: dict | None, budget: dict | None) -> Limits:
    raw = raw or {}
    budget = budget or {}
    return Limits(
        rpm=raw.get("rpm"),
        tpm=raw.get("tpm"),
        concurrency=raw.get("concurrency"),
        budget_minor=budget.get("monthly_minor"),
    )


def _optional_id(value) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"secret_id must be a positive integer, got {value!r}")
    return value


def parse_key_record(raw: bytes) -> KeyRecord:
    try:
        data = orjson.loads(raw)
        if data.get("v") != SCHEMA_VERSION:
            raise RecordError(f"unsupported key record version {data.get('v')!r}")
        return KeyRecord(
            key_id=data["key_id"],
            org_id=int(data["org_id"]),
            org_status=data["org_status"],
            environment=data["environment"],
            status=data["status"],
            expires_at=data["expires_at"],
            secret_expires_at=data["secret_expires_at"],
            allowed_models=tuple(data["allowed_models"]),
            allowed_networks=tuple(ipaddress.ip_network(net) for net in data["allowed_ips"]),
            key_limits=_limits(data["limits"], data["budget"]),
            org_limits=_limits(data.get("org_limits"), data.get("org_budget")),
            # Added within version 1: records written before them have neither.
            org_status_reason=data.get("org_status_reason") or "",
            org_billing_url=data.get("org_billing_url") or "",
            secret_id=_optional_id(data.get("secret_id")),
        )
    except (KeyError, TypeError, ValueError, orjson.JSONDecodeError) as exc:
        if isinstance(exc, RecordError):
            raise
        raise RecordError(f"malformed key record: {exc}") from None


@dataclass(frozen=True, slots=True)
class Price:
    """Prices in minor currency units (cents) per million tokens."""

    input: Decimal
    output: Decimal
    cached_input: Decimal

    def cost_micro_minor(self, input_tokens: int, output_tokens: int, cached_tokens: int = 0) -> int:
        """Cost in millionths of a cent, rounded up (a reservation never under-counts)."""
        uncached = max(input_tokens - cached_tokens, 0)
        total = uncached * self.input + cached_tokens * self.cached_input + output_tokens * self.output
        return int(total.to_integral_value(rounding=ROUND_CEILING))


def parse_price(raw: bytes) -> Price:
    try:
        data = orjson.loads(raw)
        if data.get("v") != SCHEMA_VERSION:
            raise RecordError(f"unsupported price record version {data.get('v')!r}")
        return Price(
            input=Decimal(data["input_per_mtok_minor"]),
            output=Decimal(data["output_per_mtok_minor"]),
            cached_input=Decimal(data["cached_input_per_mtok_minor"]),
        )
    except (KeyError, TypeError, ValueError, ArithmeticError, orjson.JSONDecodeError) as exc:
        if isinstance(exc, RecordError):
            raise
        raise RecordError(f"malformed price record: {exc}") from None
