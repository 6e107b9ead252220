"""factory_boy factories shared by every test package."""

from __future__ import annotations

import factory
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

PASSWORD = "demo"


class GroupFactory(factory.django.DjangoModelFactory):
    """An auth group; asking twice for the same name returns the same row."""

    class Meta:
        model = Group
        django_get_or_create = ("name",)

    name = factory.Sequence(lambda n: f"group{n}")


class UserFactory(factory.django.DjangoModelFactory):
    """A user whose password is "demo"; ``groups=[...]`` takes Group objects or names."""

    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda user: f"{user.username}@example.com")
    first_name = factory.LazyAttribute(lambda user: user.username.capitalize())
    password = factory.django.Password(PASSWORD)
    is_staff = False
    is_superuser = False

    @factory.post_generation
    def groups(self, create: bool, extracted: list[Group | str] | None, **kwargs: object) -> None:
        if not create or not extracted:
            return
        self.groups.add(*[g if isinstance(g, Group) else GroupFactory(name=g) for g in extracted])


class SuperUserFactory(UserFactory):
    """An administrator (superuser and staff)."""

    is_staff = True
    is_superuser = True


class OrderInputFactory(factory.DictFactory):
    """Start input of ``order_fulfilment``; an amount above 1000 needs a manager's approval."""

    order_id = factory.Sequence(lambda n: f"A-{n:04d}")
    customer = "ACME Ltd"
    email = "buyer@example.com"
    amount = "50.00"
    items = 2


class ExpenseInputFactory(factory.DictFactory):
    """Start input of ``expense_approval``; an amount above 500 needs a manager's sign-off too."""

    employee = "Sam Staff"
    amount = "120.00"
    category = "travel"
    description = factory.Sequence(lambda n: f"Train to the client, trip {n}")


def long_history(instance, events: int, *, step_name: str, per_round: int = 5, batch: int = 5000) -> list:
    """Append about ``events`` audit events to ``instance``'s chain as a loop that went round ``events //
    per_round`` times would leave them: each round one ``step_name`` step run (started, succeeded) and
    ``per_round - 2`` consumed signals. Rows are bulk-inserted through ``orchestrator.audit.append``, so the chain
    stays valid. Returns the step runs made, in order. The instance's head is saved."""
    from datetime import timedelta

    from django.utils import timezone

    from orchestrator.audit import Actor, append
    from orchestrator.audit_actions import AuditAction
    from orchestrator.models import AuditEvent, StepKind, StepRun, StepState

    rounds = max(1, events // per_round)
    start = timezone.now() - timedelta(seconds=rounds * per_round)
    steps = StepRun.objects.bulk_create(
        [
            StepRun(
                instance=instance,
                name=step_name,
                kind=StepKind.TASK,
                state=StepState.SUCCEEDED,
                attempt=1,
                started_at=start + timedelta(seconds=i * per_round),
                finished_at=start + timedelta(seconds=i * per_round + 1),
            )
            for i in range(rounds)
        ],
        batch_size=batch,
    )
    system, rows = Actor.system("worker"), []
    for i, step in enumerate(steps):
        at = start + timedelta(seconds=i * per_round)
        rows.append(
            append(
                instance,
                now=at,
                actor=system,
                action=AuditAction.STEP_STARTED,
                subject_type="step",
                subject_id=step.pk,
                payload={"attempt": 1},
                request_meta={"worker": "w1"},
            )
        )
        rows.append(
            append(
                instance,
                now=at + timedelta(seconds=1),
                actor=system,
                action=AuditAction.STEP_SUCCEEDED,
                subject_type="step",
                subject_id=step.pk,
                from_state="running",
                to_state="succeeded",
            )
        )
        for k in range(per_round - 2):
            rows.append(
                append(
                    instance,
                    now=at + timedelta(seconds=2 + k),
                    actor=system,
                    action=AuditAction.SIGNAL_RECEIVED,
                    subject_type="signal",
                    subject_id=None,
                    payload={"event": "ping", "n": i},
                )
            )
        if len(rows) >= batch:
            AuditEvent.objects.bulk_create(rows)
            rows = []
    AuditEvent.objects.bulk_create(rows)
    instance.save(update_fields=["audit_seq", "audit_head"])
    return steps
