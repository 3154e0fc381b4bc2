from django.db import migrations, models

import billing.models


def assign_public_ids(apps, schema_editor):
    Invoice = apps.get_model("billing", "Invoice")
    for invoice in Invoice.objects.filter(public_id=None).order_by("pk"):
        invoice.public_id = billing.models.new_invoice_id()
        invoice.save(update_fields=["public_id"])


class Migration(migrations.Migration):
    dependencies = [("billing", "0003_default_plan")]

    operations = [
        migrations.AddField(
            model_name="invoice",
            name="public_id",
            field=models.CharField(editable=False, max_length=40, null=True),
        ),
        migrations.RunPython(assign_public_ids, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="invoice",
            name="public_id",
            field=models.CharField(
                default=billing.models.new_invoice_id, editable=False, max_length=40, unique=True
            ),
        ),
        migrations.AddIndex(
            model_name="invoice",
            index=models.Index(fields=["organization", "-public_id"], name="billing_inv_organiz_0b349f_idx"),
        ),
    ]
