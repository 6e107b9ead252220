"""The live websocket through the real ASGI stack (origin check, session auth, consumer) on PostgreSQL and Redis.

Every test talks to ``baton_site.asgi.application`` with ``WebsocketCommunicator`` and uses the channel layer
from the settings: ``RedisPubSubChannelLayer`` on Redis db 14 (tests/settings.py), the one the services publish
into after commit. ORM work runs in the sync thread through ``sync_to_async`` (never on the event loop).
Negative tests keep a second socket that does receive the event, so "nothing arrived" cannot come from a
broadcast that never happened.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio
from asgiref.sync import sync_to_async
from channels.layers import DEFAULT_CHANNEL_LAYER, channel_layers
from channels.testing import WebsocketCommunicator
from channels_redis.pubsub import RedisPubSubChannelLayer
from django.contrib.auth.models import User
from django.db import transaction
from django.test import Client

from approvals.models import HumanTask, TaskState
from approvals.services.base import APPROVE
from approvals.services.tasks import task_decide
from baton_site.asgi import application
from orchestrator import consumers
from orchestrator.audit import Actor
from orchestrator.consumers import CLOSE_UNAUTHENTICATED
from orchestrator.models import InstanceState, WorkflowInstance
from orchestrator.services.instances import instance_cancel, instance_start
from tests.sockets import HANDSHAKE_TIMEOUT, close_loop_connections

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]

HOST = (b"host", b"127.0.0.1")
ORIGIN = (b"origin", b"http://127.0.0.1")
EXPENSE = {"employee": "Sam Staff", "amount": "80.00", "category": "meals", "description": "Team lunch"}
ORDER = {"order_id": "WS-1", "customer": "ACME", "email": "buyer@example.com", "amount": "50.00", "items": 1}
EVENT_TIMEOUT = 3.0
QUIET = 0.5


# --- helpers --------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _redis_channel_layer() -> None:
    """A fresh layer object per test (from settings: Redis db 14), so no receive state crosses event loops."""
    channel_layers.backends.pop(DEFAULT_CHANNEL_LAYER, None)
    layer = channel_layers[DEFAULT_CHANNEL_LAYER]
    assert type(layer).__name__ == "RedisPubSubChannelLayer"


@pytest_asyncio.fixture(autouse=True)
async def _close_sync_thread_connections() -> AsyncIterator[None]:
    """Close this loop's channel layer connections and the sync thread's session (tests/sockets.py says why)."""
    yield
    await close_loop_connections()


def _session_cookie(user: User) -> bytes:
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


async def socket_for(
    user: User | None, *, origin: tuple[bytes, bytes] = ORIGIN, cookie: bytes | None = None
) -> WebsocketCommunicator:
    """A communicator to /ws/live/ from a page on http://127.0.0.1 carrying the user's session cookie.

    A new session unless ``cookie`` is given; none for anonymous.
    """
    headers = [HOST, origin]
    if user is not None:
        headers.append((b"cookie", cookie or await sync_to_async(_session_cookie)(user)))
    return WebsocketCommunicator(application, "/ws/live/", headers=headers)


async def connected(user: User) -> WebsocketCommunicator:
    """A signed-in socket that has been accepted and has read its ``hello``."""
    communicator = await socket_for(user)
    accepted, _ = await communicator.connect(timeout=HANDSHAKE_TIMEOUT)
    assert accepted
    hello = await communicator.receive_json_from(timeout=EVENT_TIMEOUT)
    assert hello["type"] == "hello"
    return communicator


async def receive_until(
    communicator: WebsocketCommunicator, predicate: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """The first event matching ``predicate`` (others are skipped); fails after EVENT_TIMEOUT per event."""
    seen = []
    while True:
        try:
            event = await communicator.receive_json_from(timeout=EVENT_TIMEOUT)
        except TimeoutError:
            pytest.fail(f"no matching event; got {seen}")
        if predicate(event):
            return event
        seen.append(event)


def start_expense(initiator: User, **changes: Any) -> WorkflowInstance:
    return instance_start("expense_approval", {**EXPENSE, **changes}, initiator=initiator)


def open_task_of(instance: WorkflowInstance) -> HumanTask:
    return HumanTask.objects.get(instance=instance, state=TaskState.OPEN)


class OpenTransaction:
    """Starts an expense inside ``transaction.atomic()`` and keeps the block open until ``commit()``.

    Both calls must run in the same thread: ``sync_to_async`` (thread-sensitive) guarantees that. Not
    ``database_sync_to_async``: it closes connections in an atomic block, which would roll the work back.
    """

    def __init__(self) -> None:
        self.block = transaction.atomic()
        self.instance: WorkflowInstance | None = None

    def start_expense(self, initiator: User) -> None:
        self.block.__enter__()
        self.instance = start_expense(initiator)

    def commit(self) -> HumanTask:
        self.block.__exit__(None, None, None)
        assert self.instance is not None
        return open_task_of(self.instance)


# --- connecting -----------------------------------------------------------------------------------------


async def test_anonymous_connection_is_refused() -> None:
    """A socket without a session hears nothing: it is closed with 4401 at once, the one reason a page can read (a
    refused handshake reaches it as 1006, the same as a network fault, so it would retry for ever)."""
    # given
    communicator = await socket_for(None)

    # when
    accepted, _ = await communicator.connect(timeout=HANDSHAKE_TIMEOUT)
    first = await communicator.receive_output(timeout=EVENT_TIMEOUT)

    # then
    assert accepted is True
    assert first["type"] == "websocket.close"
    assert first["code"] == CLOSE_UNAUTHENTICATED


async def test_connection_from_a_foreign_origin_is_refused(users) -> None:
    """A signed-in user's cookie sent from another site's page (bad Origin) does not open a socket."""
    # given
    communicator = await socket_for(users.staff, origin=(b"origin", b"http://evil.example"))

    # when
    accepted, _code = await communicator.connect(timeout=HANDSHAKE_TIMEOUT)

    # then
    assert accepted is False
    await communicator.wait()


# --- task events ----------------------------------------------------------------------------------------


async def test_task_opened_for_my_group_arrives_only_after_commit(users) -> None:
    """staff gets hello, nothing while the start is uncommitted, then task.opened once it commits."""
    # given
    socket = await connected(users.staff)
    pending = OpenTransaction()
    await sync_to_async(pending.start_expense)(users.manager)

    # when
    quiet_before_commit = await socket.receive_nothing(timeout=QUIET)
    task = await sync_to_async(pending.commit)()

    # then
    assert quiet_before_commit
    event = await receive_until(socket, lambda e: e["type"] == "task.opened")
    assert event["task"] == task.pk
    assert "inbox" in event["refresh"]
    assert event["counts"]["queue"] == 1
    await socket.disconnect()


async def test_an_idle_socket_stays_connected_and_still_hears_events(users) -> None:
    """After more than redis-py's 5 s default socket timeout of silence, the socket is open and events arrive."""
    # given: a connected socket with nothing to say for 7 seconds
    socket = await connected(users.staff)
    assert await socket.receive_nothing(timeout=7)

    # when
    instance = await sync_to_async(start_expense)(users.manager)

    # then
    event = await receive_until(socket, lambda e: e["type"] == "task.opened")
    assert event["task"] == (await sync_to_async(open_task_of)(instance)).pk
    await socket.disconnect()


