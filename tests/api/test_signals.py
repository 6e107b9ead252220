"""Signals through the API: by instance id or business key, a repeat of a signal id harmless, an early signal kept
and consumed, the node's validation naming the field, and the pages' role and object checks. The deliveries that
are about execution run on a real Celery worker."""

from __future__ import annotations

import importlib

import pytest

from orchestrator import registry
from orchestrator.audit import Actor
from orchestrator.dsl import Decision, Signal, Workflow
from orchestrator.models import AuditEvent, InstanceState, ReceivedSignal, StepRun, WorkflowInstance
from orchestrator.services.instances import instance_cancel, instance_pause, instance_resume, instance_start
from tests.factories import UserFactory

PAID = {"paid_amount": "12.50", "reference": "PAY-9"}


@pytest.fixture
def payment_flow():
    """``tests/api/signal_flows.py``'s workflow registered in this process too (the test worker loads it)."""
    flows = importlib.import_module("tests.api.signal_flows")
    if not registry.is_registered(flows.API_PAYMENT.name, flows.API_PAYMENT.version):
        registry.register(flows.API_PAYMENT)
    yield flows.API_PAYMENT
    registry.unregister(flows.API_PAYMENT.name, flows.API_PAYMENT.version)


def signal_path(instance: WorkflowInstance | int) -> str:
    return f"/api/instances/{getattr(instance, 'pk', instance)}/signals/"


def signal(signal_id: str = "sig-1", payload: dict | None = None, **extra: object) -> dict:
    return {
        "event": "payment.confirmed",
        "signal_id": signal_id,
        "payload": PAID if payload is None else payload,
        **extra,
    }


def state_of(instance: WorkflowInstance) -> str:
    return WorkflowInstance.objects.values_list("state", flat=True).get(pk=instance.pk)


def what_changes(instance: WorkflowInstance) -> tuple:
    """Everything a delivery may write: the instance's trail, signals, steps, state and data (a token or a user the
    test makes goes into other chains)."""
    return (
        AuditEvent.objects.filter(instance=instance).count(),
        tuple(ReceivedSignal.objects.filter(instance=instance).order_by("pk").values_list("pk", "consumed_at")),
        tuple(StepRun.objects.filter(instance=instance).order_by("pk").values_list("pk", "state")),
        WorkflowInstance.objects.values_list("state", "data").get(pk=instance.pk),
    )


# --- on a real worker -----------------------------------------------------------------------------------


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_signal_resumes_a_waiting_instance_on_the_worker_and_its_repeat_changes_nothing(
    celery_worker, payment_flow, api_as, roles, wait_for
):
    # given: started through the API by staff; the worker runs ``reserve`` and the instance waits for the payment
    started = api_as(roles.staff).post("/api/instances/", {"workflow": "api_payment", "input": {"order": "A-1"}})
    instance = WorkflowInstance.objects.get(pk=started.json()["id"])
    wait_for(lambda: state_of(instance) == InstanceState.WAITING, instance=instance, what="waiting for the payment")
    operator = api_as(roles.operator)

    # when the payment service (an operator's token) signals it
    first = operator.post(signal_path(instance), signal())
    wait_for(lambda: state_of(instance) == InstanceState.COMPLETED, instance=instance, what="completed")

    # then the wait took the payload, the worker ran ``ship`` with it, and the delivery is audited once
    assert first.status_code == 201, first.content
    body = first.json()
    assert (body["state"], body["event"], body["signal_id"], body["instance"]) == (
        "consumed",
        "payment.confirmed",
        "sig-1",
        instance.pk,
    )
    assert body["sender"] == "user:operator"
    instance.refresh_from_db()
    assert instance.data["paid_amount"] == "12.50"
    assert instance.data["shipped_for"] == "PAY-9"
    received = AuditEvent.objects.filter(instance=instance, action="signal.received")
    assert [(e.actor_label, e.payload["signal_id"]) for e in received] == [("user:operator", "sig-1")]

    # when the same signal id comes again (the sender retried after a timeout)
    before = what_changes(instance)
    again = operator.post(signal_path(instance), signal())

    # then the same signal is answered with 200, and nothing changed, though the instance has completed since
    assert again.status_code == 200, again.content
    assert again["Idempotent-Replayed"] == "true"
    assert again.json() == body
    assert what_changes(instance) == before


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_signal_by_business_key_resumes_the_one_open_instance_on_the_worker(
    celery_worker, payment_flow, api_as, roles, wait_for
):
    # given two orders; the first one's business key is shared with a completed instance of another workflow
    client = api_as(roles.staff)
    ids = [
        client.post(
            "/api/instances/", {"workflow": "api_payment", "input": {"order": key}, "business_key": key}
        ).json()["id"]
        for key in ("ORDER-1", "ORDER-2")
    ]
    first, second = WorkflowInstance.objects.get(pk=ids[0]), WorkflowInstance.objects.get(pk=ids[1])
    for instance in (first, second):
        wait_for(lambda i=instance: state_of(i) == InstanceState.WAITING, instance=instance, what="waiting")

    # when the payment service names the order by its key
    response = api_as(roles.operator).post(
        "/api/signals/", {**signal("pay-ORDER-2"), "business_key": "ORDER-2", "workflow": "api_payment"}
    )
    wait_for(lambda: state_of(second) == InstanceState.COMPLETED, instance=second, what="completed")

    # then only that order went on
    assert response.status_code == 201, response.content
    assert response.json()["instance"] == second.pk
    assert state_of(first) == InstanceState.WAITING
    assert not ReceivedSignal.objects.filter(instance=first).exists()


