"""The key record the portal publishes to Redis for the edge: schema version 1.

Redis key ``tg:key:<hex HMAC-SHA256 of the secret under KEY_PEPPER>`` holds a JSON object::

    {
      "v": 1,
      "key_id": "key_01j...",            # public id of the key
      "secret_id": 7,                    # this secret's primary key: usage events name it
      "org_id": 42,                      # organization primary key
      "org_status": "active",            # active | past_due | suspended
      "org_status_reason": "",           # "" | billing | staff: why the org is not active
      "org_billing_url": "https://…/o/acme/billing/",  # where the org pays its invoices
      "environment": "live",             # live | test
      "status": "active",                # active | revoked  (expiry is compared by the edge)
      "expires_at": 1767225600 | null,   # key expiry, Unix seconds
      "secret_expires_at": 1767225600 | null,  # end of this secret's rotation grace
      "allowed_models": ["gpt-4o*"],     # exact names or fnmatch globs; [] = every model
      "allowed_ips": ["10.0.0.0/8"],     # CIDR; [] = anywhere
      "limits": {"rpm": 600, "tpm": null, "concurrency": 10},   # null = unlimited
      "budget": {"monthly_minor": 5000, "alert_minor": 4000},    # cents; null = no cap
      "org_limits": {"rpm": 6000, "tpm": null, "concurrency": 50},  # over all the org's keys
      "org_budget": {"monthly_minor": 100000}                      # cents, over all its keys
    }

A secret is usable when ``status == "active"``, ``org_status != "suspended"`` and neither
``expires_at`` nor ``secret_expires_at`` has passed. On every change the portal rewrites the
records of a key's secrets and publishes ``{"v": 1, "hashes": [...]}`` on ``tg:invalidate``.

``org_status_reason``, ``org_billing_url`` and ``secret_id`` were added within version 1: an edge that does
not know them ignores them, and the edge reads a record without them as having no reason.
"""

from django.conf import settings
from django.urls import reverse
from django.utils import timezone

SCHEMA_VERSION = 1
KEY_PREFIX = "tg:key:"
INVALIDATE_CHANNEL = "tg:invalidate"
# Written last by a full resync, never expiring: when it is missing, Redis lost the data plane
# (restarted without persistence, flushed), and the edge takes a missing record for lost data
# rather than an unknown key (edge/records.py reads the same name).
SYNCED_KEY = "tg:synced"
# Records of revoked or expired secrets stay this long so the edge can say why it refuses.
TOMBSTONE_SECONDS = 7 * 24 * 3600


def redis_key(secret_hash: str) -> str:
    return KEY_PREFIX + secret_hash


def _epoch(value) -> int | None:
    return int(value.timestamp()) if value else None


def key_record(key, secret) -> dict:
    """Build the record for one secret of a key (key.organization must be loaded)."""
    organization = key.organization
    return {
        "v": SCHEMA_VERSION,
        "key_id": key.public_id,
        "secret_id": secret.pk,
        "org_id": key.organization_id,
        "org_status": organization.status,
        "org_status_reason": organization.status_reason,
        "org_billing_url": settings.SITE_URL + reverse("org-billing", args=[organization.slug]),
        "environment": key.environment,
        "status": "revoked" if (key.revoked_at or secret.revoked_at) else "active",
        "expires_at": _epoch(key.expires_at),
        "secret_expires_at": _epoch(secret.expires_at),
        "allowed_models": list(key.allowed_models),
        "allowed_ips": list(key.allowed_ips),
        "limits": {"rpm": key.rpm_limit, "tpm": key.tpm_limit, "concurrency": key.concurrency_limit},
        "budget": {"monthly_minor": key.budget_monthly_minor, "alert_minor": key.budget_alert_minor},
        "org_limits": {
            "rpm": organization.rpm_limit,
            "tpm": organization.tpm_limit,
            "concurrency": organization.concurrency_limit,
        },
        "org_budget": {"monthly_minor": organization.budget_monthly_minor},
    }


def record_expiry(key, secret) -> int | None:
    """Return when Redis may drop the record (Unix seconds), or None to keep it."""
    ends = [
        moment
        for moment in (key.revoked_at, secret.revoked_at, secret.expires_at, key.expires_at)
        if moment is not None
    ]
    if not ends:
        return None
    return int(min(ends).timestamp()) + TOMBSTONE_SECONDS


def is_gone(key, secret, now=None) -> bool:
    """True when the record is past its tombstone period and should not exist at all."""
    expiry = record_expiry(key, secret)
    now = now or timezone.now()
    return expiry is not None and expiry <= int(now.timestamp())
