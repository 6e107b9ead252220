"""Engine pages through HTTP: instance list and detail by role, operator actions, start forms, the catalog."""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from django import forms
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from demo.data import grant_group_permissions
from demo.workflows import bench
from orchestrator import registry
from orchestrator.audit import Actor
from orchestrator.bidi import isolate
from orchestrator.dsl import Task, Workflow
from orchestrator.models import AuditEvent, InstanceState, WorkflowInstance
from orchestrator.services.instances import instance_pause, instance_start
from tests.factories import ExpenseInputFactory, OrderInputFactory

pytestmark = pytest.mark.django_db

ALERT = re.compile(r'<div class="alert alert-(\w+)[^"]*"[^>]*>\s*(.*?)\s*<button', re.S)


@pytest.fixture
def roles(users):
    """The demo's permissions on the ``users`` groups: approvers start, managers also view, operators operate."""
    grant_group_permissions()
    return users


def login(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def shown(response) -> list[tuple[str, str]]:
    """The flash messages on the page, as (level, text)."""
    content = response.content.decode()
    if 'id="messages"' not in content:
        return []
    block = content.split('id="messages"', 1)[1].split("<main", 1)[0]
    return [(level, html.unescape(" ".join(text.split()))) for level, text in ALERT.findall(block)]


def expense(initiator=None, **overrides) -> WorkflowInstance:
    return instance_start("expense_approval", ExpenseInputFactory(**overrides), initiator=initiator)


def detail_url(instance: WorkflowInstance) -> str:
    return reverse("console:instance_detail", args=[instance.pk])


def operate_url(instance: WorkflowInstance, operation: str) -> str:
    return reverse("console:instance_operate", args=[instance.pk, operation])


# --- who sees which instance ----------------------------------------------------------------------------


def test_the_list_shows_everything_to_operators_and_to_staff_what_their_page_opens(roles, client):
    """An operator lists every instance; staff list the ones they started and those of a task they may act on (a
    colleague's expense, whose approval is for approvers, staff among them), as the instance page opens them."""
    # given
    own = expense(initiator=roles.staff, description="Staff's own trip")
    other = expense(initiator=roles.staff2, description="Someone else's trip")
    assert other.tasks.get().candidate_groups.filter(user=roles.staff).exists()
    system = instance_start("order_fulfilment", OrderInputFactory())

    # when
    operator_page = login(roles.operator).get(reverse("console:instance_list")).content.decode()
    staff_page = login(roles.staff).get(reverse("console:instance_list")).content.decode()

    # then
    for instance in (own, other, system):
        assert f'href="{detail_url(instance)}"' in operator_page
    assert f'href="{detail_url(own)}"' in staff_page
    assert f'href="{detail_url(other)}"' in staff_page
    assert f'href="{detail_url(system)}"' not in staff_page
    assert login(roles.staff).get(detail_url(system)).status_code == 404


def test_detail_is_for_the_initiator_candidates_and_operators(roles):
    """staff is neither initiator nor candidate of manager's order (404); they see their own and their tasks'."""
    # given
    unrelated = instance_start("order_fulfilment", OrderInputFactory(), initiator=roles.manager)
    started = expense(initiator=roles.staff)
    candidate_of = expense(initiator=roles.operator)  # its team approval is for approvers, staff among them
    client = login(roles.staff)

    # when
    statuses = [client.get(detail_url(i)).status_code for i in (unrelated, started, candidate_of)]

    # then
    assert statuses == [404, 200, 200]
    assert login(roles.operator).get(detail_url(unrelated)).status_code == 200


@pytest.mark.parametrize(("who", "sees_audit"), [("operator", True), ("admin", True), ("staff", False)])
def test_the_audit_trail_is_for_operators_and_admins(roles, who, sees_audit):
    """Operators and administrators see the audit trail; staff, even on their own instance, do not."""
    # given
    instance = expense(initiator=roles.staff)

    # when
    response = login(getattr(roles, who)).get(detail_url(instance))

    # then
    assert response.status_code == 200
    assert ("Audit trail" in response.content.decode()) is sees_audit
    assert ("instance.started" in response.content.decode()) is sees_audit


# --- operator actions -----------------------------------------------------------------------------------

OPERATIONS = ["retry", "pause", "resume", "cancel"]


@pytest.fixture
def instance_for(roles, run_steps) -> Callable[[str], WorkflowInstance]:
    """An instance started by staff, in a state the operation applies to."""

    def make(operation: str) -> WorkflowInstance:
        if operation == "retry":
            instance = instance_start("order_fulfilment", OrderInputFactory(fail_reserve=True), initiator=roles.staff)
            run_steps(instance, advance=True)
        else:
            instance = expense(initiator=roles.staff)
            if operation == "resume":
                instance_pause(instance.pk, actor=Actor.of(roles.operator), reason="hold for audit")
        instance.refresh_from_db()
        return instance

    return make


EXPECTED = {
    "retry": (InstanceState.FAILED, InstanceState.RUNNING, "instance.retried", "Retried"),
    "pause": (InstanceState.WAITING, InstanceState.PAUSED, "instance.paused", "Paused"),
    "resume": (InstanceState.PAUSED, InstanceState.WAITING, "instance.resumed", "Resumed"),
    "cancel": (InstanceState.WAITING, InstanceState.CANCELLED, "instance.cancelled", "Cancelled"),
}


@pytest.mark.parametrize("operation", OPERATIONS)
def test_operator_actions_refuse_get(roles, instance_for, operation):
    """retry, pause, resume and cancel are POST only: GET is 405 and changes nothing."""
    # given
    instance = instance_for(operation)

    # when
    response = login(roles.operator).get(operate_url(instance, operation), {"reason": "by link"})

    # then
    assert response.status_code == 405
    instance.refresh_from_db()
    assert instance.state == EXPECTED[operation][0]


@pytest.mark.parametrize("operation", OPERATIONS)
def test_operator_actions_are_refused_to_staff(roles, instance_for, operation):
    """staff may see the instance they started, but not operate it: 403, state unchanged."""
    # given
    instance = instance_for(operation)

    # when
    response = login(roles.staff).post(operate_url(instance, operation), {"reason": "I want to"})

    # then
    assert response.status_code == 403
    instance.refresh_from_db()
    assert instance.state == EXPECTED[operation][0]


@pytest.mark.parametrize(
    "operation",
    [
        "retry",
        "pause",
        "resume",
        "cancel",
    ],
)
def test_operator_actions_need_a_reason(roles, instance_for, operation):
    """Without a reason the action is refused with a message on the instance page (shown again, not redirected
    to) and the instance stays as it was."""
    # given
    instance = instance_for(operation)
    events = AuditEvent.objects.filter(instance=instance).count()

    # when
    response = login(roles.operator).post(operate_url(instance, operation), {"reason": "  "}, follow=True)

    # then
    assert (response.redirect_chain, response.status_code) == ([], 400)
    assert shown(response) == [("danger", "Give a reason: it goes into the audit trail.")]
    instance.refresh_from_db()
    assert instance.state == EXPECTED[operation][0]
    assert AuditEvent.objects.filter(instance=instance).count() == events


@pytest.mark.parametrize("operation", OPERATIONS)
def test_operator_actions_with_a_reason_change_state_and_audit_it(roles, instance_for, operation):
    """With a reason the action runs, says so, and the audit trail names the operator and keeps the reason."""
    # given
    instance = instance_for(operation)
    _before, after, action, verb = EXPECTED[operation]

    # when
    response = login(roles.operator).post(
        operate_url(instance, operation), {"reason": f"ticket OPS-{operation}"}, follow=True
    )

    # then
    instance.refresh_from_db()
    assert instance.state == after
    assert shown(response) == [("success", f"{verb}: {isolate(instance)}.")]
    event = AuditEvent.objects.filter(instance=instance, action=action).latest("seq")
    assert (event.actor_label, event.reason) == ("user:operator", f"ticket OPS-{operation}")
    assert event.request_meta["path"] == operate_url(instance, operation)


def test_an_action_that_does_not_apply_is_a_warning(roles, instance_for):
    """Retrying a waiting instance is refused with a warning that says why."""
    # given
    instance = instance_for("pause")

    # when
    response = login(roles.operator).post(operate_url(instance, "retry"), {"reason": "why not"}, follow=True)

    # then
    assert shown(response) == [("warning", "Only failed instances can be retried; this one is waiting.")]


def test_pause_until_a_time(roles, instance_for):
    """A pause with a resume time keeps that time on the instance."""
    # given
    instance = instance_for("pause")

    # A month ahead: since issue 10 a pause ends within BATON_PAUSE_MAX_DAYS (90) days; 2030 is refused as absurd.
    until = (timezone.now() + timedelta(days=30)).replace(hour=9, minute=0, second=0, microsecond=0)

    # when
    login(roles.operator).post(
        operate_url(instance, "pause"), {"reason": "month end", "until": f"{until:%Y-%m-%d %H:%M}"}
    )

    # then
    instance.refresh_from_db()
    assert instance.state == InstanceState.PAUSED
    assert instance.paused_until == until


def test_pause_with_a_bad_time_explains_itself(roles, instance_for):
    """A resume time that is not a date: an error message, the instance keeps running."""
    # given
    instance = instance_for("pause")

    # when
    response = login(roles.operator).post(
        operate_url(instance, "pause"), {"reason": "month end", "until": "after lunch"}, follow=True
    )

    # then
    assert response.status_code == 400
    assert shown(response) == [("danger", "Resume at: enter a real date and time, like 2026-12-01 09:00.")]
    assert 'value="after lunch"' in response.content.decode()  # what was typed is still in the box
    instance.refresh_from_db()
    assert instance.state == InstanceState.WAITING


def test_pause_with_an_impossible_date_is_an_error_not_a_500(roles, instance_for):
    """30 February looks like a date but is none: an error message, not a server error."""
    # given
    instance = instance_for("pause")
    client = Client(raise_request_exception=False)
    client.force_login(roles.operator)

    # when
    response = client.post(operate_url(instance, "pause"), {"reason": "month end", "until": "2030-02-30 09:00"})

    # then
    assert response.status_code == 400
    instance.refresh_from_db()
    assert instance.state == InstanceState.WAITING


# --- starting a workflow from its form ------------------------------------------------------------------

START = "/workflows/expense_approval/start/"
VALID = {"employee": "Sam Staff", "amount": "42.50", "category": "meals", "description": "Team lunch"}


def test_the_start_form_has_visible_labels(roles):
    """Each field of the expense form has a label tied to it, and the form carries an idempotency key."""
    # when
    response = login(roles.staff).get(START)

    # then
    assert response.status_code == 200
    content = response.content.decode()
    for field, label in [
        ("employee", "Employee"),
        ("amount", "Amount (EUR)"),
        ("category", "Category"),
        ("description", "What was it for?"),
    ]:
        assert f'<label class="form-label" for="id_{field}">{label}</label>' in content
        assert f'id="id_{field}"' in content
    assert re.search(r'name="baton-idempotency_key" value="[0-9a-f]{32}"', content)


def test_an_invalid_start_is_400_with_field_errors(roles):
    """A missing employee and a negative amount: 400, each error beside its field, nothing started."""
    # when
    response = login(roles.staff).post(START, {**VALID, "employee": "", "amount": "-3", "baton-idempotency_key": "k1"})

    # then
    assert response.status_code == 400
    content = html.unescape(response.content.decode())
    assert "This field is required." in content
    assert "Ensure this value is greater than or equal to 0.01." in content
    assert "Team lunch</textarea>" in content
    assert 'name="baton-idempotency_key" value="k1"' in content
    assert not WorkflowInstance.objects.exists()


def test_a_valid_start_opens_the_new_instance(roles):
    """Valid input starts the latest version with staff as initiator and opens its page."""
    # when
    response = login(roles.staff).post(START, {**VALID, "baton-idempotency_key": "k2"}, follow=True)

    # then
    instance = WorkflowInstance.objects.get()
    assert response.redirect_chain == [(detail_url(instance), 302)]
    assert (instance.workflow_version, instance.initiator, instance.idempotency_key) == (2, roles.staff, "k2")
    assert instance.data["description"] == "Team lunch"
    assert shown(response) == [("success", f"Started {isolate(instance)}.")]


def test_the_same_form_posted_twice_starts_one_instance(roles):
    """A double click (the same idempotency key twice) starts one instance; both answers open it."""
    # given
    client = login(roles.staff)
    form = {**VALID, "baton-idempotency_key": "double-click"}

    # when
    first = client.post(START, form)
    second = client.post(START, form)

    # then
    instance = WorkflowInstance.objects.get()
    assert first["Location"] == second["Location"] == detail_url(instance)


def test_the_same_key_with_other_values_is_refused(roles):
    """Reusing a form's key with changed values says so and starts nothing new."""
    # given
    client = login(roles.staff)
    client.post(START, {**VALID, "baton-idempotency_key": "edited"}, follow=True)

    # when
    response = client.post(START, {**VALID, "amount": "99", "baton-idempotency_key": "edited"})

    # then
    assert shown(response) == [("danger", "This form was already submitted with other values.")]
    assert WorkflowInstance.objects.count() == 1


def test_starting_needs_the_permission(users):
    """Without add_workflowinstance the start page answers 403."""
    # when / then
    assert login(users.staff).get(START).status_code == 403


# --- the catalog ----------------------------------------------------------------------------------------


@pytest.fixture
def product_workflows() -> Iterator[None]:
    """The registry as the product ships it: tests/settings.py also loads the benchmark flows, the product not."""
    # Every Workflow the benchmark module registers, so a new benchmark flow is left out without a list to keep.
    benchmark = [flow for flow in vars(bench).values() if isinstance(flow, Workflow)]
    for workflow in benchmark:
        registry.unregister(workflow.name, workflow.version)
    yield
    for workflow in benchmark:
        registry.register(workflow)


def test_the_catalog_lists_the_product_workflows(roles, product_workflows):
    """Order fulfilment and expense approval are listed with a Start button; no benchmark flow is."""
    # when
    response = login(roles.staff).get(reverse("console:workflow_list"))

    # then
    content = response.content.decode()
    assert response.status_code == 200
    # Each title links to the workflow's own page (versions, diagrams, what changed).
    for name, title in [("order_fulfilment", "Order fulfilment"), ("expense_approval", "Expense approval")]:
        link = f'<a href="/workflows/{name}/" class="link-body-emphasis">{title}</a>'
        assert f'id="wf-{name}">{link}</h2>' in content
    assert f'href="{START}"' in content
    assert "bench_" not in content
    assert "Benchmark" not in content


# --- anonymous visitors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/instances/",
        "/workflows/",
        START,
    ],
)
def test_anonymous_visitors_are_sent_to_sign_in(client, path):
    """Every engine page asks an anonymous visitor to sign in."""
    # when
    response = client.get(path)

    # then
    assert (response.status_code, response["Location"]) == (302, f"{reverse('login')}?next={path}")


