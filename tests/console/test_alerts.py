"""Operator alerts (console/alerts.py): a storm of failures is one message in the bell and one e-mail per
operator; the news that arrives within the throttle waits for the next message; a sweep that fell behind is told."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core import mail
from django.utils import timezone

from approvals.models import Notification
from console.alerts import FAILED, SWEEP, alert_pass
from orchestrator.dsl import Retry, StepContext, Task, Workflow
from orchestrator.models import StepRun
from orchestrator.services.instances import instance_start

pytestmark = pytest.mark.django_db(transaction=True)


def boom(ctx: StepContext) -> dict:
    raise ValueError("ledger refused the entry")


@pytest.fixture
def flow(register_workflow):
    return register_workflow(Workflow("alert_flow", 1, [Task("post", boom, retry=Retry(max_attempts=1))]))


def test_a_storm_of_failures_is_one_message(flow, users, run_steps, settings):
    # given
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    for _ in range(12):
        instance_start("alert_flow", {})
    run_steps()

    # when
    told = alert_pass()

    # then
    assert told[FAILED] == 12
    notes = list(Notification.objects.filter(kind=FAILED))
    assert [n.user_id for n in notes] == [users.operator.pk]
    assert notes[0].message.startswith("12 instances failed: alert_flow (12). Commonest error (12): post failed")
    assert [m.to for m in mail.outbox] == [[users.operator.email]]


def test_news_within_the_throttle_waits_for_the_next_message(flow, users, run_steps):
    # given
    instance_start("alert_flow", {})
    run_steps()
    alert_pass()
    instance_start("alert_flow", {})
    run_steps()

    # when
    soon = alert_pass()
    later = alert_pass(now=timezone.now() + timedelta(minutes=6))

    # then
    assert (soon[FAILED], later[FAILED]) == (0, 1)
    assert Notification.objects.filter(kind=FAILED).count() == 2


def test_a_sweep_that_fell_behind_is_told(flow, users):
    # given: a step due ten minutes ago that no sweep ever sent
    instance = instance_start("alert_flow", {})
    StepRun.objects.filter(instance=instance).update(due_at=timezone.now() - timedelta(minutes=10), dispatched_at=None)

    # when
    told = alert_pass()

    # then
    assert told[SWEEP] == 1
    assert Notification.objects.get(kind=SWEEP).message.startswith("The sweep is behind: due work has waited")
