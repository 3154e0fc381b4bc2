from django.db import migrations

CREATE = """
CREATE TABLE usage_event (
    event_id uuid NOT NULL,
    occurred_at timestamptz NOT NULL,
    organization_id bigint NOT NULL,
    key_id bigint NOT NULL,
    model varchar(200) NOT NULL,
    endpoint varchar(32) NOT NULL,
    status smallint NOT NULL,
    input_tokens bigint NOT NULL,
    output_tokens bigint NOT NULL,
    cached_tokens bigint NOT NULL,
    estimated boolean NOT NULL,
    cost_micro_minor bigint NOT NULL,
    latency_ms double precision,
    ttft_ms double precision,
    request_id varchar(128) NOT NULL,
    source varchar(16) NOT NULL,
    billed_period date NOT NULL,
    late boolean NOT NULL,
    ingested_at timestamptz NOT NULL,
    PRIMARY KEY (event_id, occurred_at)
) PARTITION BY RANGE (occurred_at);
CREATE TABLE usage_event_default PARTITION OF usage_event DEFAULT;
CREATE INDEX usage_event_org_time ON usage_event (organization_id, occurred_at);
CREATE INDEX usage_event_event_id ON usage_event (event_id);
"""

DROP = "DROP TABLE IF EXISTS usage_event CASCADE;"


def create_partitions(apps, schema_editor):
    # The months around the day of migrating; the usage-partitions-ahead beat task keeps
    # creating the next ones. Nothing may assume that day is today (tests create their own).
    from usage.partitions import partitions_ensure

    partitions_ensure()


class Migration(migrations.Migration):
    dependencies = [("usage", "0001_initial")]

    operations = [
        migrations.RunSQL(CREATE, DROP),
        migrations.RunPython(create_partitions, migrations.RunPython.noop),
    ]
