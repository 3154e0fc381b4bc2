from django.db import migrations

FORBID = """
CREATE OR REPLACE FUNCTION portal_auditevent_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'audit events are append-only (% refused)', TG_OP;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER portal_auditevent_append_only
BEFORE UPDATE OR DELETE ON portal_auditevent
FOR EACH ROW EXECUTE FUNCTION portal_auditevent_append_only();
"""

ALLOW = """
DROP TRIGGER IF EXISTS portal_auditevent_append_only ON portal_auditevent;
DROP FUNCTION IF EXISTS portal_auditevent_append_only();
"""


class Migration(migrations.Migration):
    dependencies = [("portal", "0001_initial")]

    operations = [migrations.RunSQL(FORBID, ALLOW)]