async def test_rolled_back_start_sends_nothing(users) -> None:
    """A start whose transaction rolls back never reaches the candidates' sockets."""
    # given
    socket = await connected(users.staff)

    def start_and_roll_back() -> None:
        with transaction.atomic():
            start_expense(users.manager)
            transaction.set_rollback(True)

    # when
    await sync_to_async(start_and_roll_back)()

    # then
    assert await socket.receive_nothing(timeout=QUIET)
    assert await sync_to_async(HumanTask.objects.count)() == 0
    await socket.disconnect()


async def test_user_outside_the_candidate_groups_receives_nothing(users) -> None:
    """manager (not an approver) cannot join the approvers' group and hears nothing of their task."""
    # given
    outsider = await connected(users.manager)
    candidate = await connected(users.staff2)
    await outsider.send_json_to({"subscribe": "group", "id": users.approvers.pk})
    assert (await outsider.receive_json_from(timeout=EVENT_TIMEOUT))["type"] == "error"

    # when
    instance = await sync_to_async(start_expense)(users.staff)
    task = await sync_to_async(open_task_of)(instance)

    # then
    event = await receive_until(candidate, lambda e: e["type"] == "task.opened")
    assert event["task"] == task.pk
    assert await outsider.receive_nothing(timeout=QUIET)
    await outsider.disconnect()
    await candidate.disconnect()


# --- following one instance -----------------------------------------------------------------------------


