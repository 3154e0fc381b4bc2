"""The request log's queries read an index on 1M raw events, never a sequential scan.

One test loads a million events with ``generate_series`` into the real partitioned table
(three organizations, 150 keys, 45 days so that two or three monthly partitions hold rows
and some fall outside the retention), runs ANALYZE, and reads each query's plan with
``EXPLAIN (FORMAT JSON)``. The rows live in the test's transaction and are rolled back
with it. Deliberately not marked ``clock``: the load runs once per suite, not once per
moved clock.
"""

import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from keys.models import ApiKey
from tests.factories import make_org
from usage.partitions import add_months, month_start, partition_name, partitions_ensure
from usage.requestlog import Cursor, request_log_query, request_log_since

pytestmark = pytest.mark.django_db

EVENTS = 1_000_000
# The indexes of migration 0004, as each partition's copy reads in pg_indexes.
ORGANIZATION_INDEX = "(organization_id, occurred_at, event_id)"
KEY_INDEX = "(organization_id, key_id, occurred_at, event_id)"
DAYS = 45
KEYS_PER_ORGANIZATION = 50
# The events' organizations: the first holds most of them, as a busy tenant would.
LOAD = """
WITH organizations AS (
    SELECT %(organizations)s::bigint[] AS ids, %(keys)s::bigint[] AS keys
)
INSERT INTO usage_event (
    event_id, occurred_at, organization_id, key_id, model, endpoint, status, input_tokens,
    output_tokens, cached_tokens, estimated, cost_micro_minor, latency_ms, ttft_ms, request_id,
    source, billed_period, late, ingested_at, refusal
)
SELECT
    md5(g::text || 'event')::uuid,
    at,
    ids[org],
    keys[org][1 + g %% %(per_org)s],
    (ARRAY['llama-3.1-8b', 'qwen-2.5-72b', 'gpt-test', 'mistral-7b'])[1 + g %% 4],
    'chat.completions',
    CASE WHEN g %% 50 = 0 THEN 429 WHEN g %% 97 = 0 THEN 502 ELSE 200 END,
    CASE WHEN g %% 50 = 0 THEN 0 ELSE 100 + g %% 900 END,
    CASE WHEN g %% 50 = 0 THEN 0 ELSE g %% 400 END,
    0,
    false,
    CASE WHEN g %% 50 = 0 THEN 0 ELSE g %% 100000 END,
    5 + g %% 3000,
    NULL,
    md5(g::text),
    'edge',
    date_trunc('month', at, 'UTC')::date,
    false,
    at,
    CASE WHEN g %% 50 = 0 THEN 'rate_limit_rpm' ELSE '' END
FROM organizations, generate_series(1, %(events)s) AS g,
    LATERAL (SELECT %(now)s::timestamptz - (g %% (%(days)s * 86400)) * interval '1 second' AS at,
                    CASE WHEN g %% 10 < 8 THEN 1 WHEN g %% 10 = 8 THEN 2 ELSE 3 END AS org) AS picked
"""


def scans(plan: dict) -> list[tuple[str, str, str]]:
    """Every node of a plan that reads a relation: (node type, relation, index)."""
    found = []
    if "Relation Name" in plan:
        found.append((plan["Node Type"], plan["Relation Name"], plan.get("Index Name", "")))
    for child in plan.get("Plans", []):
        found += scans(child)
    return found


def raw_scans(queryset) -> list[tuple[str, str, str]]:
    with connection.cursor() as cursor:
        sql, params = queryset.query.sql_with_params()
        cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
        [[document]] = cursor.fetchall()
    return [scan for scan in scans(document[0]["Plan"]) if scan[1].startswith("usage_event")]


def test_every_request_log_query_reads_the_raw_partitions_by_index_on_a_million_events():
    now = timezone.now()
    partitions_ensure(months_back=2)
    organizations = [make_org(name=f"Load {n}") for n in range(3)]
    keys = [
        [key.pk for key in ApiKey.unscoped.bulk_create(
            ApiKey(organization=organization, name=f"key {n}") for n in range(KEYS_PER_ORGANIZATION)
        )]
        for organization in organizations
    ]  # fmt: skip
    with connection.cursor() as cursor:
        cursor.execute(
            LOAD,
            {
                "organizations": [organization.pk for organization in organizations],
                "keys": keys,
                "per_org": KEYS_PER_ORGANIZATION,
                "events": EVENTS,
                "days": DAYS,
                "now": now,
            },
        )
        assert cursor.rowcount == EVENTS
        cursor.execute("ANALYZE usage_event")
    busy, quiet = organizations[0], organizations[2]
    some_key = keys[0][7]
    cursor_row = request_log_query(organization=busy, now=now)[5000]
    deep = Cursor(occurred_at=cursor_row.occurred_at, event_id=uuid.UUID(str(cursor_row.event_id)))
    queries = {
        "newest": request_log_query(organization=busy, now=now),
        "quiet organization": request_log_query(organization=quiet, now=now),
        "one key": request_log_query(organization=busy, now=now, key_id=some_key),
        "deep page": request_log_query(organization=busy, now=now, after=deep),
        "one key, deep page": request_log_query(organization=busy, now=now, key_id=some_key, after=deep),
        "refused": request_log_query(organization=busy, now=now, status_class="refused"),
        "model and 5xx": request_log_query(organization=busy, now=now, model="gpt-test", status_class="5xx"),
        "a day": request_log_query(
            organization=busy, now=now, start=now - timedelta(days=3), end=now - timedelta(days=2)
        ),
    }

    with connection.cursor() as cursor:
        cursor.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename LIKE 'usage_event%%'")
        columns = {name: definition.partition(" USING btree ")[2] for name, definition in cursor.fetchall()}
    since = month_start(request_log_since(now=now).date())
    expired = {partition_name(add_months(since, -1)), partition_name(add_months(since, -2))}
    for name, queryset in queries.items():
        page = queryset.select_related("key")[:51]
        found = raw_scans(page)
        assert found, name
        kinds = {kind for kind, _relation, _index in found}
        assert kinds <= {"Index Scan", "Index Only Scan"}, (name, found)
        expected = KEY_INDEX if "key" in name else ORGANIZATION_INDEX
        assert {columns[index] for _kind, _relation, index in found} == {expected}, (name, found)
        # Retention prunes the partitions that end before USAGE_REQUEST_LOG_DAYS (30) ago.
        assert not {relation for _kind, relation, _index in found} & expired, (name, found)
