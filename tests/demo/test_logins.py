"""README's "Demo logins" table, as a newcomer reads it after `make demo`: each login signs in with `demo` through
the sign-in page and can open exactly what its row says (and not the next role's pages)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.core.management import call_command
from django.db import transaction
from django.test import Client

from approvals.models import HumanTask
from approvals.services.base import is_candidate

pytestmark = pytest.mark.django_db

# README: the row of each login, as the pages that row promises (200) and the pages of a role it lacks (403).
PAGES = {
    "staff": ({"/inbox/"}, {"/escalations/", "/incidents/", "/audit/", "/dashboard/"}),
    "staff2": ({"/inbox/"}, {"/escalations/", "/incidents/", "/audit/", "/dashboard/"}),
    # "Managers resolve and reassign escalations there too" (on Incidents)
    "manager": ({"/inbox/", "/escalations/", "/incidents/"}, {"/audit/"}),
    "operator": ({"/inbox/", "/incidents/", "/instances/"}, {"/audit/"}),
    "admin": ({"/inbox/", "/escalations/", "/incidents/", "/instances/", "/audit/", "/admin/"}, set()),
}


@pytest.fixture(scope="module")
def demo_loaded(django_db_setup: None, django_db_blocker: Any) -> Iterator[None]:
    """The documented command (`make demo` runs it; production mode, as the tests run, needs --force), run once for
    the module inside a transaction rolled back after it. Each test runs in its own savepoint inside it (pytest-django
    rolls it back), so every one signs in on the freshly loaded data as before; loading it per test cost 8-10 s each.
    """
    with django_db_blocker.unblock():
        outer = transaction.atomic()
        outer.__enter__()
        try:
            call_command("baton_demo_data", "--force", stdout=open("/dev/null", "w"))  # noqa: SIM115
        except BaseException:
            transaction.set_rollback(True)
            outer.__exit__(None, None, None)
            raise
    yield
    with django_db_blocker.unblock():
        transaction.set_rollback(True)
        outer.__exit__(None, None, None)


@pytest.mark.parametrize("username", list(PAGES))
def test_each_demo_login_signs_in_with_demo_and_opens_what_its_role_says(demo_loaded, username):
    # given
    client = Client()

    # when: the sign-in page, as a person uses it
    signed_in = client.post("/login/", {"username": username, "password": "demo"})

    # then
    assert signed_in.status_code == 302, f"{username} could not sign in with 'demo'"
    opens, refused = PAGES[username]
    for path in sorted(opens):
        assert client.get(path).status_code == 200, f"{username} should open {path}"
    for path in sorted(refused):
        assert client.get(path).status_code in {302, 403, 404}, f"{username} should not open {path}"


def test_the_roles_are_the_ones_the_readme_gives(demo_loaded, django_user_model):
    users = {u.username: u for u in django_user_model.objects.filter(username__in=PAGES)}

    # staff, staff2: the approvers' team; approve expenses (a first approval of the demo's expenses)
    expense_approval = HumanTask.objects.filter(instance__workflow_name="expense_approval", state="open").exclude(
        instance__initiator__username__in=["staff", "staff2"]
    )
    for name in ("staff", "staff2"):
        assert set(users[name].groups.values_list("name", flat=True)) == {"approvers"}
        assert any(is_candidate(users[name], task) for task in expense_approval), name
    # manager: approve large orders and expenses, see every task
    assert set(users["manager"].groups.values_list("name", flat=True)) == {"managers"}
    assert users["manager"].has_perm("orchestrator.view_workflowinstance")
    # operator: see every instance; retry, pause, resume, cancel; deliver signals
    operator = users["operator"]
    operator_may = operator.get_all_permissions()
    assert {"orchestrator.view_workflowinstance", "orchestrator.operate_workflowinstance"} <= operator_may
    assert operator.has_perm("orchestrator.deliver_signal")
    assert not operator.is_superuser
    # admin: superuser
    assert users["admin"].is_superuser
    assert users["admin"].is_staff
    # nobody but admin reaches the audit trail
    assert not any(users[n].has_perm("orchestrator.view_trail") for n in ("staff", "staff2", "manager", "operator"))
