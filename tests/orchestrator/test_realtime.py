"""orchestrator.realtime: live events are published after commit and can never undo committed work."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest
from asgiref.sync import sync_to_async
from channels.layers import DEFAULT_CHANNEL_LAYER, channel_layers
from channels_redis.pubsub import RedisPubSubChannelLayer

from baton_site.settings import derived_channel_prefix
from orchestrator import realtime
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


# --- one Redis server, two deployments ----------------------------------------------------------------------

DATABASE = {"ENGINE": "django.db.backends.postgresql", "HOST": "db", "PORT": "5432", "NAME": "baton"}


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ((DATABASE, "redis://cache:6379/0"), (DATABASE, "redis://cache:6379/1")),
        ((DATABASE, "redis://cache:6379/0"), ({**DATABASE, "NAME": "baton_staging"}, "redis://cache:6379/0")),
        ((DATABASE, "redis://cache:6379/0"), ({**DATABASE, "HOST": "db2"}, "redis://cache:6379/0")),
        ((DATABASE, "redis://cache:6379/0"), (DATABASE, "redis://cache:6380/0")),
        ((DATABASE, "unix:///run/redis.sock?db=0"), (DATABASE, "unix:///run/redis.sock?db=2")),
    ],
    ids=["redis database", "database name", "database host", "redis port", "redis socket database"],
)
def test_deployments_that_differ_in_where_their_data_lives_get_different_prefixes(a, b) -> None:
    assert derived_channel_prefix(*a) != derived_channel_prefix(*b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ((DATABASE, "redis://cache:6379/3"), (DATABASE, "redis://cache:6379/3?socket_timeout=5")),
        ((DATABASE, "redis://cache/0"), (DATABASE, "redis://cache:6379")),
        ((DATABASE, "redis://:secret@CACHE:6379/3"), (DATABASE, "redis://cache:6379/03")),
        ((DATABASE, "redis://cache:6379/3"), ({**DATABASE, "PORT": "", "USER": "other"}, "redis://cache:6379/3")),
    ],
    ids=["url options", "default port and database", "password, case, leading zero", "database port and user"],
)
def test_the_processes_of_one_deployment_agree_on_the_prefix(a, b) -> None:
    """The web server and the worker may spell the same places differently; the prefix must still match."""
    assert derived_channel_prefix(*a) == derived_channel_prefix(*b)


@pytest.mark.parametrize("local", ["localhost", "127.0.0.1", "::1", "", "/var/run/postgresql"])
def test_deployments_on_two_machines_each_with_its_own_local_database_get_different_prefixes(local) -> None:
    """Two machines, each with a database named baton reached on its own loopback or socket, share one Redis:
    the database address is the same text on both, yet they are two deployments."""
    # given
    database = {**DATABASE, "HOST": local}

    # when
    first = derived_channel_prefix(database, "redis://cache:6379/0", machine="web-a")
    second = derived_channel_prefix(database, "redis://cache:6379/0", machine="web-b")

    # then
    assert first != second


def test_a_database_on_another_host_does_not_depend_on_the_machine() -> None:
    """The web server and its worker on two machines reach the same database host: one deployment, one prefix."""
    assert derived_channel_prefix(DATABASE, "redis://cache:6379/0", machine="web-a") == derived_channel_prefix(
        DATABASE, "redis://cache:6379/0", machine="worker-b"
    )


def test_the_channel_layer_uses_the_deployments_prefix(settings) -> None:
    assert settings.CHANNEL_LAYERS["default"]["CONFIG"]["prefix"] == settings.BATON_CHANNEL_PREFIX
    assert settings.BATON_CHANNEL_PREFIX.startswith("baton.")


def _other_database_number(url: str) -> str:
    """The same Redis server as ``url``, the next database number."""
    base, _, db = url.rpartition("/")
    return f"{base}/{(int(db or 0) + 1) % 16}"


class Deployment:
    """One deployment's channel layer as settings build it, on the Redis server the tests use."""

    def __init__(self, redis_url: str, prefix: str) -> None:
        self.layer = RedisPubSubChannelLayer(hosts=[redis_url], prefix=prefix)
        self.channel = ""

    async def listen(self, *groups: str) -> None:
        self.channel = await self.layer.new_channel()
        for group in groups:
            await self.layer.group_add(group, self.channel)

    async def heard(self) -> list[dict]:
        """Every message that reaches this deployment's listener within half a second of silence."""
        messages = []
        while True:
            try:
                messages.append(await asyncio.wait_for(self.layer.receive(self.channel), 0.5))
            except TimeoutError:
                return messages

    async def close(self) -> None:
        await self.layer.flush()


@pytest.mark.asyncio
async def test_two_deployments_on_one_redis_server_hear_only_their_own_events(settings) -> None:
    """Same group names, same Redis server, database numbers 1 apart: each receives only what it sent."""
    # given
    url_a = settings.CHANNEL_LAYERS["default"]["CONFIG"]["hosts"][0]
    url_b = _other_database_number(url_a)
    a = Deployment(url_a, derived_channel_prefix(settings.DATABASES["default"], url_a))
    b = Deployment(url_b, derived_channel_prefix(settings.DATABASES["default"], url_b))
    await a.listen("user.1", "ops")
    await b.listen("user.1", "ops")

    # when: each publishes as the services do (one pipelined PUBLISH), and once through the layer itself
    await sync_to_async(realtime._publish)(a.layer, ["user.1", "ops"], {"type": "baton.event", "event": {"from": "a"}})
    await sync_to_async(realtime._publish)(b.layer, ["user.1", "ops"], {"type": "baton.event", "event": {"from": "b"}})
    await b.layer.group_send("ops", {"type": "baton.event", "event": {"from": "b"}})

    # then
    heard_a, heard_b = await a.heard(), await b.heard()
    assert [m["event"]["from"] for m in heard_a] == ["a", "a"]
    assert [m["event"]["from"] for m in heard_b] == ["b", "b", "b"]
    await a.close()
    await b.close()
