"""The console's pages through the whole request stack: what each role sees, bad input kept on the page, the
actions' outcomes and refusals, bulk dry run and confirmation, and constant query counts."""

from __future__ import annotations

import html
import json
import re
from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest
from django import forms
from django.urls import reverse
from django.utils import timezone

from approvals.timezones import SESSION_KEY
from console.models import BulkJob, BulkJobState
from console.selectors import InstanceFilter
from console.services import bulk_dry_run
from orchestrator.audit import Actor
from orchestrator.dsl import Human, Retry, StepContext, Task, Workflow
from orchestrator.models import AuditEvent, InstanceState, WorkflowInstance
from orchestrator.services.instances import instance_start
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

STATE = {"down": True}


def pay(ctx: StepContext) -> dict:
    if STATE["down"]:
        raise ConnectionError("payroll is down")
    return {"paid": True}


def after(ctx: StepContext) -> dict:
    return {"told": True}


@pytest.fixture
def flow(register_workflow):
    STATE["down"] = True
    yield register_workflow(
        Workflow("view_flow", 1, [Task("pay", pay, retry=Retry(max_attempts=2, backoff=0)), Task("tell", after)])
    )
    STATE["down"] = False


@pytest.fixture
def failed(flow, users, run_steps) -> WorkflowInstance:
    instance = instance_start("view_flow", {"customer": "ACME", "amount": 40}, initiator=users.staff)
    run_steps(advance=True)
    instance.refresh_from_db()
    assert instance.state == InstanceState.FAILED
    return instance


def login(client, user):
    client.force_login(user)
    return client


def detail(instance) -> str:
    return reverse("console:instance_detail", args=[instance.pk])


def action(instance, name) -> str:
    return reverse("console:instance_operate", args=[instance.pk, name])


def test_the_instance_page_shows_actions_first_and_every_attempt(client, users, failed):
    # when
    page = login(client, users.operator).get(detail(failed)).content.decode()

    # then
    assert page.index('aria-label="Operator actions"') < page.index("Steps and every attempt")
    assert "payroll is down" in page
    assert page.count('class="attempt-failed"') + page.count('class="attempt-dead"') == 2
    assert "Skip pay" in page


def test_the_initiator_sees_the_attempts_without_server_paths(client, users, failed):
    page = html.unescape(login(client, users.staff).get(detail(failed)).content.decode())
    assert 'File "test_views.py"' in page
    assert "/tests/console/test_views.py" not in page
    assert 'aria-label="Operator actions"' not in page


def test_retry_from_the_page_is_audited_with_the_reason(client, users, failed, run_steps):
    # given
    STATE["down"] = False

    # when
    response = login(client, users.operator).post(action(failed, "retry"), {"reason": "payroll is back"})
    run_steps(advance=True)

    # then
    assert response.status_code == 302
    failed.refresh_from_db()
    assert failed.state == InstanceState.COMPLETED
    event = AuditEvent.objects.get(instance=failed, action="instance.retried")
    assert (event.actor_label, event.reason) == ("user:operator", "payroll is back")


def test_a_skip_with_bad_json_comes_back_with_what_was_typed(client, users, failed):
    # given
    step = failed.steps.get(name="pay")

    # when
    response = login(client, users.operator).post(
        action(failed, "skip"), {"step": step.pk, "output": '{"paid": tru', "reason": "paid by hand"}
    )

    # then
    assert response.status_code == 400
    page = response.content.decode()
    assert "not valid JSON (line 1" in page
    assert "{&quot;paid&quot;: tru</textarea>" in page
    assert 'value="paid by hand"' in page
    assert WorkflowInstance.objects.get(pk=failed.pk).state == InstanceState.FAILED


@pytest.mark.parametrize("operation", ["skip", "edit-data"])
def test_json_nested_too_deep_to_read_is_a_message_with_the_text_kept(client, users, failed, operation):
    # given: JSON nested past Python's recursion limit (json.loads raised RecursionError: a 500)
    typed = '{"a":' * 3000 + "1" + "}" * 3000
    step = failed.steps.get(name="pay")
    fields = {"step": step.pk, "output": typed} if operation == "skip" else {"new_data": typed, "seq": failed.audit_seq}

    # when
    response = login(client, users.operator).post(action(failed, operation), {**fields, "reason": "by hand"})

    # then
    assert response.status_code == 400
    page = response.content.decode()
    assert "nested deeper than" in page
    assert "{&quot;a&quot;:{&quot;a&quot;:" in page
    assert WorkflowInstance.objects.get(pk=failed.pk).state == InstanceState.FAILED


def data_of_size(size: int) -> dict:
    """Business data whose JSON is ``size`` bytes as the engine measures a value it stores (``check_result``)."""
    frame = len(json.dumps({"customer": "ACME", "notes": ""}, ensure_ascii=False).encode())
    return {"customer": "ACME", "notes": "n" * (size - frame)}


def as_the_editor_shows(data: dict) -> str:
    """The text the data editor fills its box with (indented: longer than the engine's measure)."""
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False)


def test_the_data_editor_saves_data_as_large_as_the_engine_stores(client, users, failed, settings):
    # given data of exactly the engine's limit for a stored value, far past the editor's old 256 KiB, typed as the
    # editor shows data (indented)
    limit = settings.BATON_MAX_RESULT_BYTES
    data = data_of_size(limit)
    typed = as_the_editor_shows(data)
    assert len(typed) > 256 * 1024

    # when
    response = login(client, users.operator).post(
        action(failed, "edit-data"), {"new_data": typed, "seq": failed.audit_seq, "reason": "notes from the call"}
    )

    # then
    assert response.status_code == 302, response.content.decode()[:2000]
    assert WorkflowInstance.objects.get(pk=failed.pk).data == data


