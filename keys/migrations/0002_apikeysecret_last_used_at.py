from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("keys", "0001_initial")]

    operations = [
        migrations.AddField(
            model_name="apikeysecret",
            name="last_used_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
    ]
