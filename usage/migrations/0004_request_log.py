"""The request log: each raw event's refusal reason and secret, refusals in the rollups, and the
indexes that read an organization's newest events first.

Adding columns with a constant default (or none) changes the catalog only, on the parent and every
partition; the indexes are built on every partition in this migration's transaction
(ingestion waits for the lock meanwhile; the stream keeps its events until then).

Both indexes end in ``(occurred_at, event_id)``, the log's keyset: scanned backwards, they
give the newest rows first and resume after any row. The first replaces the index on
``(organization_id, occurred_at)``, which it serves as well.
"""

from django.db import migrations, models

FORWARD = """
ALTER TABLE usage_event ADD COLUMN refusal varchar(32) NOT NULL DEFAULT '';
ALTER TABLE usage_event ADD COLUMN secret_id bigint;
CREATE INDEX usage_event_org_time_id ON usage_event (organization_id, occurred_at, event_id);
CREATE INDEX usage_event_org_key_time_id ON usage_event (organization_id, key_id, occurred_at, event_id);
DROP INDEX usage_event_org_time;
"""

BACKWARD = """
CREATE INDEX usage_event_org_time ON usage_event (organization_id, occurred_at);
DROP INDEX usage_event_org_key_time_id;
DROP INDEX usage_event_org_time_id;
ALTER TABLE usage_event DROP COLUMN secret_id;
ALTER TABLE usage_event DROP COLUMN refusal;
"""


class Migration(migrations.Migration):
    dependencies = [("usage", "0003_usage_event_unique_per_organization")]

    operations = [
        migrations.RunSQL(FORWARD, BACKWARD),
        migrations.AlterField(
            model_name="usagerollup",
            name="errors",
            field=models.BigIntegerField(
                default=0, help_text="Answers with a status of 400 or more, refusals included."
            ),
        ),
        migrations.AddField(
            model_name="usagerollup",
            name="refusals",
            field=models.BigIntegerField(
                default=0, help_text="Requests the edge refused (limits, standing, access)."
            ),
        ),
    ]