def test_data_past_the_engines_limit_is_a_message_with_the_text_kept(client, users, failed, settings):
    # given one byte more than the engine stores
    limit = settings.BATON_MAX_RESULT_BYTES
    typed = as_the_editor_shows(data_of_size(limit + 1))

    # when
    response = login(client, users.operator).post(
        action(failed, "edit-data"), {"new_data": typed, "seq": failed.audit_seq, "reason": "notes from the call"}
    )

    # then: refused, saying the size and the limit, with what was typed in the box
    assert response.status_code == 400
    page = html.unescape(response.content.decode())
    assert f"Data: {limit + 1:,} bytes of JSON, more than the {limit:,} the engine stores" in page
    assert "BATON_MAX_RESULT_BYTES" in page
    assert typed in page
    assert 'value="notes from the call"' in page
    assert WorkflowInstance.objects.get(pk=failed.pk).data == {"customer": "ACME", "amount": 40}


def test_the_data_editor_posts_its_text_as_typed(client, users, failed):
    # given: a form body percent-encodes JSON's quotes, braces and colons (three bytes each), so the text would reach
    # Django's request limit well before the engine's
    page = login(client, users.operator).get(detail(failed)).content.decode()

    # then
    form = page.split('id="panel-edit-data"', 1)[1].split(">", 2)[1]
    assert 'enctype="multipart/form-data"' in form


def form_tag(page: str, panel: str) -> str:
    """The opening <form> tag inside the action panel ``panel`` (``edit-data``, ``skip``)."""
    return page.split(f'id="panel-{panel}"', 1)[1].split("<form", 1)[1].split(">", 1)[0]


@pytest.mark.parametrize("panel", ["edit-data", "skip"])
def test_the_json_forms_are_given_the_request_limit_to_check_before_sending(client, users, failed, settings, panel):
    """Text past DATA_UPLOAD_MAX_MEMORY_SIZE is refused by Django before any view (the generic 400 page, the text
    lost): the page gives each form that carries typed JSON the limit, and forms.js checks it before sending."""
    # given
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 3_000_000

    # when
    page = login(client, users.operator).get(detail(failed)).content.decode()

    # then: the limit on the form, and the place its refusal is said, in the form
    assert 'data-body-max="3000000"' in form_tag(page, panel)
    inside = page.split(f'id="panel-{panel}"', 1)[1].split("</form>", 1)[0]
    assert "data-body-too-large" in inside
    assert "3,000,000 bytes" in html.unescape(inside)


@pytest.mark.parametrize("debug", [False, True], ids=["production", "demo-debug"])
def test_a_form_past_the_request_limit_is_answered_saying_so_not_with_the_generic_400(
    client, users, failed, settings, debug
):
    """Without the page's script (or from another client), Django still refuses the body: the answer says what was
    too large and what to do, instead of "could not be understood" (or, in the demo, Django's debug page)."""
    # given: a request limit of 20,000 bytes and 30,000 characters of typed data
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 20_000
    settings.DEBUG = debug
    typed = json.dumps({"customer": "ACME", "notes": "n" * 30_000})

    # when
    response = login(client, users.operator).post(
        action(failed, "edit-data"), {"new_data": typed, "seq": failed.audit_seq, "reason": "notes from the call"}
    )

    # then
    assert response.status_code == 413
    text = " ".join(html.unescape(response.content.decode()).split())
    assert "could not be understood" not in text
    assert "Traceback" not in text
    assert "DEBUG = True" not in text
    assert "more than the 20,000 bytes a form may send" in text
    assert "Nothing was saved" in text
    assert WorkflowInstance.objects.get(pk=failed.pk).data == {"customer": "ACME", "amount": 40}


def test_data_whose_indented_text_a_form_cannot_send_is_put_in_the_editor_compact(client, users, failed, settings):
    """The editor fills its box with the data indented; for data within the engine's limit whose indented text is
    past what a form may send (many short values: each indented onto a line of its own), the box would hold text
    that cannot be saved as it stands. Then it holds the data compact, which a form can send."""
    # given: 100,000 short values, about 300 KB compact, about 800 KB as the form would send them indented
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 500_000
    data = {"customer": "ACME", "items": [1] * 100_000}
    WorkflowInstance.objects.filter(pk=failed.pk).update(data=data)

    # when
    page = login(client, users.operator).get(detail(failed)).content.decode()

    # then
    box = page.split('id="edit-data"', 1)[1].split(">", 1)[1].split("</textarea>", 1)[0]
    text = html.unescape(box)
    assert json.loads(text) == data
    assert len(text.encode()) + text.count("\n") < 500_000

    # and: small data stays indented, as a person reads it
    WorkflowInstance.objects.filter(pk=failed.pk).update(data={"customer": "ACME", "amount": 40})
    page = login(client, users.operator).get(detail(failed)).content.decode()
    assert '{\n  "amount": 40,\n  "customer": "ACME"\n}' in html.unescape(page)


def test_a_skip_shows_the_step_as_resolved_by_hand(client, users, failed, run_steps):
    # given
    step = failed.steps.get(name="pay")
    login(client, users.operator).post(
        action(failed, "skip"), {"step": step.pk, "output": '{"paid": "by wire"}', "reason": "wired it"}
    )
    run_steps(advance=True)

    # when
    page = client.get(detail(failed)).content.decode()

    # then
    assert 'data-resolved="by-hand"' in page
    assert "by wire" in page


def test_a_pause_in_the_past_is_refused_with_the_time_kept(client, users, flow):
    instance = instance_start("view_flow", {})
    response = login(client, users.operator).post(
        action(instance, "pause"), {"reason": "hold", "until": "2001-01-01T10:00"}
    )
    assert response.status_code == 400
    assert 'value="2001-01-01T10:00"' in response.content.decode()


def test_a_refused_action_is_a_409_with_the_reason(client, users, flow):
    instance = instance_start("view_flow", {})
    response = login(client, users.operator).post(action(instance, "retry"), {"reason": "why not"})
    assert response.status_code == 409
    assert "Only failed instances can be retried" in response.content.decode()


