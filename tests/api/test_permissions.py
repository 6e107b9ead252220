"""``has_model_perm``: Django's ``has_perm`` answer in one statement, read fresh on every call (api/permissions.py)."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.test import override_settings

from api.permissions import has_model_perm
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

START = "orchestrator.add_workflowinstance"


def start_permission() -> Permission:
    return Permission.objects.get(content_type__app_label="orchestrator", codename="add_workflowinstance")


@pytest.mark.parametrize("how", ["own", "group", "none", "superuser", "inactive", "inactive superuser", "other"])
def test_the_answer_is_django_has_perm_s(roles, how):
    # given: a person holding the permission (or not) in each way ModelBackend knows
    person = UserFactory(
        username=f"p-{how.replace(' ', '-')}",
        is_superuser="superuser" in how,
        is_active="inactive" not in how,
    )
    if how in ("own", "inactive"):
        person.user_permissions.add(start_permission())
    if how == "group":
        person.groups.add(roles.approvers)
        roles.approvers.permissions.add(start_permission())
    if how == "other":
        person.user_permissions.add(Permission.objects.get(codename="view_workflowinstance"))

    # when
    answer = has_model_perm(person, START)

    # then: the same as Django's (a fresh object: has_perm caches on the instance)
    assert answer == type(person).objects.get(pk=person.pk).has_perm(START)
    assert answer is (how in ("own", "group", "superuser"))


def test_one_statement_and_a_removed_permission_counts_at_once(roles, django_assert_num_queries):
    # given: the permission through a group
    person = UserFactory(username="via-group", groups=[roles.approvers])
    roles.approvers.permissions.add(start_permission())
    with django_assert_num_queries(1):
        assert has_model_perm(person, START)

    # when: the group loses it
    roles.approvers.permissions.remove(start_permission())

    # then: the same object, asked again, says no (nothing cached)
    assert not has_model_perm(person, START)


def test_with_another_backend_it_asks_django(roles):
    # given: a backend that may say yes for reasons of its own, and a person without the permission in the database
    person = UserFactory(username="elsewhere")
    backends = ["django.contrib.auth.backends.ModelBackend", "tests.api.test_permissions.YesToStarts"]

    # when / then
    with override_settings(AUTHENTICATION_BACKENDS=backends):
        assert has_model_perm(person, START)
    assert not has_model_perm(type(person).objects.get(pk=person.pk), START)


def test_anonymous_is_refused():
    from django.contrib.auth.models import AnonymousUser

    assert not has_model_perm(AnonymousUser(), START)


class YesToStarts:
    """An authentication backend granting the start permission to everyone (as an SSO's role mapping might)."""

    def authenticate(self, request, **credentials):
        return None

    def has_perm(self, user_obj, perm, obj=None):
        return perm == START
