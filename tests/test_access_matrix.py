"""The access matrix of docs/access-matrix.md as a test: every cell requested as its role against real objects.

The table is read from the document, so the document cannot drift from what is tested. Three kinds of test:

- the table covers the application: every URL route of Django's resolver and every websocket route of the ASGI
  application has a row, and every row names a route that exists (a new page fails here until it has rows);
- one test per HTTP cell (row x role), through Django's test client with CSRF checks on and a valid token, on a
  world of real objects built once per class; each cell runs in a savepoint rolled back afterwards, so one cell's
  change never reaches the next;
- the websocket rows, through the real ASGI stack and Redis channel layer (committed data: the consumer reads the
  session and the instance from its own thread).

``KNOWN_WRONG`` lists the cells today's code does not meet, as strict expected failures: when the fix lands the
cell passes, the strict xfail fails, and the entry is removed.
"""

from __future__ import annotations

import asyncio
import copy
import importlib
import json
import re
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
import pytest_asyncio
from asgiref.sync import sync_to_async
from channels.layers import DEFAULT_CHANNEL_LAYER, channel_layers
from channels.testing import WebsocketCommunicator
from django.contrib import messages
from django.contrib.auth.models import Permission, User
from django.db import transaction
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, resolve
from django.utils import timezone

from api.tokens import token_create
from approvals.models import HumanTask, SavedView, TaskKind, TaskState
from approvals.services.tasks import task_claim
from automation.models import Schedule, WebhookSubscription
from demo.data import GROUPS
from orchestrator import registry, rollups
from orchestrator.audit import ACCESS_CHAIN
from orchestrator.dsl import Human, Workflow
from orchestrator.models import (
    DISPATCHABLE_STEP_STATES,
    AuditEvent,
    InstanceState,
    RollupCursor,
    StepRun,
    WorkflowInstance,
)
from orchestrator.services.instances import instance_start
from orchestrator.services.steps import step_execute
from tests.conftest import _execute_at
from tests.factories import PASSWORD, ExpenseInputFactory, GroupFactory, OrderInputFactory, UserFactory
from tests.sockets import close_loop_connections