@pytest.mark.parametrize(("who", "status"), [("staff", 403), ("staff2", 404), ("manager", 403)])
def test_only_operators_act(client, users, failed, who, status):
    response = login(client, getattr(users, who)).post(action(failed, "compensate"), {"reason": "x"})
    assert response.status_code == status


def test_the_list_filters_on_business_data_and_keeps_bad_input_as_a_message(client, users, failed, flow):
    # given
    instance_start("view_flow", {"customer": "Other"})

    # when
    page = login(client, users.operator).get(
        reverse("console:instance_list"), {"data_path": "customer", "data_value": "ACME", "version": "x\x00"}
    )

    # then
    assert page.status_code == 200
    assert [i.pk for i in page.context["page"].rows] == [failed.pk]
    assert "Version:" in page.content.decode()


def test_a_started_range_given_backwards_is_named_not_an_empty_list_without_a_word(client, users, failed):
    # given: "from" after "before" (typed the wrong way round): nothing can match, and the list said nothing
    typed = {"started_from": "2026-05-02T10:00", "started_to": "2026-05-01T10:00"}

    # when
    page = login(client, users.operator).get(reverse("console:instance_list"), typed)

    # then: the message names it, the list shows the instances without the bad bound, the typed values stay
    assert page.status_code == 200
    body = html.unescape(page.content.decode())
    assert "Started before: must be after Started from" in body
    assert [i.pk for i in page.context["page"].rows] == [failed.pk]
    assert 'value="2026-05-01' in body


def test_a_bulk_dry_run_over_a_backwards_range_is_refused_with_the_reason(client, users, failed):
    # when
    response = login(client, users.operator).post(
        reverse("console:bulk_dry_run"),
        {"action": "retry", "started_from": "2026-05-02T10:00", "started_to": "2026-05-01T10:00"},
        follow=True,
    )

    # then
    assert "Started before: must be after Started from" in html.unescape(response.content.decode())
    assert not BulkJob.objects.exists()


def test_a_bulk_dry_run_with_a_filter_given_twice_is_refused_not_widened(client, users, failed):
    # given: a dry run posted with the workflow filter twice. The list leaves a repeated filter out and says so; the
    # bulk action left it out without a word and counted every workflow's instances.
    typed = {"action": "retry", "workflow": ["view_flow", "another_flow"]}

    # when
    response = login(client, users.operator).post(reverse("console:bulk_dry_run"), typed, follow=True)

    # then
    assert "Workflow: given 2 times" in html.unescape(response.content.decode())
    assert not BulkJob.objects.exists()


def test_the_list_and_the_instance_page_take_a_fixed_number_of_queries(
    client, users, flow, run_steps, django_assert_num_queries
):
    # given: one instance, then twenty more
    login(client, users.operator)
    instance_start("view_flow", {})
    client.get(reverse("console:instance_list"))
    with django_assert_num_queries(LIST_QUERIES):
        client.get(reverse("console:instance_list"))
    for _ in range(20):
        instance_start("view_flow", {})
    run_steps(advance=True)

    # then
    with django_assert_num_queries(LIST_QUERIES):
        client.get(reverse("console:instance_list"))
    one = WorkflowInstance.objects.first()
    with django_assert_num_queries(DETAIL_QUERIES):
        client.get(detail(one))


def test_incidents_is_for_those_who_watch_running_work(client, users, failed):
    assert login(client, users.manager).get(reverse("console:incidents")).status_code == 200
    page = login(client, users.operator).get(reverse("console:incidents")).content.decode()
    assert "view_flow" in page
    assert "pay failed: payroll is down" in page
    assert login(client, users.staff).get(reverse("console:incidents")).status_code == 404


def test_bulk_dry_run_then_confirm(client, users, failed, flow, run_steps):
    # given
    login(client, users.operator)

    # when
    dry = client.post(reverse("console:bulk_dry_run"), {"action": "retry", "workflow": "view_flow"})
    job = BulkJob.objects.get()
    shown = client.get(dry["Location"]).content.decode()
    confirmed = client.post(reverse("console:bulk_confirm", args=[job.pk]), {"reason": "payroll is back"})

    # then
    assert dry.status_code == 302
    assert 'id="dry-count">1</strong>' in shown
    assert confirmed.status_code == 302
    job.refresh_from_db()
    assert job.state == BulkJobState.QUEUED


def test_a_dry_run_is_not_shown_to_another_operator(client, users, failed):
    login(client, users.operator).post(reverse("console:bulk_dry_run"), {"action": "cancel"})
    job = BulkJob.objects.get()
    other = users.admin
    assert login(client, other).get(reverse("console:bulk_detail", args=[job.pk])).status_code == 404


LIST_QUERIES = 9  # session, user, permissions (2), the rows, the counts by state, the latest bulk jobs, the nav (2)
DETAIL_QUERIES = 10  # session, user, instance, permissions (2), steps, audit events, tasks, the nav (2)


def test_a_data_edit_read_before_another_change_is_refused_with_the_text_kept(client, users, failed):
    # given: the editor read the instance at this sequence; then another operator changed it
    read_at = failed.audit_seq
    login(client, users.operator).post(
        action(failed, "edit-data"), {"new_data": '{"customer": "ACME", "amount": 41}', "seq": read_at, "reason": "a"}
    )

    # when
    response = client.post(
        action(failed, "edit-data"), {"new_data": '{"customer": "Globex"}', "seq": read_at, "reason": "b"}
    )

    # then
    assert response.status_code == 409
    assert "changed while you were editing" in response.content.decode()
    assert "Globex" in response.content.decode()
    assert WorkflowInstance.objects.get(pk=failed.pk).data == {"customer": "ACME", "amount": 41}