async def test_subscribing_to_an_instance_i_may_not_see_is_refused(users) -> None:
    """staff asking for operator's order gets an error, and its later changes never reach staff's socket."""
    # given
    instance = await sync_to_async(instance_start)("order_fulfilment", ORDER, initiator=users.operator)
    staff = await connected(users.staff)
    owner = await connected(users.operator)
    await owner.send_json_to({"subscribe": "instance", "id": instance.pk})
    assert await owner.receive_json_from(timeout=EVENT_TIMEOUT) == {"type": "subscribed", "instance": instance.pk}

    # when
    await staff.send_json_to({"subscribe": "instance", "id": instance.pk})
    answer = await staff.receive_json_from(timeout=EVENT_TIMEOUT)
    await sync_to_async(instance_cancel)(instance.pk, actor=Actor.of(users.operator), reason="customer called")

    # then
    assert answer["type"] == "error"
    changed = await receive_until(owner, lambda e: e["type"] == "instance.changed")
    assert changed["instance"] == instance.pk
    assert changed["state"] == InstanceState.CANCELLED
    assert await staff.receive_nothing(timeout=QUIET)
    await staff.disconnect()
    await owner.disconnect()


async def test_subscribing_to_my_instance_forwards_its_changes(users) -> None:
    """staff follows the expense they started and hears instance.changed when staff2 approves it."""
    # given
    instance = await sync_to_async(start_expense)(users.staff)
    task = await sync_to_async(open_task_of)(instance)
    socket = await connected(users.staff)
    await socket.send_json_to({"subscribe": "instance", "id": instance.pk})
    subscribed = await socket.receive_json_from(timeout=EVENT_TIMEOUT)

    # when
    await sync_to_async(task_decide)(task.pk, users.staff2, APPROVE)

    # then
    assert subscribed == {"type": "subscribed", "instance": instance.pk}
    changed = await receive_until(socket, lambda e: e["type"] == "instance.changed")
    assert changed["instance"] == instance.pk
    assert changed["state"] == InstanceState.RUNNING  # the payout step is scheduled
    assert f"instance-{instance.pk}" in changed["refresh"]
    await socket.disconnect()


# --- bad frames -----------------------------------------------------------------------------------------

BAD_FRAMES = {
    "binary": {"bytes": b"\x00\x01{}"},
    "empty": {"text": ""},
    "not JSON": {"text": "subscribe me"},
    "cut-off JSON": {"text": '{"subscribe": "instance", "id": '},
    "lone surrogate": {"text": '"\\ud800'},
    "NaN": {"text": "NaN"},
    "a list": {"text": "[1, 2, 3]"},
    "a number": {"text": "42"},
    "null": {"text": "null"},
    "id an object": {"text": '{"subscribe": "instance", "id": {"$gt": 0}}'},
    "id a float": {"text": '{"subscribe": "instance", "id": 1.5}'},
    "id infinite": {"text": '{"subscribe": "instance", "id": 1e400}'},
    "id beyond bigint": {"text": '{"subscribe": "instance", "id": 99999999999999999999999}'},
    "id negative": {"text": '{"subscribe": "instance", "id": -1}'},
    "unknown request": {"text": '{"subscribe": "group", "id": 1}'},
    "deeply nested": {"text": "[" * 500 + "]" * 500},
    "huge": {"text": '{"subscribe": "instance", "id": 1, "pad": "' + "x" * 1_000_000 + '"}'},
}


@pytest.mark.parametrize("frame", BAD_FRAMES.values(), ids=BAD_FRAMES.keys())
async def test_a_bad_frame_is_answered_or_ignored_and_the_socket_keeps_working(users, frame) -> None:
    """Whatever the page sends, the consumer lives on: it still subscribes, and events still arrive."""
    # given
    mine = await sync_to_async(start_expense)(users.staff)
    socket = await connected(users.staff)

    # when
    await socket.send_input({"type": "websocket.receive", **frame})
    await socket.send_json_to({"subscribe": "instance", "id": mine.pk})

    # then
    subscribed = await receive_until(socket, lambda e: e["type"] == "subscribed")
    assert subscribed["instance"] == mine.pk
    instance = await sync_to_async(start_expense)(users.manager)
    event = await receive_until(socket, lambda e: e["type"] == "task.opened")
    assert event["task"] == (await sync_to_async(open_task_of)(instance)).pk
    await socket.disconnect()


async def test_a_frame_that_is_not_json_is_answered_with_an_error(users) -> None:
    # given
    socket = await connected(users.staff)

    # when
    await socket.send_to(text_data="{oops")

    # then
    answer = await socket.receive_json_from(timeout=EVENT_TIMEOUT)
    assert answer["type"] == "error"
    await socket.disconnect()


