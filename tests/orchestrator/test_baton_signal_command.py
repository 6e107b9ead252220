"""`baton-admin baton_signal` as README's "Your first workflow" gives it: by business key, with a signal id that
makes a second delivery a repeat that changes nothing."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from orchestrator.models import InstanceState, ReceivedSignal, WorkflowInstance
from orchestrator.services.instances import instance_start
from tests.api.test_signals import payment_flow  # noqa: F401 (a fixture)

pytestmark = pytest.mark.django_db


def test_the_readme_signal_command_resumes_the_waiting_instance_and_its_repeat_changes_nothing(
    payment_flow,  # noqa: F811
    run_steps,
):
    # given: an instance waiting at its Signal node, known by its business key
    instance = instance_start("api_payment", {"order": "SO-1002"}, business_key="SO-1002")
    run_steps(instance)
    assert WorkflowInstance.objects.get(pk=instance.pk).state == InstanceState.WAITING
    args = ["baton_signal", "payment.confirmed", "--id", "pay-7731", "--business-key", "SO-1002"]
    payload = ["--payload", '{"paid_amount": "120.00", "reference": "PAY-7731"}']

    # when: delivered, then delivered again (README: "delivering the same --id again changes nothing")
    first, again = StringIO(), StringIO()
    call_command(*args, *payload, stdout=first, stderr=StringIO())
    call_command(*args, *payload, stdout=again, stderr=StringIO())
    run_steps(instance)

    # then
    assert first.getvalue().strip() == "consumed"
    assert again.getvalue().strip() == "repeat"
    assert ReceivedSignal.objects.filter(instance=instance).count() == 1
    finished = WorkflowInstance.objects.get(pk=instance.pk)
    assert finished.state == InstanceState.COMPLETED
    assert finished.data["shipped_for"] == "PAY-7731"


def test_a_payload_giving_a_key_twice_is_refused_naming_it_and_delivers_nothing(payment_flow, run_steps):  # noqa: F811
    # given: a waiting instance
    instance = instance_start("api_payment", {"order": "SO-1003"}, business_key="SO-1003")
    run_steps(instance)

    # when: the payload names the reference twice (which one the sender meant is a guess)
    with pytest.raises(CommandError) as refused:
        call_command(
            "baton_signal",
            "payment.confirmed",
            "--id",
            "pay-1",
            "--business-key",
            "SO-1003",
            "--payload",
            '{"paid_amount": "1.00", "reference": "A", "reference": "B"}',
            stdout=StringIO(),
            stderr=StringIO(),
        )

    # then
    assert "the key 'reference' is given twice" in str(refused.value)
    assert not ReceivedSignal.objects.filter(instance=instance).exists()