@pytest.mark.parametrize(
    "offset_time", ["2026-01-01T00:00:00+23:59", "2026-01-01T00:00:00-23:59", "9999-12-31T23:59:59-23:59"]
)
def test_a_page_link_edited_to_an_offset_postgresql_refuses_is_a_message_not_a_500(client, users, failed, offset_time):
    # given: the list's cursor with a time whose offset PostgreSQL refuses, or whose UTC value is past year 9999
    import base64

    cursor = base64.urlsafe_b64encode(f"{offset_time}|{failed.pk}".encode()).decode()

    # when
    response = login(client, users.operator).get(reverse("console:instance_list"), {"after": cursor})

    # then
    assert response.status_code == 200


@pytest.fixture
def refund_escalation(run_steps, users):
    """An order whose refund failed every attempt: an escalation for the operators (a failed compensation)."""
    from approvals.models import HumanTask, TaskKind
    from tests.factories import OrderInputFactory

    instance = instance_start(
        "order_fulfilment", OrderInputFactory(fail_shipping=True, fail_refund=4), initiator=users.staff
    )
    run_steps(instance, advance=True)
    return HumanTask.objects.get(instance=instance, kind=TaskKind.ESCALATION)


@pytest.mark.parametrize(
    ("posted", "status", "says"),
    [
        # handing on a task one does not hold: the service refuses it
        ({"op": "reassign", "decision": "fail", "comment": "over to me, ticket 4411"}, 403, "Only the assignee"),
        # a reason longer than the form takes (a browser's maxlength bypassed)
        ({"op": "resolve", "decision": "resolved", "comment": "x" * 1001}, 400, "at most 1000"),
        # bad input the service finds (no reason for marking it resolved): 400 as on the task page, not 409
        ({"op": "resolve", "decision": "resolved", "comment": "  "}, 400, "reason"),
    ],
    ids=["refused by the task", "refused by the form", "refused by the service as invalid"],
)
def test_a_refused_escalation_answer_comes_back_as_typed(client, users, refund_escalation, posted, status, says):
    """A refusal used to redirect to Incidents with a message, and what the operator had written was gone."""
    # when
    posted = {**posted, "to_user": users.operator.pk}
    response = login(client, users.operator).post(
        reverse("console:escalation_answer", args=[refund_escalation.pk]), posted
    )

    # then: the page says why, with the answer's choice and reason as typed, and nothing was decided
    assert response.status_code == status
    page = response.content.decode()
    assert says in html.unescape(page)
    assert f'value="{posted["comment"]}" autofocus' in page
    assert f'<option value="{posted["decision"]}" selected>' in page
    assert f'<option value="{users.operator.pk}" selected>' in page
    refund_escalation.refresh_from_db()
    assert refund_escalation.state == "open"


def test_an_escalation_is_never_offered_for_reassignment_to_whoever_started_its_instance(client, users, run_steps):
    """Given an order started by operator2, an operator, whose refund failed for good, when operator opens Incidents,
    then the escalation's "Reassign to" list offers operator but not operator2 (four-eyes: the service refuses to
    hand it to them, so the page does not offer it)."""
    from approvals.models import HumanTask, TaskKind
    from tests.factories import OrderInputFactory, UserFactory

    # given
    operator2 = UserFactory(username="operator2", groups=[users.operators])
    instance = instance_start(
        "order_fulfilment", OrderInputFactory(fail_shipping=True, fail_refund=4), initiator=operator2
    )
    run_steps(instance, advance=True)
    escalation = HumanTask.objects.get(instance=instance, kind=TaskKind.ESCALATION)

    # when
    page = login(client, users.operator).get(reverse("console:incidents")).content.decode()

    # then
    offered = page.split(f'id="esc-{escalation.pk}-to"', 1)[1].split("</select>", 1)[0]
    assert f'<option value="{users.operator.pk}">operator</option>' in offered
    assert f'value="{operator2.pk}"' not in offered


@pytest.mark.parametrize("typed", ["²", "¹²", "٣x", "9" * 30])
def test_a_person_chosen_by_a_number_that_is_no_number_is_a_message_not_a_500(client, users, refund_escalation, typed):
    """A digit that is not a decimal digit ("²" passes str.isdigit() and int() refuses it) as the person to hand
    an escalation to: the answer comes back refused, with the reason kept, not a server error."""
    # when
    response = login(client, users.operator).post(
        reverse("console:escalation_answer", args=[refund_escalation.pk]),
        {"op": "reassign", "to_user": typed, "comment": "over to the night shift"},
    )

    # then
    assert response.status_code == 400
    assert 'value="over to the night shift" autofocus' in response.content.decode()
    refund_escalation.refresh_from_db()
    assert refund_escalation.state == "open"


def holder_sent(page: str, task) -> str:
    """The holder the Incidents page's answer form of ``task`` sends ("" when it sends none)."""
    form = page.split(f'action="{reverse("console:escalation_answer", args=[task.pk])}"', 1)[1].split("</form>", 1)[0]
    found = re.search(r'<input type="hidden" name="holder" value="(\d+)">', form)
    return found.group(1) if found else ""


def test_incidents_sends_the_holder_it_showed_with_a_reassignment(client, users, refund_escalation):
    """The escalation's form carries who held it as the page drew it (0: nobody), as the task page's delegation."""
    # when
    page = login(client, users.operator).get(reverse("console:incidents")).content.decode()

    # then
    assert holder_sent(page, refund_escalation) == "0"


