"""The engine's reads that bound an answer about one instance (orchestrator/selectors.py)."""

from __future__ import annotations

import pytest

from demo.data import grant_group_permissions
from orchestrator.models import StepRun
from orchestrator.selectors import latest_steps_of, latest_with_total
from orchestrator.services.instances import instance_start
from tests.factories import ExpenseInputFactory, long_history

pytestmark = pytest.mark.django_db


@pytest.fixture
def instance(users):
    grant_group_permissions()
    return instance_start("expense_approval", ExpenseInputFactory(), initiator=users.staff)


def test_the_latest_rows_come_in_id_order_with_the_total_in_one_statement(instance, django_assert_num_queries):
    # given: the instance's first run and 30 more
    long_history(instance, 60, step_name="check", per_round=2)
    ids = list(StepRun.objects.filter(instance=instance).order_by("id").values_list("id", flat=True))

    # when
    with django_assert_num_queries(1):
        rows, total = latest_steps_of(instance.pk, 10)

    # then
    assert [row.pk for row in rows] == ids[-10:]
    assert total == len(ids) == 31


def test_fewer_rows_than_the_limit_are_all_returned(instance):
    # when
    rows, total = latest_steps_of(instance.pk, 50)

    # then
    assert [row.name for row in rows] == ["team_approval"]
    assert total == 1


def test_no_rows_is_an_empty_list_and_zero(instance, django_assert_num_queries):
    # given
    StepRun.objects.filter(instance=instance).delete()

    # when
    with django_assert_num_queries(1):
        found = latest_with_total(StepRun.objects.filter(instance=instance), 5)

    # then
    assert found == ([], 0)
