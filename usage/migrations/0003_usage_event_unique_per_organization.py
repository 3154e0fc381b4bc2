"""Event ids are unique per organization: the raw table's key gains ``organization_id``.

Before, ``(event_id, occurred_at)`` made one organization's event a duplicate of another's
that happened to carry the same id and time, and it was never counted. Postgres needs the
partition key in every unique constraint of a partitioned table, so the key is
``(organization_id, event_id, occurred_at)``. Changed on the parent, the key is dropped and
built again on every partition, rows included, in this migration's transaction (ingestion
waits for the lock meanwhile; the stream keeps its events until then).

The index on ``event_id`` alone goes: the only look-up by event id (posted usage) is per
organization, which the new key's leading columns serve.
"""

from django.db import migrations

FORWARD = """
ALTER TABLE usage_event DROP CONSTRAINT usage_event_pkey;
ALTER TABLE usage_event ADD CONSTRAINT usage_event_pkey PRIMARY KEY (organization_id, event_id, occurred_at);
DROP INDEX usage_event_event_id;
"""

# Fails, as it must, if two organizations now hold the same event id and time.
BACKWARD = """
CREATE INDEX usage_event_event_id ON usage_event (event_id);
ALTER TABLE usage_event DROP CONSTRAINT usage_event_pkey;
ALTER TABLE usage_event ADD CONSTRAINT usage_event_pkey PRIMARY KEY (event_id, occurred_at);
"""


class Migration(migrations.Migration):
    dependencies = [("usage", "0002_partitioned_raw_events")]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