@pytest.mark.parametrize(
    ("drawn_by", "meanwhile", "says"),
    [
        ("manager", "operator claims it", "operator claimed it"),
        ("operator", "the manager reassigns it to operator2", "manager reassigned it to operator2"),
    ],
    ids=["claimed since", "reassigned since"],
)
def test_a_reassignment_from_incidents_after_the_task_changed_hands_is_refused_as_typed(
    users, refund_escalation, drawn_by, meanwhile, says
):
    """Given Incidents drawn with the escalation unclaimed (or held by operator), when it changed hands meanwhile and
    the answer reassigns it, then the page comes back (409) saying how it changed hands, with the reason and the
    person as chosen, and the task stays with its new holder: the reassignment took it from them without a word."""
    from django.test import Client

    from approvals.services.tasks import task_claim, task_delegate

    # given
    operator2 = UserFactory(username="operator2", groups=[users.operators])
    operator3 = UserFactory(username="operator3", groups=[users.operators])
    if drawn_by == "operator":
        task_claim(refund_escalation.pk, users.operator)
    person = getattr(users, drawn_by)
    client = login(Client(), person)
    drawn = client.get(reverse("console:incidents")).content.decode()
    holder = holder_sent(drawn, refund_escalation)
    if drawn_by == "operator":
        task_delegate(refund_escalation.pk, users.manager, operator2)
        now_with = operator2
    else:
        task_claim(refund_escalation.pk, users.operator)
        now_with = users.operator

    # when
    response = client.post(
        reverse("console:escalation_answer", args=[refund_escalation.pk]),
        {"op": "reassign", "to_user": operator3.pk, "comment": "night shift, ticket 4411", "holder": holder},
    )

    # then
    assert response.status_code == 409
    page = response.content.decode()
    text = " ".join(html.unescape(page).split())
    assert f"This task changed hands after you opened it ({says})" in text
    assert 'value="night shift, ticket 4411" autofocus' in page
    assert f'<option value="{operator3.pk}" selected>' in page
    refund_escalation.refresh_from_db()
    assert refund_escalation.assignee == now_with


@pytest.mark.parametrize("holder", ["9" * 40, "x" * 25, "-1", "١٢", ""])
def test_a_tampered_holder_on_incidents_is_not_checked_and_the_reassignment_goes_through(
    client, users, refund_escalation, holder
):
    """The holder the page sent is a check the page offers, not input a person types: a value it never sends (too
    long, not a number, another script's digits) leaves the reassignment unchecked, as a form without it, instead
    of a form error about a field nobody can see."""
    # given
    operator3 = UserFactory(username="operator3", groups=[users.operators])
    login(client, users.manager)

    # when
    response = client.post(
        reverse("console:escalation_answer", args=[refund_escalation.pk]),
        {"op": "reassign", "to_user": operator3.pk, "comment": "night shift", "holder": holder},
    )

    # then
    assert response.status_code == 302, response.content.decode()[:2000]
    refund_escalation.refresh_from_db()
    assert refund_escalation.assignee == operator3


DATE_INPUT = re.compile(r'<input[^>]*type="datetime-local"[^>]*>')
INPUT_ID = re.compile(r'id="([^"]+)"')


def date_labels(page: str) -> dict[str, str]:
    """Each datetime-local input's id -> the text of its label (tags dropped)."""
    labels = {}
    for tag in DATE_INPUT.findall(page):
        input_id = INPUT_ID.search(tag).group(1)
        found = re.search(rf'<label[^>]*for="{re.escape(input_id)}"[^>]*>(.*?)</label>', page, re.S)
        labels[input_id] = re.sub(r"<[^>]+>", "", found.group(1)) if found else ""
    return labels


def test_every_date_typed_on_the_console_names_the_zone_it_is_read_in(client, users, flow, run_steps):
    """A time typed into a datetime-local box is read in the person's zone: the label says which. The instance
    page's pause said "Resume at,  time" (no zone), the bulk pause and the list's "Started from/before" nothing."""
    # given: an operator whose pages are in Paris time, a running instance and a dry run of a bulk pause
    login(client, users.operator)
    session = client.session
    session[SESSION_KEY] = "Europe/Paris"
    session.save()
    running = instance_start("view_flow", {})
    job = bulk_dry_run(users.operator, "pause", InstanceFilter(workflow="view_flow"))

    # when
    pages = {
        "instance": client.get(detail(running)).content.decode(),
        "list": client.get(reverse("console:instance_list")).content.decode(),
        "bulk": client.get(reverse("console:bulk_detail", args=[job.pk])).content.decode(),
    }

    # then: every date box is labelled, and its label names Europe/Paris
    found = {name: date_labels(page) for name, page in pages.items()}
    assert all(found.values()), found
    for name, labels in found.items():
        for input_id, label in labels.items():
            assert "Europe/Paris" in label, f"{name}: #{input_id} is labelled {label!r}"


# A bulk job's page, dry run or started, for a job of one instance as for one of many (measured: 9).
BULK_PAGE_QUERIES = 9


