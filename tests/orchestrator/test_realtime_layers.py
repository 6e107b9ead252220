"""Live events over channels_redis's standard ``RedisChannelLayer`` (``BATON_CHANNEL_LAYER=redis``), through the
real ASGI stack and a real consumer on Redis.

The default pub/sub layer and Baton's pipelined publisher are covered by test_consumers.py; here the same kinds of
event travel through the standard layer's own ``group_send``: from a service call in this process (a web
request's commit) and from a real worker process's commit.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from asgiref.sync import sync_to_async
from channels.layers import DEFAULT_CHANNEL_LAYER, channel_layers
from channels_redis.core import RedisChannelLayer

from approvals.models import HumanTask, TaskState
from approvals.services.base import APPROVE
from approvals.services.tasks import task_decide
from orchestrator.models import InstanceState, WorkflowInstance
from orchestrator.services.instances import instance_start
from tests.orchestrator.test_consumers import EVENT_TIMEOUT, EXPENSE, QUIET, connected, receive_until
from tests.sockets import close_loop_connections

pytestmark = pytest.mark.django_db(transaction=True)

STANDARD = "channels_redis.core.RedisChannelLayer"
# Seconds a socket waits for the next event a worker commits (it sweeps every 0.5 s; a loaded machine is slow).
WORKER_TIMEOUT = 30


@pytest.fixture(autouse=True)
def standard_layer(settings) -> Iterator[None]:
    """The settings' channel layer as ``BATON_CHANNEL_LAYER=redis`` makes it: same Redis, same prefix."""
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": STANDARD,
            "CONFIG": {"hosts": [settings.REDIS_URL], "prefix": settings.BATON_CHANNEL_PREFIX},
        }
    }
    channel_layers.backends.pop(DEFAULT_CHANNEL_LAYER, None)
    assert isinstance(channel_layers[DEFAULT_CHANNEL_LAYER], RedisChannelLayer)
    yield
    channel_layers.backends.pop(DEFAULT_CHANNEL_LAYER, None)


@pytest_asyncio.fixture
async def closed_after() -> AsyncIterator[None]:
    """Close this loop's Redis connections of the layer and the sync thread's database session after a test."""
    yield
    await close_loop_connections()


def start_expense(initiator, **changes) -> WorkflowInstance:
    return instance_start("expense_approval", {**EXPENSE, **changes}, initiator=initiator)


@pytest.mark.asyncio
async def test_a_task_opened_in_a_web_request_reaches_the_candidates_socket(users, closed_after) -> None:
    """staff's socket hears task.opened for the approvers' new task; manager, no approver, hears nothing."""
    # given
    candidate = await connected(users.staff)
    outsider = await connected(users.manager)

    # when
    instance = await sync_to_async(start_expense)(users.staff2)
    task = await sync_to_async(HumanTask.objects.get)(instance=instance, state=TaskState.OPEN)

    # then
    event = await receive_until(candidate, lambda e: e["type"] == "task.opened")
    assert event["task"] == task.pk
    assert event["counts"]["queue"] == 1
    assert await outsider.receive_nothing(timeout=QUIET)
    await candidate.disconnect()
    await outsider.disconnect()


@pytest.mark.asyncio
async def test_a_followed_instance_reports_its_change_through_the_standard_layer(users, closed_after) -> None:
    """staff follows their expense and hears instance.changed when staff2 approves it."""
    # given
    instance = await sync_to_async(start_expense)(users.staff)
    task = await sync_to_async(HumanTask.objects.get)(instance=instance, state=TaskState.OPEN)
    socket = await connected(users.staff)
    await socket.send_json_to({"subscribe": "instance", "id": instance.pk})
    assert await socket.receive_json_from(timeout=EVENT_TIMEOUT) == {"type": "subscribed", "instance": instance.pk}

    # when
    await sync_to_async(task_decide)(task.pk, users.staff2, APPROVE)

    # then
    changed = await receive_until(socket, lambda e: e["type"] == "instance.changed")
    assert changed["instance"] == instance.pk
    assert changed["state"] == InstanceState.RUNNING
    await socket.disconnect()


def test_a_layer_that_cannot_be_reached_is_logged_and_the_work_stays_committed(users, settings, caplog) -> None:
    """With the standard layer's Redis gone, the start commits and the failed send is logged, never raised."""
    # given
    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": STANDARD, "CONFIG": {"hosts": ["redis://127.0.0.1:1/0"], "prefix": "baton.gone."}}
    }
    channel_layers.backends.pop(DEFAULT_CHANNEL_LAYER, None)

    # when
    with caplog.at_level("ERROR", logger="orchestrator.realtime"):
        instance = start_expense(users.staff2)

    # then
    assert WorkflowInstance.objects.filter(pk=instance.pk).exists()
    assert any("broadcast to" in record.getMessage() for record in caplog.records)


@pytest.fixture
def worker_on_the_standard_layer(celery_worker, monkeypatch) -> Iterator[None]:
    """The real worker restarted with ``BATON_CHANNEL_LAYER=redis``; stopped afterwards, so the next worker test
    starts one on the settings' own layer. In this (the main) thread: the worker's ping goes through this
    process's Celery app, whose broker connections are not to be shared with the async test's sync thread."""
    monkeypatch.setenv("BATON_CHANNEL_LAYER", "redis")
    celery_worker.stop()
    celery_worker.start()
    yield
    celery_worker.stop()


@pytest.mark.worker
@pytest.mark.asyncio
async def test_a_worker_process_on_the_standard_layer_reaches_a_socket(
    users, worker_on_the_standard_layer, closed_after
) -> None:
    """A real worker on the standard layer runs the approved expense's payout, and the socket following the
    instance hears the changes that worker committed, up to completion."""
    # given
    instance = await sync_to_async(start_expense)(users.staff)
    task = await sync_to_async(HumanTask.objects.get)(instance=instance, state=TaskState.OPEN)
    socket = await connected(users.staff)
    await socket.send_json_to({"subscribe": "instance", "id": instance.pk})
    assert await socket.receive_json_from(timeout=EVENT_TIMEOUT) == {"type": "subscribed", "instance": instance.pk}

    # when: the decision schedules the payout, which only the worker runs
    await sync_to_async(task_decide)(task.pk, users.staff2, APPROVE)

    # then
    states = []
    while InstanceState.COMPLETED not in states:
        event = await socket.receive_json_from(timeout=WORKER_TIMEOUT)
        if event["type"] == "instance.changed" and event["instance"] == instance.pk:
            states.append(event["state"])
    assert states[-1] == InstanceState.COMPLETED
    await socket.disconnect()