# --- in process ------------------------------------------------------------------------------------------

in_process = pytest.mark.django_db


@pytest.fixture
def waiting(payment_flow, roles, run_steps):
    """An order started by staff, waiting at its Signal node."""
    instance = instance_start("api_payment", {"order": "B-1"}, initiator=roles.staff, business_key="B-1")
    run_steps(instance)
    assert state_of(instance) == InstanceState.WAITING
    return instance


@in_process
def test_an_early_signal_is_kept_and_consumed_when_the_instance_reaches_its_node(
    payment_flow, api_as, roles, run_steps
):
    # given an instance whose first step has not run yet
    instance = instance_start("api_payment", {"order": "C-1"}, initiator=roles.staff)

    # when the payment arrives first
    response = api_as(roles.operator).post(signal_path(instance), signal("early"))

    # then it is kept; when the instance reaches the wait it takes it at once and goes on to the end
    assert response.status_code == 201, response.content
    assert (response.json()["state"], response.json()["step"], response.json()["consumed_at"]) == ("kept", None, None)
    run_steps(instance)
    assert state_of(instance) == InstanceState.COMPLETED
    kept = ReceivedSignal.objects.get(instance=instance)
    assert kept.consumed_at is not None
    assert kept.step.name == "wait_payment"
    replay = api_as(roles.operator).post(signal_path(instance), signal("early"))
    assert (replay.status_code, replay.json()["state"]) == (200, "consumed")


# The same key as typed on two keyboards: é as one code point, or e and a combining accent.
NFC_CAFE, NFD_CAFE = "Caf\u00e9-7", "Cafe\u0301-7"


@in_process
@pytest.mark.parametrize(
    ("started", "signalled"), [(NFD_CAFE, NFC_CAFE), (NFC_CAFE, NFD_CAFE)], ids=["nfd-nfc", "nfc-nfd"]
)
def test_a_business_key_in_either_unicode_form_finds_the_instance(payment_flow, api_as, roles, started, signalled):
    """A key started in one normalisation form and signalled in the other names the same instance (stored as NFC),
    and the instance list finds it by either."""
    # given
    created = api_as(roles.staff).post(
        "/api/instances/", {"workflow": "api_payment", "input": {"order": "D-1"}, "business_key": started}
    )

    # when
    response = api_as(roles.operator).post(
        "/api/signals/", {**signal("cafe-1"), "business_key": signalled, "workflow": "api_payment"}
    )
    listed = api_as(roles.operator).get("/api/instances/", {"business_key": signalled})

    # then
    assert created.status_code == 201, created.content
    assert created.json()["business_key"] == NFC_CAFE
    assert response.status_code == 201, response.content
    assert response.json()["instance"] == created.json()["id"]
    assert [row["id"] for row in listed.json()["results"]] == [created.json()["id"]]


