"""Business keys stored before keys were normalised, rewritten in Unicode NFC (the form ``instance_start`` has
stored since: ``orchestrator.inputs.business_key_form``), so a key reads the same in every list, export and API
answer whichever way it was typed when its instance started.

In batches of ``BATCH`` instances along the primary key, each batch its own transaction (the migration is not
atomic): a large table is never held in one transaction, and a run cut short is taken up again by the next
``migrate``, which skips keys already in NFC. Each rewrite is conditional on the key still being what was read.

Nothing is lost or merged. Baton's schema has no unique constraint on the business key (two instances may share
one), so a rewrite cannot collide under Baton's own constraints; a row is left as stored, and named in the output,
when its rewrite would still lose something:
- its NFC form is longer than the column's 100 characters (a few characters, such as U+0958, are excluded from
  composition and take two code points in NFC): cutting it would change the key;
- a unique index a deployment added of its own refuses the NFC form, because another row already holds it.
Lookups by key match both forms (``orchestrator.inputs.business_key_forms``), so such a row is still found.

Migrating back leaves the keys in NFC: the form a key was typed in is not kept, and both forms are one key.
No audit event is written: the key means the same, and the instances' events are not changed.
"""

import unicodedata

from django.db import IntegrityError, migrations, transaction

BATCH = 2000
MAX_LENGTH = 100  # WorkflowInstance.business_key's max_length


def business_keys_to_nfc(apps, schema_editor):
    """Rewrite every stored business key in NFC, batch by batch; print each row left as stored, and a summary
    when anything was rewritten or left."""
    instances = apps.get_model("orchestrator", "WorkflowInstance").objects.using(schema_editor.connection.alias)
    alias = schema_editor.connection.alias
    rewritten, left, after = 0, 0, 0
    while True:
        batch = list(
            instances.filter(pk__gt=after)
            .exclude(business_key="")
            .order_by("pk")
            .values_list("pk", "business_key")[:BATCH]
        )
        if not batch:
            break
        after = batch[-1][0]
        with transaction.atomic(using=alias):
            for pk, key in batch:
                if unicodedata.is_normalized("NFC", key):
                    continue
                nfc = unicodedata.normalize("NFC", key)
                if len(nfc) > MAX_LENGTH:
                    left += 1
                    print(  # noqa: T201 - the migration's report to whoever runs migrate
                        f"  instance {pk}: business key {ascii(key)} left as stored: its NFC form has {len(nfc)} "
                        f"characters, over the {MAX_LENGTH} the column holds"
                    )
                    continue
                try:
                    # A savepoint per rewrite: a refusal undoes this row only, not the batch.
                    with transaction.atomic(using=alias):
                        rewritten += instances.filter(pk=pk, business_key=key).update(business_key=nfc)
                except IntegrityError as refused:
                    left += 1
                    reason = str(refused).strip().splitlines()[0] if str(refused).strip() else type(refused).__name__
                    print(  # noqa: T201
                        f"  instance {pk}: business key {ascii(key)} left as stored: its NFC form {ascii(nfc)} is "
                        f"held by another instance under a unique index ({reason})"
                    )
    if rewritten or left:
        print(  # noqa: T201
            f"  {rewritten} business key{'' if rewritten == 1 else 's'} rewritten in NFC, {left} left as stored"
        )


class Migration(migrations.Migration):
    # Batches commit one by one (see the module's docstring).
    atomic = False

    dependencies = [
        ("orchestrator", "0013_actor_label_fits_a_long_username"),
    ]

    operations = [
        migrations.RunPython(business_keys_to_nfc, migrations.RunPython.noop, elidable=True),
    ]
