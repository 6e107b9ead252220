"""Audit events become keyed (HMAC, key id stored per event); record which earlier events stay legacy (unkeyed).

The record is itself a keyed event of the ``audit`` chain, so whoever can only write the database cannot move the
boundary to pass off new events as legacy ones (orchestrator/audit.py, ``legacy_boundary``). Stop the old
processes while this runs: an event they write after it is unkeyed past the boundary and verify reports it.
"""

from django.db import migrations, models
from django.db.models import Max
from django.utils import timezone


def record_keying(apps, schema_editor):
    # Historical models, so a later change to AuditEvent cannot break this step on a fresh database.
    from orchestrator.audit import AUDIT_CHAIN, event_hash, signing_key

    event_model = apps.get_model("orchestrator", "AuditEvent")
    chain_model = apps.get_model("orchestrator", "AuditChain")
    through = event_model.objects.aggregate(last=Max("id"))["last"] or 0
    chain, _ = chain_model.objects.get_or_create(name=AUDIT_CHAIN)
    key_id, secret = signing_key()
    event = event_model(
        chain=AUDIT_CHAIN,
        seq=chain.seq + 1,
        prev_hash=chain.head,
        key_id=key_id,
        occurred_at=timezone.now(),
        actor_id=None,
        actor_label="system:migrate",
        action="audit.keyed",
        instance_id=None,
        subject_type="audit",
        subject_id=None,
        from_state="",
        to_state="",
        reason="",
        payload={"legacy_through": through},
        request_meta={},
    )
    event.hash = event_hash(event, secret)
    event.save(force_insert=True)
    chain.seq, chain.head = event.seq, event.hash
    chain.save(update_fields=["seq", "head"])


def refuse_to_strip_keys(apps, schema_editor):
    # Unapplying drops key_id: every keyed event would then read as unkeyed and fail verification for good.
    keyed = apps.get_model("orchestrator", "AuditEvent").objects.exclude(key_id="").count()
    if keyed:
        raise RuntimeError(
            f"Refusing to unapply the audit keying: {keyed} keyed audit events would lose their key id and no "
            "longer verify. The audit trail is append-only; move forward instead."
        )


class Migration(migrations.Migration):
    dependencies = [("orchestrator", "0006_instance_paused_at")]

    operations = [
        migrations.AddField(
            model_name="auditevent",
            name="key_id",
            field=models.CharField(blank=True, default="", db_default="", max_length=16),
        ),
        migrations.RunPython(record_keying, refuse_to_strip_keys),
    ]