def test_a_bulk_jobs_page_takes_a_fixed_number_of_queries_whatever_its_size(
    client, users, flow, run_steps, django_assert_num_queries
):
    """The dry run's page (count, sample of ten, confirmation) and a job's progress cost the same statements for
    one instance as for many: the sample reads its instances in one join, the outcome counts in one statement."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    # given: a dry run over one failed instance, and one over twelve
    login(client, users.operator)
    instance_start("view_flow", {})
    run_steps(advance=True)
    small = bulk_dry_run(users.operator, "retry", InstanceFilter(workflow="view_flow"))
    first = client.get(reverse("console:bulk_detail", args=[small.pk]))  # the session's first request may write it
    assert first.status_code == 200, first
    with CaptureQueriesContext(connection) as one:
        client.get(reverse("console:bulk_detail", args=[small.pk]))
    dry_run_cost = len(one.captured_queries)  # read now: the next request empties the log it slices
    for _ in range(11):
        instance_start("view_flow", {})
    run_steps(advance=True)
    large = bulk_dry_run(users.operator, "retry", InstanceFilter(workflow="view_flow"))
    assert large.total == 12

    # then: the dry run's page, then the running job's progress, at the same cost
    with django_assert_num_queries(dry_run_cost):
        client.get(reverse("console:bulk_detail", args=[large.pk]))
    client.post(reverse("console:bulk_confirm", args=[small.pk]), {"reason": "ledger is back"})
    with CaptureQueriesContext(connection) as started_one:
        client.get(reverse("console:bulk_detail", args=[small.pk]))
    progress_cost = len(started_one.captured_queries)
    assert (dry_run_cost, progress_cost) == (BULK_PAGE_QUERIES, BULK_PAGE_QUERIES)
    client.post(reverse("console:bulk_confirm", args=[large.pk]), {"reason": "ledger is back"})
    with django_assert_num_queries(progress_cost):
        client.get(reverse("console:bulk_detail", args=[large.pk]))


def test_a_bulk_pause_until_a_time_shows_that_end_in_the_readers_zone(client, users, flow):
    """A bulk pause confirmed with an end: the job's page said when it was confirmed, not when its instances
    resume; an operator following it had to read the audit trail to know."""
    # given: an operator in Paris time, and a bulk pause of a running instance until a given time
    login(client, users.operator)
    session = client.session
    session[SESSION_KEY] = "Europe/Paris"
    session.save()
    instance_start("view_flow", {})
    job = bulk_dry_run(users.operator, "pause", InstanceFilter(workflow="view_flow"))
    until = (timezone.now() + timedelta(days=2)).replace(second=0, microsecond=0)
    client.post(
        reverse("console:bulk_confirm", args=[job.pk]),
        {
            "reason": "ledger migration",
            "until": timezone.localtime(until, ZoneInfo("Europe/Paris")).strftime("%Y-%m-%dT%H:%M"),
        },
    )
    assert BulkJob.objects.get(pk=job.pk).until == until

    # when
    page = client.get(reverse("console:bulk_detail", args=[job.pk])).content.decode()

    # then
    shown = timezone.localtime(until, ZoneInfo("Europe/Paris")).strftime("%Y-%m-%d %H:%M %Z")
    assert f"resume at {shown}" in page


def test_a_timer_held_by_a_pause_says_how_long_it_waits_after_the_resume(client, users, register_workflow):
    """A timer's wait counts unpaused time (docs/architecture.md, "Deadlines and pauses"): while its instance is
    paused, the stored due time is not when it fires. The page said "fires at" that stale time, which passes
    during a long pause while the timer goes on waiting."""
    from orchestrator.dsl import Timer
    from orchestrator.models import StepRun
    from orchestrator.services.instances import instance_pause

    # given: a one-hour wait, paused with 30 minutes of it left
    register_workflow(Workflow("view_wait", 1, [Timer("cool_off", wait=timedelta(hours=1)), Task("tell", after)]))
    instance = instance_start("view_wait", {})
    instance_pause(instance.pk, actor=Actor.system("test"), reason="supplier audit")
    paused_at = WorkflowInstance.objects.get(pk=instance.pk).paused_at
    StepRun.objects.filter(instance=instance, name="cool_off").update(due_at=paused_at + timedelta(minutes=30))

    # when
    page = login(client, users.operator).get(detail(instance)).content.decode()

    # then
    assert "fires 30 min after the resume" in page
    assert "fires at" not in page


def test_a_signal_wait_held_by_a_pause_says_how_long_it_waits_after_the_resume(
    client, users, register_workflow, run_steps
):
    """A Signal's timeout counts unpaused time too: while its instance is paused the page said "until" the stored
    time, which the resume moves on."""
    from orchestrator.dsl import Signal
    from orchestrator.models import StepRun
    from orchestrator.services.instances import instance_pause

    # given: a wait for a payment of an hour, paused with 20 minutes of it left
    register_workflow(
        Workflow(
            "view_signal_wait", 1, [Signal("paid", event="payment", timeout=timedelta(hours=1)), Task("tell", after)]
        )
    )
    instance = instance_start("view_signal_wait", {})
    run_steps(instance, advance=True)
    instance_pause(instance.pk, actor=Actor.system("test"), reason="supplier audit")
    paused_at = WorkflowInstance.objects.get(pk=instance.pk).paused_at
    StepRun.objects.filter(instance=instance, name="paid").update(due_at=paused_at + timedelta(minutes=20))

    # when
    page = login(client, users.operator).get(detail(instance)).content.decode()

    # then
    assert re.search(r"waiting for a signal<span data-held=\"pause\">; it times out 20 min after the resume", page)
    assert "fires " not in page


def test_a_wait_that_began_during_the_pause_says_its_whole_timeout_is_left_after_the_resume(
    client, users, register_workflow, run_steps
):
    """The resume starts the clock of a wait that began during the pause (entered then, or re-armed by an
    escalation's Retry: its ``started_at``) at the resume. The page counted from the pause's start: a one-hour wait
    begun five hours into a pause "times out 6.0 h after the resume"."""
    from orchestrator.dsl import Signal
    from orchestrator.models import StepRun
    from orchestrator.services.instances import instance_pause

    # given: a wait for a payment of an hour that began five hours into its instance's pause
    register_workflow(
        Workflow(
            "view_signal_began", 1, [Signal("paid", event="payment", timeout=timedelta(hours=1)), Task("tell", after)]
        )
    )
    instance = instance_start("view_signal_began", {})
    run_steps(instance, advance=True)
    instance_pause(instance.pk, actor=Actor.system("test"), reason="supplier audit")
    began = WorkflowInstance.objects.get(pk=instance.pk).paused_at
    WorkflowInstance.objects.filter(pk=instance.pk).update(paused_at=began - timedelta(hours=5))
    StepRun.objects.filter(instance=instance, name="paid").update(started_at=began, due_at=began + timedelta(hours=1))

    # when
    page = login(client, users.operator).get(detail(instance)).content.decode()

    # then
    assert re.search(r"waiting for a signal<span data-held=\"pause\">; it times out 60 min after the resume", page)


def test_a_timer_made_during_the_pause_says_its_whole_wait_is_left_after_the_resume(client, users, register_workflow):
    """A timer made during the pause (its step before finished while paused) starts its wait at the resume; the
    page counted from the pause's start, adding the part of the pause before the timer was made."""
    from orchestrator.dsl import Timer
    from orchestrator.models import StepRun
    from orchestrator.services.instances import instance_pause

    # given: a one-hour timer made five hours into its instance's pause
    register_workflow(Workflow("view_timer_made", 1, [Timer("cool_off", wait=timedelta(hours=1)), Task("tell", after)]))
    instance = instance_start("view_timer_made", {})
    instance_pause(instance.pk, actor=Actor.system("test"), reason="supplier audit")
    made = WorkflowInstance.objects.get(pk=instance.pk).paused_at
    WorkflowInstance.objects.filter(pk=instance.pk).update(paused_at=made - timedelta(hours=5))
    StepRun.objects.filter(instance=instance, name="cool_off").update(created_at=made, due_at=made + timedelta(hours=1))

    # when
    page = login(client, users.operator).get(detail(instance)).content.decode()

    # then
    assert "fires 60 min after the resume" in page


def test_a_signal_kept_for_a_wait_is_shown_to_operators_until_a_step_takes_it(
    client, users, register_workflow, run_steps
):
    """A signal kept for a later wait (early, or after its wait timed out) was on the page only as a bare
    ``signal.received`` line of the history, which does not say whether it was taken: an operator choosing to retry
    or skip a timed-out wait could not see that the payment came after all."""
    from orchestrator.dsl import Signal
    from orchestrator.services.signals import signal_deliver
    from tests.orchestrator.test_signals import time_out

    # given: a wait for a payment that timed out and failed its instance, and the payment that came after that
    register_workflow(
        Workflow("view_kept", 1, [Signal("paid", event="payment", timeout=timedelta(minutes=5)), Task("tell", after)])
    )
    instance = instance_start("view_kept", {}, initiator=users.staff)
    run_steps(instance)
    time_out(instance)
    signal_deliver(
        instance_id=instance.pk, event="payment", signal_id="PAY-77", payload={}, actor=Actor.system("payments")
    )

    # when
    operator_page = login(client, users.operator).get(detail(instance)).content.decode()
    initiator_response = login(client, users.staff).get(detail(instance))
    initiator_page = initiator_response.content.decode()

    # then: operators see it kept, with its id, sender and time; the initiator's page (no history) does not list it
    kept = re.search(r'<section[^>]*aria-labelledby="kept-title".*?</section>', operator_page, re.S)
    assert kept is not None
    assert "PAY-77" in kept.group(0)
    assert "system:payments" in kept.group(0)
    assert initiator_response.status_code == 200
    assert "steps-title" in initiator_page
    assert "kept-title" not in initiator_page

    # and once the retry's wait takes it, it is no longer listed
    from orchestrator.services.instances import instance_retry

    instance_retry(instance.pk, actor=Actor("user:operator"), reason="it came")
    assert "kept-title" not in login(client, users.operator).get(detail(instance)).content.decode()


@pytest.mark.parametrize("who", ["operator", "manager", "staff", "admin"])
def test_every_link_on_an_instance_page_opens_for_who_sees_it(client, users, run_steps, who):
    """The instance page linked each of its tasks to the task's page, which only the task's candidates, its
    assignee and managers may open: an operator (or the initiator) following it got a 404. A task they may not
    open is named without a link."""
    # given: an expense the initiator (staff) started, waiting for the approvers' team
    from tests.factories import ExpenseInputFactory

    instance = instance_start("expense_approval", ExpenseInputFactory(), initiator=users.staff)
    run_steps(instance, advance=True)
    login(client, getattr(users, who))

    # when
    page = client.get(detail(instance)).content.decode()
    main = page.split('<main id="main"', 1)[1].split("</main>", 1)[0]
    links = sorted({html.unescape(href) for href in re.findall(r'href="(/[^"]*)"', main)})

    # then: the task is named, and every link opens
    assert instance.tasks.get().title in html.unescape(main)
    refused = {link: client.get(link).status_code for link in links}
    assert {link: code for link, code in refused.items() if code != 200} == {}


@pytest.mark.parametrize("who", ["operator", "manager", "staff"])
@pytest.mark.parametrize("path", ["/instances/", "/workflows/", "/workflows/expense_approval/", "/dashboard/", "/"])
def test_every_link_on_a_console_page_opens_for_who_sees_it(client, users, run_steps, failed, who, path):
    """The same rule on the console's other pages: a link goes somewhere its reader may go."""
    # given: an expense waiting for the approvers, and a failed instance
    from tests.factories import ExpenseInputFactory

    run_steps(instance_start("expense_approval", ExpenseInputFactory(), initiator=users.staff), advance=True)
    login(client, getattr(users, who))

    # when
    response = client.get(path, follow=True)
    if response.status_code == 404:
        pytest.skip(f"{path} is not for {who}")
    page = response.content.decode()
    main = page.split('<main id="main"', 1)[1].split("</main>", 1)[0]
    links = sorted({html.unescape(href) for href in re.findall(r'href="(/[^"]*)"', main)} - {"?"})

    # then
    refused = {link: client.get(link).status_code for link in links}
    assert {link: code for link, code in refused.items() if code not in (200, 302)} == {}


def test_a_value_refused_by_an_actions_form_is_named_by_its_field(client, users, flow, failed):
    """A too-long reason (a browser's maxlength bypassed) came back as "Ensure this value has at most 1000
    characters (it has 1001)." without saying which box; the skip form has two."""
    # given
    step = failed.steps.get(name="pay")

    # when
    response = login(client, users.operator).post(
        action(failed, "skip"), {"step": step.pk, "output": "{}", "reason": "x" * 1001}
    )

    # then
    assert response.status_code == 400
    shown = [str(m) for m in response.context["messages"]]
    assert any(m.startswith("Reason: Ensure this value has at most") for m in shown), shown


def test_a_stop_refused_for_its_reason_says_why_and_keeps_what_was_typed(client, users, failed):
    """A stop whose reason was too long (a browser's maxlength bypassed) was told "Give a reason", which it had,
    and the page it was sent back to had lost the reason typed."""
    # given: a started bulk retry
    login(client, users.operator)
    job = bulk_dry_run(users.operator, "retry", InstanceFilter(workflow="view_flow"))
    client.post(reverse("console:bulk_confirm", args=[job.pk]), {"reason": "payroll is back"})
    typed = "wrong filter " + "x" * 1000

    # when
    response = client.post(reverse("console:bulk_stop", args=[job.pk]), {"reason": typed})

    # then: refused, named, kept; the job goes on
    assert response.status_code == 400
    shown = [str(m) for m in response.context["messages"]]
    assert any(m.startswith("Reason: Ensure this value has at most") for m in shown), shown
    assert f'value="{typed}"' in response.content.decode()
    assert BulkJob.objects.get(pk=job.pk).state == BulkJobState.QUEUED


def test_a_started_bulk_job_can_be_found_again_from_the_instance_list(client, users, failed):
    """A bulk job's progress (and its Stop button) was reachable only from the confirmation's redirect: an
    operator who left the page, or another operator, had no way back to it but the audit trail."""
    # given: a started bulk retry, and a dry run nobody confirmed
    login(client, users.operator)
    started = bulk_dry_run(users.operator, "retry", InstanceFilter(workflow="view_flow"))
    client.post(reverse("console:bulk_confirm", args=[started.pk]), {"reason": "payroll is back"})
    draft = bulk_dry_run(users.operator, "cancel", InstanceFilter(workflow="view_flow"))

    # when: another operator opens the list
    other = UserFactory(username="operator2", groups=[users.operators])
    page = login(client, other).get(reverse("console:instance_list")).content.decode()

    # then: the started job is linked, the dry run is not
    assert f'href="{reverse("console:bulk_detail", args=[started.pk])}"' in page
    assert f'href="{reverse("console:bulk_detail", args=[draft.pk])}"' not in page
    # and someone who may not operate is not shown the jobs
    assert "bulk-jobs" not in login(client, users.manager).get(reverse("console:instance_list")).content.decode()


# --- the engine's records (orchestrator/records.py) ------------------------------------------------------------


class ReviewStartForm(forms.Form):
    """A start form whose clean() writes a key named like the workflow's human step: a definition's mistake that
    the definition check cannot see (it reads declared fields), which the page must show."""

    note = forms.CharField(max_length=100)

    def clean(self) -> dict:
        cleaned = super().clean() or {}
        cleaned["review"] = {"decision": "approve", "by": "ceo"}
        return cleaned


def test_the_start_page_refuses_an_input_setting_a_record_with_what_was_typed_kept(client, users, register_workflow):
    # given a workflow whose start form would write its human step's decision
    register_workflow(
        Workflow("console_review", 1, [Human("review", candidate_groups=["approvers"])], start_form=ReviewStartForm)
    )

    # when someone starts it
    response = login(client, users.staff).post(
        reverse("console:workflow_start", args=["console_review"]),
        {"note": "lunch with the client", "baton-idempotency_key": "k-review"},
    )

    # then the page comes back with the reason, what was typed kept, and nothing started
    assert response.status_code == 400
    page = html.unescape(response.content.decode())
    assert "This is where the workflow records what its step 'review' did; a start's input cannot set it." in page
    assert 'value="lunch with the client"' in page
    assert not WorkflowInstance.objects.exists()


@pytest.fixture
def approval_after_pay(register_workflow, users, run_steps) -> WorkflowInstance:
    """Pay (down: it fails), then a manager's approval, then tell: failed at pay, its approval still to come."""
    STATE["down"] = True
    register_workflow(
        Workflow(
            "console_records",
            1,
            [
                Task("pay", pay, retry=Retry(max_attempts=2, backoff=0)),
                Human("approve", candidate_groups=["managers"]),
                Task("tell", after),
            ],
        )
    )
    instance = instance_start("console_records", {"customer": "ACME", "amount": 40}, initiator=users.staff)
    run_steps(instance, advance=True)
    instance.refresh_from_db()
    assert instance.state == InstanceState.FAILED
    yield instance
    STATE["down"] = False


def test_a_skip_whose_output_writes_the_approval_is_a_message_with_the_text_kept(client, users, approval_after_pay):
    # given
    instance = approval_after_pay
    step = instance.steps.get(name="pay")
    typed = '{"paid": true, "approve": {"decision": "approve", "by": "manager"}}'
    events = AuditEvent.objects.filter(instance=instance).count()

    # when
    response = login(client, users.operator).post(
        action(instance, "skip"), {"step": step.pk, "output": typed, "reason": "paid by hand"}
    )

    # then
    assert response.status_code == 400
    page = html.unescape(response.content.decode())
    assert "The output may not set the workflow's own records: approve." in page
    assert f"{typed}</textarea>" in page
    assert 'value="paid by hand"' in page
    instance.refresh_from_db()
    assert (instance.state, instance.data) == (InstanceState.FAILED, {"customer": "ACME", "amount": 40})
    assert AuditEvent.objects.filter(instance=instance).count() == events


def test_a_data_edit_adding_the_approval_is_a_message_and_one_beside_it_saves(client, users, approval_after_pay):
    # given
    instance = approval_after_pay
    forged = '{"customer": "ACME", "amount": 40, "approve": {"decision": "approve"}}'

    # when the operator adds the decision, then corrects the amount only
    refused = login(client, users.operator).post(
        action(instance, "edit-data"), {"new_data": forged, "seq": instance.audit_seq, "reason": "sped up"}
    )
    saved = client.post(
        action(instance, "edit-data"),
        {"new_data": '{"customer": "ACME", "amount": 41}', "seq": instance.audit_seq, "reason": "typo"},
    )

    # then the first is refused with the reason and the text kept, and the second saves
    assert refused.status_code == 400
    page = html.unescape(refused.content.decode())
    assert "The edit may not add or change the workflow's own records: approve." in page
    assert f"{forged}</textarea>" in page
    assert saved.status_code == 302
    assert WorkflowInstance.objects.get(pk=instance.pk).data == {"customer": "ACME", "amount": 41}
    assert AuditEvent.objects.filter(instance=instance, action="instance.data_edited").count() == 1
