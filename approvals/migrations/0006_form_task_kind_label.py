"""A form task's kind reads "Form", not "Manual resolution": the label the task page shows above a form to fill in
("Form in Expense: ..."). Only the choice's label changes; the stored value stays "form", so no row is touched."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("approvals", "0005_escalation_description_without_paths")]

    operations = [
        migrations.AlterField(
            model_name="humantask",
            name="kind",
            field=models.CharField(
                choices=[("approval", "Approval"), ("form", "Form"), ("escalation", "Escalation")], max_length=20
            ),
        ),
    ]
