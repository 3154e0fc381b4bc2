from django.db import migrations


def create_default_plan(apps, schema_editor):
    Plan = apps.get_model("billing", "Plan")
    if not Plan.objects.filter(is_default=True).exists():
        Plan.objects.create(name="Standard", currency="usd", monthly_fee_minor=0, is_default=True)


class Migration(migrations.Migration):
    dependencies = [("billing", "0002_plans_invoices")]

    operations = [migrations.RunPython(create_default_plan, migrations.RunPython.noop)]
