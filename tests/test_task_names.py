"""The Celery tasks the services publish by name (they never import the tasks modules that call them: no import
cycle) exist under those names, as a worker registers them."""

from __future__ import annotations

import pytest

from audit.services import VERIFICATION_RUN_TASK
from automation.webhooks import DELIVERY_SEND_TASK
from baton_site.celery import app
from console.services import BULK_JOB_WORK_TASK
from orchestrator.services.unit import STEP_RUN_TASK


@pytest.mark.parametrize("name", [STEP_RUN_TASK, DELIVERY_SEND_TASK, VERIFICATION_RUN_TASK, BULK_JOB_WORK_TASK])
def test_a_task_a_service_sends_by_name_is_registered_under_that_name(name: str) -> None:
    # given the project's Celery app with its tasks discovered, as a worker's start discovers them
    app.loader.import_default_modules()

    # when the name a service publishes is looked up
    task = app.tasks.get(name)

    # then a task answers to it, and it keeps no result, as the services' publish says (ignore_result=True)
    assert task is not None, f"{name!r} is not a registered Celery task (registered: {sorted(app.tasks)})"
    assert task.ignore_result is True
