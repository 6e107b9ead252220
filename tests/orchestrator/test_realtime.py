"""orchestrator.realtime: live events are published after commit and can never undo committed work."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from channels.layers import DEFAULT_CHANNEL_LAYER, channel_layers

from orchestrator.models import InstanceState, WorkflowInstance
from orchestrator.services.instances import instance_start

pytestmark = pytest.mark.django_db(transaction=True)

EXPENSE = {"employee": "Sam Staff", "amount": "80.00", "category": "meals", "description": "Team lunch"}


@pytest.fixture
def unreachable_live_redis(settings) -> Iterator[None]:
    """Live events pointed at a port where no Redis listens (the broker and the database are untouched)."""
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": ["redis://127.0.0.1:1/0"]},
        }
    }
    channel_layers.backends.pop(DEFAULT_CHANNEL_LAYER, None)
    yield
    channel_layers.backends.pop(DEFAULT_CHANNEL_LAYER, None)


def test_a_live_event_that_cannot_reach_redis_is_logged_and_the_work_stays_committed(
    users, unreachable_live_redis, caplog
):
    # given
    caplog.set_level(logging.ERROR, logger="orchestrator.realtime")

    # when
    instance = instance_start("expense_approval", EXPENSE, initiator=users.manager)

    # then
    assert WorkflowInstance.objects.get(pk=instance.pk).state == InstanceState.WAITING
    assert any("broadcast to" in record.getMessage() for record in caplog.records)