@in_process
def test_a_payload_the_node_refuses_is_422_naming_the_field_and_changes_nothing(waiting, api_as, roles):
    before = what_changes(waiting)
    client = api_as(roles.operator)

    bad_amount = client.post(signal_path(waiting), signal(payload={"paid_amount": "lots", "reference": "X"}))
    no_reference = client.post(signal_path(waiting), signal(payload={"paid_amount": "1.00"}))
    other_event = client.post(signal_path(waiting), {**signal(), "event": "parcel.lost"})

    for response, field in (
        (bad_amount, "payload.paid_amount"),
        (no_reference, "payload.reference"),
        (other_event, "event"),
    ):
        assert response.status_code == 422, response.content
        assert response["Content-Type"] == "application/problem+json"
        assert field in response.json()["errors"], response.json()
    assert what_changes(waiting) == before


@in_process
@pytest.mark.parametrize("path", ["by id", "by business key"])
def test_a_payload_setting_the_waits_record_is_422_sets_records_naming_it_and_changes_nothing(
    waiting, api_as, roles, path
):
    # given an order waiting for the payment, whose node's form would drop a key it does not ask for
    before = what_changes(waiting)
    forged = {**PAID, "wait_payment": {"timed_out": False}}

    # when the sender writes the wait's record beside the payment
    if path == "by id":
        response = api_as(roles.operator).post(signal_path(waiting), signal(payload=forged))
    else:
        response = api_as(roles.operator).post("/api/signals/", {**signal(payload=forged), "business_key": "B-1"})

    # then it is told, as sent, with its own code, and nothing is received or merged
    assert response.status_code == 422, response.content
    assert response["Content-Type"] == "application/problem+json"
    body = response.json()
    assert (body["code"], body["detail"]) == (
        "sets_records",
        "The payload may not set the workflow's own records: wait_payment.",
    )
    assert list(body["errors"]) == ["payload.wait_payment"]
    assert what_changes(waiting) == before


@in_process
def test_a_payload_naming_another_workflows_step_is_accepted(waiting, api_as, roles):
    # when: "manager_approval" is a human step of the demo's expense workflow, not of this one
    response = api_as(roles.operator).post(signal_path(waiting), signal(payload={**PAID, "manager_approval": "x"}))

    # then the form takes what it asks for, as before: the key is no record here
    assert response.status_code == 201, response.content
    assert response.json()["state"] == "consumed"


@in_process
def test_the_same_signal_id_with_another_payload_is_409(waiting, api_as, roles):
    client = api_as(roles.operator)
    assert client.post(signal_path(waiting), signal("s")).status_code == 201
    before = what_changes(waiting)

    response = client.post(signal_path(waiting), signal("s", {"paid_amount": "99.00", "reference": "OTHER"}))

    assert response.status_code == 409
    assert "signal_id" in response.json()["errors"]
    assert what_changes(waiting) == before


@in_process
def test_an_ended_instance_takes_no_signal(waiting, api_as, roles):
    from orchestrator.audit import Actor

    instance_cancel(waiting.pk, actor=Actor.of(roles.operator), reason="customer cancelled")
    before = what_changes(waiting)

    response = api_as(roles.operator).post(signal_path(waiting), signal())

    assert response.status_code == 409
    assert response.json()["code"] == "conflict"
    assert what_changes(waiting) == before


@in_process
def test_who_may_signal(waiting, api_as, roles):
    """Operators hold deliver_signal and see every instance; a manager sees it without the permission (403); an
    approver does not see it (404); its initiator may not steer it even with the permission (four-eyes)."""
    roles.staff.groups.add(roles.operators)  # the initiator now holds every permission an operator has
    before = what_changes(waiting)
    stranger = UserFactory(username="stranger", groups=[roles.approvers])

    answers = {
        "anonymous": api_as(None).post(signal_path(waiting), signal()).status_code,
        "stranger": api_as(stranger).post(signal_path(waiting), signal()).status_code,
        "manager": api_as(roles.manager).post(signal_path(waiting), signal()).status_code,
        "initiator": api_as(roles.staff).post(signal_path(waiting), signal()).status_code,
        "unknown id": api_as(roles.operator).post(signal_path(2**62), signal()).status_code,
    }

    assert answers == {"anonymous": 401, "stranger": 404, "manager": 403, "initiator": 403, "unknown id": 404}
    assert what_changes(waiting) == before


