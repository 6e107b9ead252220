"""Escalation tasks opened before their description left out the server's paths: the same error, cut to file names.

An escalation's description is the failed step's error, traceback included; managers see every task, so since this
release it is written with each ``File "/srv/app/x.py"`` cut to ``File "x.py"`` (``approvals.services.port``), as
the instance page shows a step's error to whoever may not operate it. This rewrites the ones written before.
Escalations are few (one per failure handed to operators), and only those holding a path are read.
"""

import re

from django.db import migrations

# orchestrator.selectors.SERVER_PATH as of this migration (a migration keeps its own copy: the code may change).
SERVER_PATH = re.compile(r'File "(?:[^"]*/)?([^"/]+)"')


def forwards(apps, schema_editor):
    HumanTask = apps.get_model("approvals", "HumanTask")
    with_paths = HumanTask.objects.filter(kind="escalation", description__contains='File "')
    for task in with_paths.only("id", "description").iterator(chunk_size=500):
        hidden = SERVER_PATH.sub(r'File "\1"', task.description)
        if hidden != task.description:
            HumanTask.objects.filter(pk=task.pk).update(description=hidden)


class Migration(migrations.Migration):
    dependencies = [("approvals", "0004_decision_user_task")]

    # Backwards leaves the descriptions as they are: the paths are not kept anywhere to put back (the step's own
    # error still holds them).
    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