# Requests the page could mean, but not one the server grants: each must get an answer, never silence (a page
# waiting for "subscribed" must learn it will not come).
UNANSWERED_REQUESTS = {
    "id a word": {"subscribe": "instance", "id": "abc"},
    "id a list": {"subscribe": "instance", "id": [1]},
    "id true": {"subscribe": "instance", "id": True},
    "id a float": {"subscribe": "instance", "id": 1.5},
    "id missing": {"subscribe": "instance"},
    "id null": {"subscribe": "instance", "id": None},
    "id zero": {"subscribe": "instance", "id": 0},
    "id negative": {"subscribe": "instance", "id": -1},
    "id beyond bigint": {"subscribe": "instance", "id": 2**63},
    "id in Arabic-Indic digits": {"subscribe": "instance", "id": "\u0661"},
    "unknown request": {"subscribe": "group", "id": 1},
    "no request": {"hello": "server"},
}


@pytest.mark.parametrize("request_", UNANSWERED_REQUESTS.values(), ids=UNANSWERED_REQUESTS.keys())
async def test_a_request_the_server_does_not_grant_is_answered_with_an_error(users, request_) -> None:
    # given
    await sync_to_async(start_expense)(users.staff)  # an instance with id 1 may exist: the answer is still no
    socket = await connected(users.staff)

    # when
    await socket.send_json_to(request_)

    # then
    answer = await socket.receive_json_from(timeout=EVENT_TIMEOUT)
    assert answer["type"] == "error", answer
    await socket.disconnect()


FLOOD = 200


@pytest.mark.parametrize("whose", ["my own, already followed", "another person's"])
async def test_a_flood_of_subscribe_frames_is_answered_without_a_query_each(users, monkeypatch, whose) -> None:
    """A page subscribes once per connection: a client sending hundreds of requests gets each answered, and the
    access check (a few statements each) runs a bounded number of times, not once per frame."""
    # given
    owner = users.staff if whose.startswith("my") else users.operator
    instance = await sync_to_async(start_expense)(owner)
    socket = await connected(users.staff)
    await socket.send_json_to({"subscribe": "instance", "id": instance.pk})
    await socket.receive_json_from(timeout=EVENT_TIMEOUT)

    checks = []
    real_check = consumers.instance_group_if_allowed

    def counted_check(user: User, instance_id: int) -> str | None:
        checks.append(instance_id)
        return real_check(user, instance_id)

    monkeypatch.setattr(consumers, "instance_group_if_allowed", counted_check)

    # when
    for _ in range(FLOOD):
        await socket.send_json_to({"subscribe": "instance", "id": instance.pk})
    answers = [await socket.receive_json_from(timeout=EVENT_TIMEOUT) for _ in range(FLOOD)]

    # then
    assert all(a["type"] in ("subscribed", "error") for a in answers), answers[:3]
    if whose.startswith("my"):
        assert {a["type"] for a in answers} == {"subscribed"}
    assert len(checks) < FLOOD // 4, f"{len(checks)} access checks for {FLOOD} frames"
    await socket.disconnect()


async def test_one_person_cannot_open_sockets_without_end(users, settings) -> None:
    """Each socket re-checks its session every BATON_LIVE_RECHECK seconds on the process's one database thread:
    a person opening sockets without end would delay every other socket's re-checks. Past the cap per person
    and process the handshake is refused; others still connect, and closing a socket frees its place."""
    # given
    from orchestrator.consumers import MAX_SOCKETS_PER_USER

    cookie = await sync_to_async(_session_cookie)(users.staff)
    sockets = []
    for _ in range(MAX_SOCKETS_PER_USER):
        socket = await socket_for(users.staff, cookie=cookie)
        accepted, _ = await socket.connect(timeout=HANDSHAKE_TIMEOUT)
        assert accepted
        sockets.append(socket)

    # when
    one_more = await socket_for(users.staff, cookie=cookie)
    refused, _ = await one_more.connect(timeout=HANDSHAKE_TIMEOUT)
    someone_else = await socket_for(users.staff2)
    other_accepted, _ = await someone_else.connect(timeout=HANDSHAKE_TIMEOUT)
    await sockets.pop().disconnect()
    again = await socket_for(users.staff, cookie=cookie)
    accepted_again, _ = await again.connect(timeout=HANDSHAKE_TIMEOUT)

    # then
    assert refused is False
    assert other_accepted is True
    assert accepted_again is True
    for socket in [*sockets, someone_else, again]:
        await socket.disconnect()


# --- another deployment on the same Redis server ----------------------------------------------------------