def test_anonymous_visitors_are_sent_to_sign_in_from_an_instance(client):
    """An instance page asks an anonymous visitor to sign in (and tells them nothing about it)."""
    # given
    instance = expense()

    # when
    response = client.get(detail_url(instance))

    # then
    assert (response.status_code, response["Location"]) == (302, f"{reverse('login')}?next={detail_url(instance)}")


class KeyedForm(forms.Form):
    idempotency_key = forms.CharField(label="Supplier's order number")


def test_a_start_form_with_a_field_named_like_the_page_s_key_keeps_both(roles, register_workflow):
    """The page's own resubmission key was posted as ``idempotency_key``: a workflow whose form has a field of that
    name got its value as the key (or the key as its value). The page's key is ``baton-idempotency_key``."""
    # given a workflow whose start form asks for an "idempotency_key"
    register_workflow(Workflow("keyed_flow", 1, [Task("go", lambda ctx: None)], start_form=KeyedForm))
    client = login(roles.staff)

    # when the form is posted with both, twice (a double click)
    form = {"idempotency_key": "PO-1", "baton-idempotency_key": "page-key"}
    first = client.post("/workflows/keyed_flow/start/", form)
    second = client.post("/workflows/keyed_flow/start/", form)

    # then one instance, with the typed value as data and the page's key as its key
    instance = WorkflowInstance.objects.get(workflow_name="keyed_flow")
    assert first.status_code == second.status_code == 302
    assert instance.data == {"idempotency_key": "PO-1"}
    assert instance.idempotency_key == "page-key"
