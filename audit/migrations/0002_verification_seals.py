"""What a verification checked the chains against outside the database (the seal file), shown on its page."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("audit", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="verification",
            name="seals",
            field=models.TextField(blank=True, db_default="", default=""),
        ),
    ]