async def test_a_socket_hears_nothing_from_another_deployment_on_the_same_redis_server(users, settings) -> None:
    """A deployment on the next Redis database number publishes to the same group name first: only ours arrives."""
    # given
    from baton_site.settings import derived_channel_prefix
    from orchestrator import realtime

    socket = await connected(users.staff)
    ours = settings.CHANNEL_LAYERS["default"]["CONFIG"]["hosts"][0]
    base, _, db = ours.rpartition("/")
    theirs = f"{base}/{(int(db or 0) + 1) % 16}"
    other = RedisPubSubChannelLayer(
        hosts=[theirs], prefix=derived_channel_prefix(settings.DATABASES["default"], theirs)
    )
    group = f"user.{users.staff.pk}"

    # when
    await sync_to_async(realtime._publish)(other, [group], {"type": "baton.event", "event": {"type": "theirs"}})
    await sync_to_async(realtime.send_now)([group], {"type": "ours"})

    # then
    assert (await socket.receive_json_from(timeout=EVENT_TIMEOUT))["type"] == "ours"
    assert await socket.receive_nothing(timeout=QUIET)
    await socket.disconnect()


# --- a task leaving its holder ------------------------------------------------------------------------------


def _escalation_held_by(manager: User, run_steps: Any) -> HumanTask:
    """An order whose refund failed for good: its operators' escalation, claimed by ``manager`` (no operator, so
    no candidate: managers answer escalations as operators do)."""
    from approvals.models import TaskKind
    from approvals.services.tasks import task_claim

    instance = instance_start("order_fulfilment", {**ORDER, "fail_shipping": True, "fail_refund": 4}, initiator=None)
    run_steps(instance, advance=True)
    task = HumanTask.objects.get(instance=instance, kind=TaskKind.ESCALATION)
    return task_claim(task.pk, manager)


@pytest.mark.parametrize("how", ["delegated", "released"])
async def test_the_holder_who_is_no_candidate_hears_that_the_task_left_them(users, run_steps, how) -> None:
    """Given an escalation claimed by manager (who listens to no candidate group of it), when another manager
    delegates it to operator (or releases it), then manager's pages hear of it at once (their My tasks and count
    drop it), not at the next minute's resync; the operators hear it too."""
    from approvals.services.tasks import task_delegate, task_release
    from tests.factories import UserFactory

    # given
    other_manager = await sync_to_async(UserFactory)(username="manager2", groups=[users.managers])
    task = await sync_to_async(_escalation_held_by)(users.manager, run_steps)
    holder = await connected(users.manager)
    operator = await connected(users.operator)

    # when
    if how == "delegated":
        await sync_to_async(task_delegate)(task.pk, other_manager, users.operator)
    else:
        await sync_to_async(task_release)(task.pk, other_manager)

    # then
    kind = f"task.{how}"
    heard = await receive_until(holder, lambda e: e["type"] == kind and e.get("task") == task.pk)
    assert "inbox" in heard["refresh"]
    assert heard["counts"]["inbox"] == 0
    await receive_until(operator, lambda e: e["type"] == kind and e.get("task") == task.pk)
    await holder.disconnect()
    await operator.disconnect()


# --- counts that heal ---------------------------------------------------------------------------------------


def _drop_counts_event_and_open_a_task(initiator: User) -> HumanTask:
    """An expense started while no socket listened (its task.opened event reached nobody): what a page misses when
    pub/sub drops an event or the server restarts."""
    return open_task_of(start_expense(initiator))


async def test_a_socket_that_opens_or_asks_is_told_its_counts(users) -> None:
    """Given a task opened while staff2's page had no socket (the event was lost to it), when the page's socket
    (re)connects, then its hello carries staff2's counts (the queue holds the task); and when the page asks again
    ({"ask": "counts"}, as its minute's resync does), the answer carries them read afresh. The list's resync alone
    re-fetched rows, and the badges stayed wrong until some later event."""
    # given
    await sync_to_async(_drop_counts_event_and_open_a_task)(users.staff)

    # when
    communicator = await socket_for(users.staff2)
    accepted, _ = await communicator.connect(timeout=HANDSHAKE_TIMEOUT)
    hello = await communicator.receive_json_from(timeout=EVENT_TIMEOUT)
    await sync_to_async(_drop_counts_event_and_open_a_task)(users.staff)
    await receive_until(communicator, lambda e: e["type"] == "task.opened")
    await communicator.send_json_to({"ask": "counts"})
    answer = await receive_until(communicator, lambda e: e["type"] == "counts")

    # then
    assert accepted
    assert (hello["type"], hello["counts"]["queue"], hello["counts"]["inbox"]) == ("hello", 1, 0)
    assert answer["counts"]["queue"] == 2
    await communicator.disconnect()
