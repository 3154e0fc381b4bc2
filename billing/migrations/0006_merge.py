from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0005_billing_details"),
        ("billing", "0005_dunning"),
        ("billing", "0005_webhook_event"),
    ]

    operations = []