@in_process
def test_by_business_key_unknown_shared_and_foreign(waiting, payment_flow, api_as, roles, run_steps):
    twin = instance_start("api_payment", {"order": "B-1 again"}, initiator=roles.staff, business_key="B-1")
    run_steps(twin)
    operator = api_as(roles.operator)

    unknown = operator.post("/api/signals/", {**signal(), "business_key": "NOPE"})
    shared = operator.post("/api/signals/", {**signal(), "business_key": "B-1"})
    stranger = api_as(UserFactory(username="stranger", groups=[roles.approvers]))
    foreign = stranger.post("/api/signals/", {**signal(), "business_key": "B-1", "workflow": "api_payment"})
    no_key = operator.post("/api/signals/", signal())

    assert unknown.status_code == 404
    assert (shared.status_code, list(shared.json()["errors"])) == (409, ["business_key"])
    assert foreign.status_code == 403  # the role first: a person who may not deliver learns nothing of the keys
    assert (no_key.status_code, list(no_key.json()["errors"])) == (400, ["business_key"])
    assert not ReceivedSignal.objects.exists()


@in_process
@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ("not json", "body"),
        ('{"event": "payment.confirmed", "signal_id": "a\\u0000b", "payload": {}}', "body"),
        ('{"event": 7, "signal_id": "x", "payload": {}}', "event"),
        ('{"event": "payment.confirmed", "signal_id": ["x"], "payload": {}}', "signal_id"),
        ('{"event": "payment.confirmed", "signal_id": "x", "payload": [1, 2]}', "payload"),
        ('{"event": "payment.confirmed", "signal_id": "x", "payload": "paid"}', "payload"),
        ('{"event": "payment.confirmed", "signal_id": "' + "x" * 201 + '"}', "signal_id"),
        ('{"event": "payment.confirmed", "signal_id": "   "}', "signal_id"),
        ("[]", "body"),
        ('{"event": "payment.confirmed", "signal_id": "x", "payload": {"big": "' + "x" * 300_000 + '"}}', None),
    ],
)
def test_junk_signals_are_4xx_problems(waiting, api_as, roles, raw, field):
    before = what_changes(waiting)

    response = api_as(roles.operator).post(signal_path(waiting), raw=raw)

    assert 400 <= response.status_code < 500, response.content[:300]
    assert response["Content-Type"] == "application/problem+json"
    if field is not None and field != "body":
        assert field in response.json().get("errors", {}), response.json()
    assert what_changes(waiting) == before


@in_process
def test_an_integration_account_needs_deliver_signal_and_to_see_the_instance(waiting, api_as, roles):
    """README: a service account holds ``deliver_signal`` and ``view_workflowinstance``; with the first alone every
    instance it did not start is 404 by id, and signals by business key are refused outright (403)."""
    from django.contrib.auth.models import Permission

    account = UserFactory(username="payments-gateway")
    account.user_permissions.add(Permission.objects.get(codename="deliver_signal"))
    client = api_as(account)
    by_key = {**signal("k-1"), "business_key": "B-1"}

    blind = (client.post(signal_path(waiting), signal()).status_code, client.post("/api/signals/", by_key).status_code)
    account.user_permissions.add(Permission.objects.get(codename="view_workflowinstance"))
    delivered = client.post("/api/signals/", by_key)  # each request loads the token's user, permissions afresh

    assert blind == (404, 403)
    assert delivered.status_code == 201, delivered.content
    assert delivered.json()["instance"] == waiting.pk
    assert state_of(waiting) == InstanceState.RUNNING


