from datetime import datetime, timedelta

from django.db import connection
from django.db.models import Prefetch, Q, QuerySet
from django.utils import timezone

from keys.models import ApiKey, ApiKeySecret, ServiceAccount


def api_keys_list(
    *, organization, status: str = "", environment: str = "", name: str = ""
) -> QuerySet[ApiKey]:
    now = timezone.now()
    keys = ApiKey.objects.for_organization(organization).prefetch_related(
        Prefetch(
            "secrets", queryset=ApiKeySecret.objects.live(now).order_by("-created_at"), to_attr="live_secrets"
        )
    )
    if status == ApiKey.Status.REVOKED:
        keys = keys.exclude(revoked_at=None)
    elif status == ApiKey.Status.EXPIRED:
        keys = keys.filter(revoked_at=None, expires_at__lte=now)
    elif status == ApiKey.Status.ACTIVE:
        keys = keys.filter(revoked_at=None).filter(Q(expires_at=None) | Q(expires_at__gt=now))
    if environment:
        keys = keys.filter(environment=environment)
    if name:
        keys = keys.filter(name__icontains=name)
    return keys


def api_key_get(*, organization, key_id: str) -> ApiKey | None:
    return api_keys_list(organization=organization).filter(public_id=key_id).first()


def service_accounts_list(*, organization) -> QuerySet[ServiceAccount]:
    return ServiceAccount.objects.for_organization(organization).select_related("created_by")


def service_account_get(*, organization, account_id: str) -> ServiceAccount | None:
    return service_accounts_list(organization=organization).filter(public_id=account_id).first()


# The statuses the edge answers itself, before any upstream, when it refuses a request. A
# refusal (one of these with no tokens) never moved a limit's counter, so it is not load.
REFUSAL_STATUSES = (401, 402, 403, 429)

_LAST_MINUTE = """
WITH recent AS (
    SELECT occurred_at, coalesce(latency_ms, 0) AS latency_ms, input_tokens + output_tokens AS tokens
    FROM usage_event
    WHERE organization_id = %(organization)s AND key_id = %(key)s
      AND occurred_at > %(start)s AND occurred_at <= %(end)s
      AND NOT (status = ANY(%(refusals)s) AND input_tokens = 0 AND output_tokens = 0)
), steps AS (
    SELECT occurred_at - make_interval(secs => latency_ms / 1000) AS at, 1 AS step FROM recent
    UNION ALL
    SELECT occurred_at, -1 FROM recent
)
SELECT
    (SELECT count(*) FROM recent),
    (SELECT coalesce(sum(tokens), 0) FROM recent),
    (SELECT coalesce(max(live), 0) FROM (SELECT sum(step) OVER (ORDER BY at, step) AS live FROM steps) AS s)
"""


def api_key_last_minute(*, key: ApiKey, now: datetime) -> dict[str, int]:
    """Return the key's requests, tokens and peak concurrent requests in the minute before ``now``.

    The figures come from the raw usage events, the same requests the edge's limits count:
    requests per minute, input plus output tokens per minute, and the most requests in flight
    at once (each event spans its latency before it ended; one that ends as another starts
    does not overlap it).
    """
    with connection.cursor() as cursor:
        cursor.execute(
            _LAST_MINUTE,
            {
                "organization": key.organization_id,
                "key": key.pk,
                "start": now - timedelta(minutes=1),
                "end": now,
                "refusals": list(REFUSAL_STATUSES),
            },
        )
        requests, tokens, concurrency = cursor.fetchone()
    return {"rpm": requests, "tpm": int(tokens), "concurrency": concurrency}