MATRIX = Path(__file__).resolve().parent.parent / "docs" / "access-matrix.md"
ROLES = ("anonymous", "staff", "other team", "initiator", "manager", "operator", "admin", "inactive")
HTTP_ANSWERS = {"200", "302", "401", "login", "403", "404", "405", "done", "refused"}
SOCKET_ANSWERS = {"accept", "refuse"}
HTTP_METHODS = {"GET", "POST", "HEAD", "PUT", "PATCH", "DELETE", "OPTIONS"}
# Every other method, tried on every route by test_no_other_method_on_any_route_fails_or_changes_anything.
OTHER_METHODS = ("HEAD", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE")
SOCKET_METHODS = {"CONNECT", "SUBSCRIBE"}
# Every page of the Django admin is one route of the matrix: the admin applies its own rule to all of them.
ADMIN_ROUTE = "/admin/…"
ORIGIN = "http://127.0.0.1"
SOCKET_TIMEOUT = 5.0

KNOWN_WRONG: dict[tuple[str, str], str] = {}


# --- the table ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One line of the matrix: a route, one request to it, and the expected answer per role."""

    route: str
    request: str
    method: str
    path: str
    data: tuple[tuple[str, str], ...]
    cells: dict[str, str]

    @property
    def is_socket(self) -> bool:
        return self.method in SOCKET_METHODS


def read_matrix(path: Path = MATRIX) -> list[Row]:
    """The rows of the table under "## The matrix", checked for shape; raises ValueError naming a bad line."""
    text = path.read_text()
    section = text.split("\n## The matrix\n", 1)[1].split("\n## ", 1)[0]
    lines = [line.strip() for line in section.splitlines() if line.strip().startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    if tuple(header[2:]) != ROLES:
        raise ValueError(f"{path.name}: the role columns must be {ROLES}, not {header[2:]}")
    rows = []
    for line in lines[2:]:
        cells = [cell.strip().strip("`").strip() for cell in line.strip("|").split("|")]
        if len(cells) != len(header):
            raise ValueError(f"{path.name}: {len(cells)} cells instead of {len(header)} in: {line}")
        route, request, answers = cells[0], cells[1], dict(zip(ROLES, cells[2:], strict=True))
        method, target, *pairs = request.split()
        if method not in HTTP_METHODS | SOCKET_METHODS:
            raise ValueError(f"{path.name}: unknown method {method!r} in: {line}")
        allowed = SOCKET_ANSWERS if method in SOCKET_METHODS else HTTP_ANSWERS
        wrong = {role: answer for role, answer in answers.items() if answer not in allowed}
        if wrong:
            raise ValueError(f"{path.name}: answers {wrong} are not among {sorted(allowed)} in: {line}")
        data = tuple(tuple(pair.split("=", 1)) for pair in pairs)
        if any(len(pair) != 2 for pair in data):
            raise ValueError(f"{path.name}: form data must be key=value pairs in: {line}")
        rows.append(Row(route, request, method, target, data, answers))  # type: ignore[arg-type]
    return rows


ROWS = read_matrix()


def http_routes() -> set[str]:
    """Every route of Django's resolver as ``/pattern``; the admin's pages as one ``/admin/…``."""
    found: set[str] = set()

    def walk(patterns: list[Any], prefix: str) -> None:
        for entry in patterns:
            if isinstance(entry, URLResolver):
                if entry.app_name == "admin":
                    found.add(ADMIN_ROUTE)
                else:
                    walk(entry.url_patterns, prefix + str(entry.pattern))
            elif isinstance(entry, URLPattern):
                found.add("/" + prefix + str(entry.pattern))

    walk(get_resolver().url_patterns, "")
    return found


def socket_routes() -> set[str]:
    """Every websocket route of the ASGI application, through whatever middleware wraps its URL router."""
    from baton_site.asgi import application

    found: set[str] = set()
    seen: set[int] = set()

    def walk(app: Any, prefix: str) -> None:
        if app is None or id(app) in seen:
            return
        seen.add(id(app))
        if hasattr(app, "routes"):  # channels.routing.URLRouter
            for route in app.routes:
                if isinstance(route, URLResolver):
                    walk(route.url_patterns, prefix + str(route.pattern))
                else:
                    found.add("/" + prefix + str(route.pattern).lstrip("^").rstrip("$"))
                    walk(getattr(route, "callback", None), prefix + str(route.pattern))
            return
        for name in ("application", "inner", "app"):
            walk(getattr(app, name, None), prefix)

    walk(application.application_mapping.get("websocket"), "")
    return found


def route_of(path: str) -> str:
    """The matrix route a concrete path resolves to (placeholders read as 1); raises Resolver404."""
    match = resolve(re.sub(r"\{\w+\}", "1", path))
    return ADMIN_ROUTE if match.namespace == "admin" else "/" + match.route


def test_every_route_has_a_row_and_every_row_a_route():
    """The matrix names every URL and websocket route there is, and only those; each request fits its route."""
    # given
    routes = {"http": http_routes(), "websocket": socket_routes()}
    covered = {
        "http": {row.route for row in ROWS if not row.is_socket},
        "websocket": {row.route for row in ROWS if row.is_socket},
    }

    # then
    assert routes["http"], "no URL routes found: the walk above no longer fits the resolver"
    assert routes["websocket"], "no websocket routes found: the walk above no longer fits baton_site/asgi.py"
    problems = []
    for kind in ("http", "websocket"):
        for route in sorted(routes[kind] - covered[kind]):
            problems.append(f"{kind} route {route} has no row in {MATRIX.name}")
        for route in sorted(covered[kind] - routes[kind]):
            problems.append(f"{MATRIX.name} has rows for {kind} route {route}, which no longer exists")
    for row in ROWS:
        if row.is_socket:
            if row.path != row.route:
                problems.append(f"{row.request!r} is not a request to its route {row.route}")
            continue
        try:
            actual = route_of(row.path)
        except Exception as exc:
            problems.append(f"{row.request!r} resolves to no route ({type(exc).__name__})")
            continue
        if actual != row.route:
            problems.append(f"{row.request!r} resolves to {actual}, not to its row's route {row.route}")
    assert not problems, "\n".join(problems)


def test_known_wrong_cells_name_real_cells():
    """Every expected failure points at a cell of the table, so a renamed row cannot hide one."""
    requests = {row.request for row in ROWS}
    stale = [f"{request} as {role}" for request, role in KNOWN_WRONG if request not in requests or role not in ROLES]
    assert not stale, f"KNOWN_WRONG names cells that are not in {MATRIX.name}: {stale}"


# --- the world ------------------------------------------------------------------------------------------

REVIEW = Workflow(
    name="access_matrix_review",
    version=1,
    title="Review (access matrix)",
    title_template="Review #{id}",
    steps=[Human("review", task_title="Review {title}", candidate_groups=["reviewers"])],
)
# The reviewers are a second team beside the approvers: staff of one team must not reach the other's tasks.
ROLE_GROUPS = {**GROUPS, "reviewers": ["add_workflowinstance"]}
USERNAMES = {
    "staff": "staff",
    "other team": "reviewer",
    "initiator": "initiator",
    "manager": "manager",
    "operator": "operator",
    "admin": "admin",
    "inactive": "inactive",
}


@dataclass
class World:
    """The cast, a signed-in client per role, and the objects the placeholders of the table stand for."""

    clients: dict[str, Client]
    values: dict[str, str]

    def fill(self, text: str, role: str) -> str:
        return text.format_map({**self.values, "username": USERNAMES.get(role, "nobody"), "password": PASSWORD})


def _signal_flow() -> Workflow:
    return importlib.import_module("tests.api.signal_flows").API_PAYMENT


def _register_flows() -> None:
    """The review workflow of the other team, and the tests' signal workflow (``{waiting}``)."""
    registry.register(REVIEW)
    payment = _signal_flow()
    if not registry.is_registered(payment.name, payment.version):
        registry.register(payment)


def _unregister_flows() -> None:
    registry.unregister(REVIEW.name, REVIEW.version)
    registry.unregister(_signal_flow().name, _signal_flow().version)


def _drain(instance: WorkflowInstance) -> None:
    """Run the instance's automated steps in-process until none is left, back-offs included (no sleeping)."""
    refused: set[int] = set()
    for _ in range(200):
        step = (
            StepRun.objects.filter(instance=instance, state__in=DISPATCHABLE_STEP_STATES)
            .exclude(pk__in=refused)
            .order_by("due_at", "id")
            .first()
        )
        if step is None:
            return
        now = timezone.now()
        due = step.due_at is None or step.due_at <= now
        if (step_execute(step.pk) if due else _execute_at(step.pk, step.due_at)) == "not runnable":
            refused.add(step.pk)
    raise AssertionError(f"instance {instance.pk} kept running steps")


def _bulk_job(operator: User, *, confirm: bool) -> int:
    from console.selectors import InstanceFilter
    from console.services import bulk_confirm, bulk_dry_run

    job = bulk_dry_run(operator, "pause", InstanceFilter(workflow="expense_approval"))
    if confirm:
        bulk_confirm(job.pk, operator, reason="matrix world")
    return job.pk


def build_world(*, with_escalation: bool) -> World:
    """The cast with the demo's group permissions, their sessions, and the objects of docs/access-matrix.md."""
    groups = {name: GroupFactory(name=name) for name in ROLE_GROUPS}
    for name, codenames in ROLE_GROUPS.items():
        groups[name].permissions.set(
            Permission.objects.filter(content_type__app_label="orchestrator", codename__in=codenames)
        )
    people = {
        "staff": UserFactory(username="staff", groups=[groups["approvers"]]),
        "staff2": UserFactory(username="staff2", groups=[groups["approvers"]]),
        "reviewer": UserFactory(username="reviewer", groups=[groups["reviewers"]]),
        "initiator": UserFactory(
            username="initiator", groups=[groups["approvers"], groups["managers"], groups["operators"]]
        ),
        "manager": UserFactory(username="manager", groups=[groups["managers"]]),
        "operator": UserFactory(username="operator", groups=[groups["operators"]]),
        "admin": UserFactory(username="admin", is_staff=True, is_superuser=True),
        "inactive": UserFactory(username="inactive", groups=[groups["approvers"]]),
        "requester": UserFactory(username="requester"),
    }
    clients = {"anonymous": Client(enforce_csrf_checks=True)}
    for role, username in USERNAMES.items():
        clients[role] = Client(enforce_csrf_checks=True)
        clients[role].force_login(people[username])
    # Deactivated after signing in (the session worked until then): the session it kept must count for nothing.
    assert clients["inactive"].get("/notifications/").status_code == 200
    User.objects.filter(pk=people["inactive"].pk).update(is_active=False)

    initiator = people["initiator"]
    instance = instance_start("expense_approval", ExpenseInputFactory(amount="80.00"), initiator=initiator)
    claimed_instance = instance_start("expense_approval", ExpenseInputFactory(amount="90.00"), initiator=initiator)
    other_instance = instance_start(REVIEW.name, {}, initiator=people["requester"])
    team_task = HumanTask.objects.get(instance=instance, state=TaskState.OPEN)
    claimed_task = task_claim(HumanTask.objects.get(instance=claimed_instance).pk, people["staff"])
    other_task = HumanTask.objects.get(instance=other_instance, state=TaskState.OPEN)
    saved_view = SavedView.objects.create(owner=people["staff"], name="Staff's queue", tab="queue", params={})
    schedule = Schedule.objects.create(
        name="Matrix schedule",
        workflow_name="expense_approval",
        input=ExpenseInputFactory(amount="10.00"),
        interval_seconds=3600,
        anchor=timezone.now(),
        next_fire_at=timezone.now() + timedelta(hours=1),
    )
    webhook = WebhookSubscription.objects.create(
        owner=people["admin"],
        name="Matrix hook",
        url="https://hooks.example.com/baton",
        events=["instance.started"],
        secret="s" * 64,
    )
    values = {
        "instance": instance.pk,
        "claimed_instance": claimed_instance.pk,
        "team_task": team_task.pk,
        "claimed_task": claimed_task.pk,
        "other_instance": other_instance.pk,
        "other_task": other_task.pk,
        "instance_step": team_task.step_id,
        "other_step": other_task.step_id,
        "saved_view": saved_view.pk,
        "schedule": schedule.pk,
        "webhook": webhook.pk,
        "expense_input": json.dumps(ExpenseInputFactory(amount="42.00"), separators=(",", ":")),
        "token": token_create(people["staff"], "Staff's script").token.pk,
        "staff": people["staff"].pk,
        "staff2": people["staff2"].pk,
        "inactive": people["inactive"].pk,
        "initiator": initiator.pk,
        "operator": people["operator"].pk,
        "instance_seq": WorkflowInstance.objects.get(pk=instance.pk).audit_seq,
        # A bulk pause the operator confirmed (every operator may follow and stop it) and a dry run of theirs (only
        # they may see and confirm it).
        "bulk_job": _bulk_job(people["operator"], confirm=True),
        "dry_run": _bulk_job(people["operator"], confirm=False),
        "soon": f"{timezone.localtime() + timedelta(days=1):%Y-%m-%dT%H:%M}",
    }
    # An order of the tests' signal workflow, started by requester, waiting for its payment at the Signal node.
    waiting = instance_start(
        "api_payment", {"order": "M-1"}, initiator=people["requester"], business_key="matrix-order"
    )
    _drain(waiting)
    assert WorkflowInstance.objects.get(pk=waiting.pk).state == InstanceState.WAITING
    values["waiting"] = waiting.pk
    if with_escalation:
        order = instance_start(
            "order_fulfilment", OrderInputFactory(fail_shipping=True, fail_refund=4), initiator=initiator
        )
        _drain(order)
        order.refresh_from_db()
        assert order.state == InstanceState.COMPENSATING, order.state
        values["order"] = order.pk
        values["escalation"] = HumanTask.objects.get(instance=order, kind=TaskKind.ESCALATION, state="open").pk
    # The sweep has run (readiness asks when it last did); it also records the versions the catalog shows.
    rollups.rollup_pass()
    return World(clients, {key: str(value) for key, value in values.items()})


def _commit_sweep_time() -> Callable[[], None]:
    """Commit a sweep time now and return what puts the cursor back as it was. /health/ready reads it on a session
    of its own (bounded, orchestrator/health.py), which sees nothing of the world's transaction."""
    cursor = RollupCursor.objects.filter(name=rollups.CURSOR).first()
    was = cursor.swept_at if cursor is not None else None
    RollupCursor.objects.update_or_create(name=rollups.CURSOR, defaults={"swept_at": timezone.now()})

    def restore() -> None:
        if cursor is None:
            RollupCursor.objects.filter(name=rollups.CURSOR).delete()
        else:
            RollupCursor.objects.filter(name=rollups.CURSOR).update(swept_at=was)

    return restore


@pytest.fixture(scope="class")
def world(django_db_setup: None, django_db_blocker: Any) -> Iterator[World]:
    """The world of the HTTP cells, built once inside a transaction that is rolled back after the class."""
    _register_flows()
    with django_db_blocker.unblock():
        restore_sweep = _commit_sweep_time()
        outer = transaction.atomic()
        outer.__enter__()
        try:
            built = build_world(with_escalation=True)
            for role, client in built.clients.items():
                # The token a page hands out, as a browser would get it: the cookie set by a page with a form.
                client.get("/login/" if role in ("anonymous", "inactive") else "/workflows/")
                assert client.cookies.get("csrftoken"), f"no CSRF cookie for {role}"
        except BaseException:
            transaction.set_rollback(True)
            outer.__exit__(None, None, None)
            restore_sweep()
            _unregister_flows()
            raise
    yield built
    with django_db_blocker.unblock():
        transaction.set_rollback(True)
        outer.__exit__(None, None, None)
        restore_sweep()
    _unregister_flows()


# --- HTTP cells -----------------------------------------------------------------------------------------


def _fingerprint() -> tuple[Any, ...]:
    """What an action changes: every service writes the audit trail, and so do saved views. The ``access`` chain is
    left out: it records the request itself (a sign-in, a refusal, an export), which is not a change it made."""
    events = AuditEvent.objects.exclude(chain=ACCESS_CHAIN).count()
    return events, tuple(SavedView.objects.order_by("pk").values_list("pk", "name", "owner_id"))


@dataclass(frozen=True)
class Seen:
    """What a request got back: the status, where it redirected, whether the database changed, what it said."""

    status: int
    location: str
    changed: bool
    warnings: tuple[str, ...]

    def answer(self, method: str) -> str:
        """The matrix's word for this response."""
        redirect = self.status in (301, 302, 303)
        if redirect and "login/" in self.location.split("?")[0] and "next=" in self.location:
            return "login"
        if method == "POST":
            # A page redirects after a change; the API answers it with its 200 or 201.
            if self.changed and (redirect or 200 <= self.status < 300):
                return "done"
            if self.changed and self.status >= 400:
                return f"{self.status} with a change"
            if redirect and self.warnings:
                return "refused"
            if self.status in (400, 409, 422):
                return "refused"
        return "302" if redirect else str(self.status)

    def describe(self) -> str:
        where = f" to {self.location}" if self.location else ""
        said = f", said {list(self.warnings)}" if self.warnings else ""
        return f"HTTP {self.status}{where}, {'changed' if self.changed else 'changed nothing'}{said}"


def _matches(expected: str, seen: str) -> bool:
    # A refusal may also come as a page stating the reason with 403 (four-eyes) instead of a redirect; a plain
    # 302 cell (signing in or out) does not mind whether the step was written down.
    return seen == expected or (expected, seen) in {("refused", "403"), ("302", "done")}


def request_cell(world: World, row: Row, role: str) -> Seen:
    """Make the row's request as ``role``; the client's cookies are put back afterwards (sign-in, sign-out, flash)."""
    client = world.clients[role]
    cookies = copy.deepcopy(client.cookies)
    path = world.fill(row.path, role)
    try:
        before = _fingerprint()
        data = {key: world.fill(value, role) for key, value in row.data}
        response = _request(client, row.method, path, data)
        changed = _fingerprint() != before
    finally:
        client.cookies = cookies
    request = getattr(response, "wsgi_request", None)
    said = [] if request is None else list(messages.get_messages(request))
    warnings = tuple(str(m) for m in said if m.level >= messages.WARNING)
    return Seen(response.status_code, response.get("Location", ""), changed, warnings)


def is_api(path: str) -> bool:
    """A path of the JSON API (its token pages are pages)."""
    return path.startswith("/api/") and not path.startswith("/api/tokens/")


def _json_body(data: dict[str, str]) -> str:
    """The row's pairs as a JSON object; a dotted name (``input.amount``) becomes a nested object."""
    body: dict[str, Any] = {}
    for key, value in data.items():
        *parents, last = key.split(".")
        target = body
        for parent in parents:
            target = target.setdefault(parent, {})
        target[last] = value
    return json.dumps(body)


def _request(client: Client, method: str, path: str, data: dict[str, str]) -> Any:
    """``method`` on ``path`` with ``data`` as a form (the API: as JSON), carrying the client's CSRF token as a
    browser's page would (a field for POST, the X-CSRFToken header for the others and for the API), so an answer
    is never about the token."""
    token = client.cookies["csrftoken"].value if "csrftoken" in client.cookies else ""
    if is_api(path) and method not in ("GET", "HEAD"):
        return client.generic(
            method, path, _json_body(data), content_type="application/json", headers={"X-CSRFToken": token}
        )
    if method == "GET":
        return client.get(path)
    if method == "HEAD":
        return client.head(path)
    if method == "POST":
        return client.post(path, {**data, "csrfmiddlewaretoken": token})
    return client.generic(
        method, path, urlencode(data), content_type="application/x-www-form-urlencoded", headers={"X-CSRFToken": token}
    )


def _http_cells() -> list[Any]:
    cells = []
    for row in ROWS:
        if row.is_socket:
            continue
        for role in ROLES:
            reason = KNOWN_WRONG.get((row.request, role))
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            cells.append(pytest.param(row, role, id=f"{row.request} as {role}", marks=marks))
    return cells


@pytest.mark.django_db
class TestHttpCells:
    @pytest.mark.parametrize(("row", "role"), _http_cells())
    def test_cell(self, world: World, row: Row, role: str) -> None:
        """Each HTTP cell: the request made as the role answers what the matrix says."""
        # when
        seen = request_cell(world, row, role)

        # then
        expected = row.cells[role]
        assert _matches(expected, seen.answer(row.method)), (
            f"{row.request} as {role}: the matrix says {expected}, the app answered "
            f"{seen.answer(row.method)} ({seen.describe()})"
        )

    # About 2,000 requests (every path x role x six methods), growing with each new route: past the suite's 180 s
    # on a busy shared machine.
    @pytest.mark.timeout(900)
    def test_no_other_method_on_any_route_fails_or_changes_anything(self, world: World) -> None:
        """HEAD, PUT, PATCH, DELETE, OPTIONS and TRACE on every path of the table, as every role, with a valid CSRF
        token: never a 500, never a change; an action route (POST only) answers 405 to every one of them."""
        # given
        post_only = {row.path for row in ROWS if row.method == "GET" and set(row.cells.values()) == {"405"}}
        paths = sorted({row.path for row in ROWS if not row.is_socket})

        # when
        wrong = []
        # Each request's "after" is the next one's "before": nothing touches the database between the two reads, so
        # one fingerprint per request tells the same as two (they were a third of this test's time).
        before = _fingerprint()
        for role in ROLES:
            for path in paths:
                for method in OTHER_METHODS:
                    client = world.clients[role]
                    cookies = copy.deepcopy(client.cookies)
                    try:
                        response = _request(client, method, world.fill(path, role), {"reason": "matrix"})
                        status, allow = response.status_code, response.get("Allow", "")
                    finally:
                        client.cookies = cookies
                    after = _fingerprint()
                    changed, before = after != before, after
                    # A class-based view answers OPTIONS itself: 200 with the methods it takes in Allow.
                    refused = status == 405 or (method == "OPTIONS" and "GET" not in allow)
                    if status >= 500 or changed or (path in post_only and not refused):
                        wrong.append(f"{method} {path} as {role}: HTTP {status}{', changed' if changed else ''}")

        # then
        assert not wrong, "\n".join(wrong)

    @pytest.mark.parametrize(
        "path",
        [
            "/tasks/{team_task}/decide/extra/",
            "/tasks/{team_task}/claim/x",
            "/instances/{instance}/pause/extra/",
            "/inbox/views/{saved_view}/delete/again/",
            "/tasks/{team_task}//claim/",
            "/tasks/9223372036854775808/",
            "/instances/99999999999999999999999/",
            "/tasks/{team_task}/claim/%2e%2e/",
        ],
    )
    def test_a_route_with_extra_segments_or_an_impossible_id_is_404_for_everyone(self, world: World, path) -> None:
        """No route matches with a segment added, doubled or an id beyond any row's: 404 or sign-in, never a 500."""
        # when
        seen = {
            role: request_cell(world, Row("", "", method, path, (), {}), role) for role in ROLES for method in ("GET",)
        }
        posted = {role: request_cell(world, Row("", "", "POST", path, (), {}), role) for role in ROLES}

        # then
        for role in ROLES:
            for got in (seen[role], posted[role]):
                assert got.status == 404 or got.answer("GET") == "login", f"{path} as {role}: {got.describe()}"
                assert not got.changed

    @pytest.mark.parametrize(
        "target",
        [
            "//evil.example/",
            "https://evil.example/",
            "/\\evil.example",
            "\\\\evil.example",
            "http:/evil.example",
            "///evil.example",
            "https:evil.example",
            " //evil.example",
            "%2F%2Fevil.example",
            "javascript:alert(1)",
        ],
    )
    def test_signing_in_never_sends_the_person_to_another_site(self, world: World, target) -> None:
        """The login form's ``next`` is followed only within this site (Django's url_has_allowed_host_and_scheme)."""
        # given
        client = Client(enforce_csrf_checks=True)
        client.get("/login/")

        # when
        response = client.post(
            f"/login/?{urlencode({'next': target})}",
            {"username": "staff", "password": PASSWORD, "csrfmiddlewaretoken": client.cookies["csrftoken"].value},
        )

        # then
        assert response.status_code == 302
        location = urlsplit(response["Location"].replace("\\", "/"))  # browsers read a backslash as a slash
        assert not location.scheme, response["Location"]
        assert not location.netloc, response["Location"]

    def test_a_decision_without_the_csrf_token_is_refused(self, world: World) -> None:
        """The same approval that is done with the token is refused without it, and changes nothing."""
        # given
        client = world.clients["staff"]
        path = f"/tasks/{world.values['team_task']}/decide/"
        before = _fingerprint()

        # when
        response = client.post(path, {"decision": "approve", "comment": "no token"})

        # then
        assert response.status_code == 403
        assert b"CSRF" in response.content
        assert _fingerprint() == before
        assert HumanTask.objects.get(pk=world.values["team_task"]).state == TaskState.OPEN


# --- websocket cells ------------------------------------------------------------------------------------


@pytest.fixture
def _redis_channel_layer() -> None:
    """A fresh layer object for this test's event loop, from the settings: Redis pub/sub."""
    channel_layers.backends.pop(DEFAULT_CHANNEL_LAYER, None)
    assert type(channel_layers[DEFAULT_CHANNEL_LAYER]).__name__ == "RedisPubSubChannelLayer"


@pytest_asyncio.fixture
async def _close_after() -> AsyncIterator[None]:
    """Close the layer's Redis connections in this loop and the sync thread's database session."""
    yield
    await close_loop_connections()


async def socket_cell(world: World, row: Row, role: str) -> str:
    """``accept`` or ``refuse``: the connection for CONNECT, the subscription's answer for SUBSCRIBE."""
    from baton_site.asgi import application

    headers = [(b"origin", ORIGIN.encode()), (b"host", b"127.0.0.1")]
    session = world.clients[role].cookies.get("sessionid")
    if session is not None and session.value:
        headers.append((b"cookie", f"sessionid={session.value}".encode()))
    socket = WebsocketCommunicator(application, row.path, headers=headers)
    connected, _ = await socket.connect(timeout=SOCKET_TIMEOUT)
    if not connected:
        return "refuse"
    try:
        # A socket without a valid session is accepted only to be closed with 4401 before its hello.
        first = await socket.receive_output(timeout=SOCKET_TIMEOUT)
        if first["type"] == "websocket.close":
            return "refuse"
        if row.method == "CONNECT":
            return "accept"
        target = dict(row.data)["instance"]
        await socket.send_json_to({"subscribe": "instance", "id": int(world.fill(target, role))})
        async with asyncio.timeout(SOCKET_TIMEOUT):
            while True:
                reply = await socket.receive_json_from(timeout=SOCKET_TIMEOUT)
                if reply.get("type") == "subscribed":
                    return "accept"
                if reply.get("type") == "error":
                    return "refuse"
    finally:
        await socket.disconnect()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("_redis_channel_layer", "_close_after")
async def test_websocket_cells() -> None:
    """Each websocket cell: connecting, and asking to follow an instance, answer what the matrix says."""
    # given
    _register_flows()
    try:
        world = await sync_to_async(build_world)(with_escalation=False)
        rows = [row for row in ROWS if row.is_socket]
        assert rows, f"{MATRIX.name} has no websocket rows"

        # when
        wrong = []
        for row in rows:
            for role in ROLES:
                seen = await socket_cell(world, row, role)
                if seen != row.cells[role]:
                    wrong.append(f"{row.request} as {role}: the matrix says {row.cells[role]}, the socket did {seen}")
    finally:
        _unregister_flows()

    # then
    assert not wrong, "\n".join(wrong)