@in_process
def test_by_business_key_a_caller_who_sees_only_some_instances_learns_nothing_of_the_keys(
    waiting, payment_flow, api_as, roles
):
    """A key names an object the caller never showed they may see: without the role that sees every instance, a
    hidden key, a key nobody has and a key of several hidden instances get the same 403, and nothing changes."""
    from django.contrib.auth.models import Permission

    instance_start("api_payment", {"order": "S-1"}, initiator=roles.staff, business_key="S-1")
    instance_start("api_payment", {"order": "S-1 again"}, initiator=roles.staff, business_key="S-1")
    account = UserFactory(username="curious")
    account.user_permissions.add(Permission.objects.get(codename="deliver_signal"))
    client = api_as(account)
    before = what_changes(waiting)

    answers = [client.post("/api/signals/", {**signal(), "business_key": key}) for key in ("B-1", "NOPE", "S-1")]

    assert {(r.status_code, r.json()["detail"]) for r in answers} == {(403, answers[0].json()["detail"])}
    assert what_changes(waiting) == before
    assert not ReceivedSignal.objects.exists()


@in_process
def test_by_business_key_a_retry_after_the_instance_ended_is_a_repeat_not_a_second_delivery(
    waiting, payment_flow, api_as, roles, run_steps
):
    """A sender whose answer was lost retries with the same signal id: after the instance has ended, and after a
    newer instance took the same key, the retry answers 200 with the first delivery, and the newer instance gets
    nothing."""
    operator = api_as(roles.operator)
    first = operator.post("/api/signals/", {**signal("pay-77"), "business_key": "B-1"})
    run_steps(waiting)
    assert (first.status_code, state_of(waiting)) == (201, InstanceState.COMPLETED)
    newer = instance_start("api_payment", {"order": "B-1 reorder"}, initiator=roles.staff, business_key="B-1")
    run_steps(newer)
    before = (what_changes(waiting), what_changes(newer))

    retry = operator.post("/api/signals/", {**signal("pay-77"), "business_key": "B-1"})
    other_body = operator.post(
        "/api/signals/", {**signal("pay-77", {"paid_amount": "1", "reference": "X"}), "business_key": "B-1"}
    )

    assert (retry.status_code, retry["Idempotent-Replayed"]) == (200, "true")
    assert retry.json() == first.json() | {"state": retry.json()["state"]}
    assert retry.json()["instance"] == waiting.pk
    assert other_body.status_code == 409
    assert (what_changes(waiting), what_changes(newer)) == before
    assert state_of(newer) == InstanceState.WAITING


def _balance_schema(payload: dict) -> dict:
    return {"balance_ref": payload["balance_ref"]}


@in_process
def test_a_kept_signal_the_consuming_node_refuses_reads_as_rejected_with_its_errors(
    payment_flow, register_workflow, api_as, roles
):
    # given an instance at its second wait for the event (a schema) after a first (the payment form), paused
    register_workflow(
        Workflow(
            name="api_two_payments",
            version=1,
            steps=[
                Signal("deposit", event="payment.confirmed", form=payment_flow.node("wait_payment").form),
                Signal("balance", event="payment.confirmed", schema=_balance_schema),
            ],
        )
    )
    instance = instance_start("api_two_payments", {"order": "R-1"}, initiator=roles.staff)
    client = api_as(roles.operator)
    assert client.post(signal_path(instance), signal("deposit")).json()["state"] == "consumed"
    instance_pause(instance.pk, actor=Actor("user:operator"), reason="hold")

    # when a signal that fits only the first node's form is kept during the pause, and the instance resumes
    kept = client.post(signal_path(instance), signal("second"))
    assert (kept.status_code, kept.json()["state"]) == (201, "kept")
    instance_resume(instance.pk, actor=Actor("user:operator"), reason="go on")

    # then the second wait refused it: its repeat reads "rejected" with the node and the errors; the wait waits on
    replay = client.post(signal_path(instance), signal("second"))
    assert (replay.status_code, replay.json()["state"]) == (200, "rejected"), replay.content
    assert replay.json()["rejection"]["node"] == "balance"
    assert "KeyError" in replay.json()["rejection"]["errors"]["payload"][0]
    assert state_of(instance) == InstanceState.WAITING
    valid = client.post(signal_path(instance), signal("third", {"balance_ref": "B-9"}))
    assert (valid.status_code, valid.json()["state"]) == (201, "consumed")
    assert state_of(instance) == InstanceState.COMPLETED


def _needs_route(data: dict) -> None:
    return data["route"] and None  # a KeyError without data["route"]: the workflow's own bug


@in_process
def test_a_signal_whose_flow_cannot_go_on_is_accepted_and_the_instance_fails_visibly(
    payment_flow, register_workflow, api_as, roles, run_steps
):
    # given two instances waiting at a node whose next decision reads data["route"], which they lack; one paused
    register_workflow(
        Workflow(
            name="api_routed",
            version=1,
            steps=[
                Signal("wait_payment", event="payment.confirmed", form=payment_flow.node("wait_payment").form),
                Decision("route", _needs_route),
            ],
        )
    )
    delivered = instance_start("api_routed", {"order": "R-2"}, initiator=roles.staff)
    paused = instance_start("api_routed", {"order": "R-3"}, initiator=roles.staff)
    operator = api_as(roles.operator)
    assert operator.post(f"/api/instances/{paused.pk}/pause/", {"reason": "hold"}).status_code == 200
    assert operator.post(signal_path(paused), signal("kept")).json()["state"] == "kept"

    # when a signal is delivered to the waiting one, and the paused one (holding a kept signal) is resumed
    delivery = operator.post(signal_path(delivered), signal("late"))
    resume = operator.post(f"/api/instances/{paused.pk}/resume/", {"reason": "go on"})

    # then neither is a 500: the delivery is accepted and consumed, the resume succeeds; each instance failed at
    # its wait with the decision's error on the instance, for an operator to retry once the definition is fixed
    assert (delivery.status_code, delivery.json()["state"]) == (201, "consumed"), delivery.content
    assert resume.status_code == 200, resume.content
    for instance in (delivered, paused):
        detail = operator.get(f"/api/instances/{instance.pk}/").json()
        assert detail["state"] == InstanceState.FAILED, detail
        assert detail["error"].startswith("wait_payment failed: 'route'"), detail
    # and a retry while the decision still raises is a 4xx problem naming the error, never a 500
    retry = operator.post(f"/api/instances/{delivered.pk}/retry/", {"reason": "again"})
    assert 400 <= retry.status_code < 500, retry.content
    assert retry["Content-Type"].startswith("application/problem+json")
    assert "still raises KeyError" in retry.json()["detail"]


@in_process
def test_a_payload_with_an_object_for_a_text_field_is_422_naming_it(waiting, api_as, roles):
    # given: the node's form takes one text for "reference"; Django would store str(the object)
    before = what_changes(waiting)

    # when
    response = api_as(roles.operator).post(
        signal_path(waiting), signal(payload={"paid_amount": "12.50", "reference": {"id": "PAY-9"}})
    )

    # then
    assert response.status_code == 422, response.content
    assert "payload.reference" in response.json()["errors"], response.json()
    assert what_changes(waiting) == before


@in_process
def test_an_account_with_the_longest_username_django_allows_creates_a_token_and_delivers(waiting, api_as):
    """ "user:" and a 150-character username is 155 characters: the audit's actor label and a signal's sender held
    150, so every audited act of such an account (its token's creation included) was a database error, a 500."""
    from django.contrib.auth.models import Permission

    from api.tokens import token_create

    # given an integration account whose username is as long as Django allows
    account = UserFactory(username="svc-" + "x" * 146)
    account.user_permissions.add(*Permission.objects.filter(codename__in=["deliver_signal", "view_workflowinstance"]))

    # when it gets a token and delivers a signal with it
    token_create(account, "gateway")
    delivered = api_as(account).post(signal_path(waiting), signal("long-name"))

    # then both are recorded under its whole name
    assert delivered.status_code == 201, delivered.content
    label = f"user:{account.username}"
    assert ReceivedSignal.objects.get(instance=waiting).sender == label
    assert AuditEvent.objects.filter(actor_label=label).count() >= 2
