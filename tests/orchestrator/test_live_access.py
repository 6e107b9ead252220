"""An open live socket follows its user's authority: sign-out, deactivation and lost access reach it within seconds.

Two ways, both tested through the real ASGI stack on PostgreSQL and Redis: a push (orchestrator/live_access.py
sends ``baton.recheck`` after the change commits; these tests set ``BATON_LIVE_RECHECK`` to ten minutes so only the
push can act), and each socket's periodic re-check, which heals changes that send no signal (``QuerySet.update``,
a session row deleted, a membership row deleted directly; these tests set the period to half a second).

"Stops receiving" is shown against a probe: a channel of the same Redis layer in the same group, which does get
the event, so a quiet socket cannot come from a broadcast that never happened.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.layers import DEFAULT_CHANNEL_LAYER, channel_layers
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import Permission, User
from django.contrib.sessions.models import Session
from django.db import transaction
from django.db.models import ProtectedError
from django.test import Client
from django.utils import timezone

from orchestrator.audit import Actor
from orchestrator.consumers import CLOSE_UNAUTHENTICATED
from orchestrator.realtime import send_now
from orchestrator.services.instances import instance_cancel
from tests.orchestrator.test_consumers import (  # noqa: F401 (the two autouse fixtures apply here too)
    EVENT_TIMEOUT,
    QUIET,
    _close_sync_thread_connections,
    _redis_channel_layer,
    connected,
    open_task_of,
    receive_until,
    socket_for,
    start_expense,
)
from tests.sockets import HANDSHAKE_TIMEOUT

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]

WITHIN = 5.0  # "within seconds": the longest a change may take to reach an open socket here


@pytest.fixture
def push_only(settings) -> None:
    """A periodic re-check far beyond the test: whatever happens is the push's doing."""
    settings.BATON_LIVE_RECHECK = 600


@pytest.fixture
def fast_recheck(settings) -> None:
    """Re-check every half second, for changes that send no signal."""
    settings.BATON_LIVE_RECHECK = 0.5


def _signed_in(user: User) -> tuple[Client, bytes]:
    client = Client()
    client.force_login(user)
    return client, f"sessionid={client.cookies['sessionid'].value}".encode()


async def signed_in_socket(user: User) -> tuple[Client, WebsocketCommunicator]:
    """A browser session (its test client) and an accepted socket opened with that session's cookie."""
    client, cookie = await sync_to_async(_signed_in)(user)
    socket = await socket_for(user, cookie=cookie)
    accepted, _ = await socket.connect(timeout=HANDSHAKE_TIMEOUT)
    assert accepted
    assert (await socket.receive_json_from(timeout=EVENT_TIMEOUT))["type"] == "hello"
    return client, socket


async def close_code(socket: WebsocketCommunicator, within: float = WITHIN) -> int | None:
    """The code the server closes ``socket`` with, skipping frames before it; fails if it stays open ``within`` s."""
    deadline = time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        try:
            output = await socket.receive_output(timeout=left)
        except TimeoutError:
            break
        if output["type"] == "websocket.close":
            return output.get("code")
    pytest.fail(f"the socket was still open after {within} s")


class Probe:
    """A receiver on the same Redis channel layer, in the groups under test: proof that an event was sent."""

    def __init__(self) -> None:
        self.layer = channel_layers[DEFAULT_CHANNEL_LAYER]
        self.channel = ""

    async def join(self, *groups: str) -> Probe:
        self.channel = await self.layer.new_channel()
        for group in groups:
            await self.layer.group_add(group, self.channel)
        return self

    async def receive(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        deadline = time.monotonic() + EVENT_TIMEOUT
        while True:
            message = await asyncio.wait_for(self.layer.receive(self.channel), deadline - time.monotonic())
            if message.get("type") == "baton.event" and predicate(message["event"]):
                return message["event"]


async def access_changed(socket: WebsocketCommunicator, within: float = WITHIN) -> dict[str, Any]:
    """The socket's ``access.changed`` frame (sent once it has left or joined groups), other frames skipped."""
    deadline = time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        try:
            frame = await socket.receive_json_from(timeout=left)
        except TimeoutError:
            break
        if frame["type"] == "access.changed":
            return frame
    pytest.fail(f"no access.changed within {within} s")


async def task_opened_reaches_probe_not_socket(users, socket: WebsocketCommunicator, probe: Probe) -> None:
    """manager starts an expense: the approvers' probe hears task.opened, ``socket`` hears nothing."""
    instance = await sync_to_async(start_expense)(users.manager)
    task = await sync_to_async(open_task_of)(instance)
    assert (await probe.receive(lambda e: e["type"] == "task.opened"))["task"] == task.pk
    assert await socket.receive_nothing(timeout=QUIET)


# --- the push ---------------------------------------------------------------------------------------------


async def test_signing_out_closes_that_sessions_socket_and_no_other(users, push_only) -> None:
    """staff signs out in one browser: that browser's socket closes with 4401; their other browser still hears."""
    # given
    browser, socket = await signed_in_socket(users.staff)
    other_browser = await connected(users.staff)

    # when
    response = await sync_to_async(browser.post)("/logout/")

    # then
    assert response.status_code == 302
    assert await close_code(socket) == CLOSE_UNAUTHENTICATED
    instance = await sync_to_async(start_expense)(users.manager)
    event = await receive_until(other_browser, lambda e: e["type"] == "task.opened")
    assert event["task"] == (await sync_to_async(open_task_of)(instance)).pk
    await socket.disconnect()
    await other_browser.disconnect()


def _deactivate(user: User) -> None:
    user.is_active = False
    user.save()


def _change_password(user: User) -> None:
    user.set_password("a-new-password-1")
    user.save()


@pytest.mark.parametrize("change", [_deactivate, _change_password], ids=["deactivated", "password-changed"])
async def test_a_user_who_can_no_longer_sign_in_has_their_socket_closed(users, push_only, change) -> None:
    """Deactivation or a new password (every session ends), saved anywhere: the socket closes with 4401."""
    # given
    socket = await connected(users.staff)

    # when
    await sync_to_async(change)(users.staff)

    # then
    assert await close_code(socket) == CLOSE_UNAUTHENTICATED
    await socket.disconnect()


async def test_a_person_who_signed_in_cannot_be_deleted_so_deactivation_is_the_way_out(users, push_only) -> None:
    """Signing in writes to the access chain, whose events keep their actor (PROTECT): deleting that person is
    refused and their socket stays as it was; deactivation (above) is how someone leaves."""
    # given
    socket = await connected(users.staff)

    # when / then
    with pytest.raises(ProtectedError):
        await sync_to_async(users.staff.delete)()
    assert await sync_to_async(User.objects.filter(pk=users.staff.pk).exists)()
    await socket.disconnect()


def _remove_forward(users) -> None:
    users.staff.groups.remove(users.approvers)


def _remove_reverse(users) -> None:
    users.approvers.user_set.remove(users.staff)


def _set_forward(users) -> None:
    users.staff.groups.set([users.managers])


def _clear_forward(users) -> None:
    users.staff.groups.clear()


def _clear_reverse(users) -> None:
    # Clearing empties the team; staff2 rejoins so the next task still opens for someone (a task nobody can act on
    # escalates at once, approvals' rule) and the probe has a task.opened to hear.
    users.approvers.user_set.clear()
    users.approvers.user_set.add(users.staff2)


def _delete_group(users) -> None:
    users.approvers.delete()


@pytest.mark.parametrize(
    "remove",
    [_remove_forward, _remove_reverse, _set_forward, _clear_forward, _clear_reverse],
    ids=["user.groups.remove", "group.user_set.remove", "user.groups.set", "user.groups.clear", "group.user_set.clear"],
)
async def test_removal_from_a_group_stops_that_groups_events(users, push_only, remove) -> None:
    """staff leaves approvers (any way the ORM offers): their open socket no longer hears the approvers' tasks."""
    # given
    socket = await connected(users.staff)
    probe = await Probe().join(f"group.{users.approvers.pk}")

    # when
    await sync_to_async(remove)(users)

    # then
    changed = await access_changed(socket)
    assert changed["refresh"] == ["inbox"]
    await task_opened_reaches_probe_not_socket(users, socket, probe)
    await socket.disconnect()


async def test_a_deleted_group_stops_its_events(users, push_only) -> None:
    """The approvers group is deleted: its former members' sockets leave group.<id>."""
    # given
    socket = await connected(users.staff)
    group = f"group.{users.approvers.pk}"
    probe = await Probe().join(group)

    # when
    await sync_to_async(_delete_group)(users)

    # then
    await access_changed(socket)
    await sync_to_async(send_now)([group], {"type": "task.opened", "task": 0})
    assert (await probe.receive(lambda e: e["type"] == "task.opened"))["task"] == 0
    assert await socket.receive_nothing(timeout=QUIET)
    await socket.disconnect()


async def test_joining_a_group_starts_its_events(users, push_only) -> None:
    """manager is added to approvers while their page is open: the next approvers' task reaches them."""
    # given
    socket = await connected(users.manager)

    # when
    await sync_to_async(users.approvers.user_set.add)(users.manager)

    # then
    await access_changed(socket)
    instance = await sync_to_async(start_expense)(users.staff)
    event = await receive_until(socket, lambda e: e["type"] == "task.opened")
    assert event["task"] == (await sync_to_async(open_task_of)(instance)).pk
    await socket.disconnect()


def _grant_view_all(users) -> Permission:
    permission = Permission.objects.get(codename="view_workflowinstance")
    users.operators.permissions.add(permission)
    return permission


@pytest.mark.parametrize(
    "revoke",
    [
        "group.permissions.remove",
        "permission.group_set.clear",
        "leave operators",
        "user.user_permissions.remove",
        "permission.user_set.clear",
    ],
)
async def test_a_role_change_that_removes_access_to_an_instance_stops_its_events(users, push_only, revoke) -> None:
    """operator follows manager's expense through the view-all permission (of operators, or their own); it goes."""
    # given
    permission = await sync_to_async(_grant_view_all)(users)
    if revoke.startswith(("user.", "permission.user_set")):
        await sync_to_async(users.operators.permissions.clear)()
        await sync_to_async(users.operator.user_permissions.add)(permission)
    instance = await sync_to_async(start_expense)(users.manager)
    socket = await connected(users.operator)
    await socket.send_json_to({"subscribe": "instance", "id": instance.pk})
    assert await socket.receive_json_from(timeout=EVENT_TIMEOUT) == {"type": "subscribed", "instance": instance.pk}
    probe = await Probe().join(f"instance.{instance.pk}")

    # when
    if revoke == "group.permissions.remove":
        await sync_to_async(users.operators.permissions.remove)(permission)
    elif revoke == "permission.group_set.clear":
        await sync_to_async(permission.group_set.clear)()
    elif revoke == "leave operators":
        await sync_to_async(users.operator.groups.remove)(users.operators)
    elif revoke == "user.user_permissions.remove":
        await sync_to_async(users.operator.user_permissions.remove)(permission)
    else:
        await sync_to_async(permission.user_set.clear)()

    # then
    await access_changed(socket)
    await sync_to_async(instance_cancel)(instance.pk, actor=Actor.of(users.manager), reason="wrong amount")
    assert (await probe.receive(lambda e: e["type"] == "instance.changed"))["instance"] == instance.pk
    assert await socket.receive_nothing(timeout=QUIET)
    await socket.disconnect()


async def test_the_push_goes_out_after_commit_so_the_recheck_sees_the_change(users, push_only) -> None:
    """Deactivation in a transaction that stays open a while: the socket closes once it commits, not before."""
    # given
    socket = await connected(users.staff)
    block = transaction.atomic()

    def deactivate_in_open_transaction() -> None:
        block.__enter__()
        _deactivate(users.staff)

    # when: a recheck sent now would find staff still active, and nothing would ask again for ten minutes
    await sync_to_async(deactivate_in_open_transaction)()
    still_open = await socket.receive_nothing(timeout=QUIET)
    await sync_to_async(block.__exit__)(None, None, None)

    # then
    assert still_open
    assert await close_code(socket) == CLOSE_UNAUTHENTICATED
    await socket.disconnect()


# --- the periodic re-check (no signal at all) ----------------------------------------------------------------


def _deactivate_by_update(users, client: Client) -> None:
    User.objects.filter(pk=users.staff.pk).update(is_active=False)


def _delete_session_row(users, client: Client) -> None:
    Session.objects.filter(session_key=client.session.session_key).delete()


def _expire_session(users, client: Client) -> None:
    Session.objects.filter(session_key=client.session.session_key).update(
        expire_date=timezone.now() - timedelta(seconds=1)
    )


@pytest.mark.parametrize(
    "change",
    [_deactivate_by_update, _delete_session_row, _expire_session],
    ids=["QuerySet.update", "session row deleted", "session expired"],
)
async def test_a_change_that_sends_no_signal_closes_the_socket_at_the_next_recheck(users, fast_recheck, change) -> None:
    """No push is sent; the socket's own re-check (every 0.5 s here) closes it with 4401 within seconds."""
    # given
    client, socket = await signed_in_socket(users.staff)

    # when
    await sync_to_async(change)(users, client)

    # then
    assert await close_code(socket) == CLOSE_UNAUTHENTICATED
    await socket.disconnect()


async def test_a_membership_row_deleted_directly_stops_the_groups_events_at_the_next_recheck(
    users, fast_recheck
) -> None:
    """The through row is deleted with a QuerySet (no m2m_changed): the re-check leaves group.<approvers>."""
    # given
    socket = await connected(users.staff)
    probe = await Probe().join(f"group.{users.approvers.pk}")

    # when
    await sync_to_async(User.groups.through.objects.filter(user=users.staff, group=users.approvers).delete)()

    # then
    await access_changed(socket)
    await task_opened_reaches_probe_not_socket(users, socket, probe)
    await socket.disconnect()


def _rename_managers(users) -> None:
    users.managers.name = "former managers"
    users.managers.save()


def _demote_admin(users) -> None:
    users.admin.is_superuser = False
    users.admin.save()


@pytest.mark.parametrize(
    ("who", "change"),
    [("manager", _rename_managers), ("admin", _demote_admin)],
    ids=["the managers group renamed", "a superuser demoted"],
)
async def test_a_lost_manager_role_ends_an_instance_subscription_at_once(users, push_only, who, change) -> None:
    """The manager role comes from the group's name or the superuser flag: changing either reaches the socket
    at once (a group's name is authority here, so renaming one is a change of its members' access)."""
    # given: staff's expense, followed by someone who sees it only through the manager role
    instance = await sync_to_async(start_expense)(users.staff)
    socket = await connected(getattr(users, who))
    await socket.send_json_to({"subscribe": "instance", "id": instance.pk})
    assert await socket.receive_json_from(timeout=EVENT_TIMEOUT) == {"type": "subscribed", "instance": instance.pk}
    probe = await Probe().join(f"instance.{instance.pk}")

    # when
    await sync_to_async(change)(users)

    # then
    await access_changed(socket)
    await sync_to_async(instance_cancel)(instance.pk, actor=Actor.of(users.staff), reason="wrong amount")
    assert (await probe.receive(lambda e: e["type"] == "instance.changed"))["instance"] == instance.pk
    assert await socket.receive_nothing(timeout=QUIET)
    await socket.disconnect()


async def test_an_event_still_in_flight_for_a_group_the_socket_has_left_is_not_forwarded(users, push_only) -> None:
    """An event read from Redis just before the socket left its group (or while a re-check was leaving it) is
    still delivered to the socket's channel: each event names the groups it was sent to, and a socket forwards it
    only while it is in one of them."""
    # given: staff has left the approvers; an event to the approvers is on its way to staff's channel
    socket = await connected(users.staff)
    approvers = f"group.{users.approvers.pk}"
    probe = await Probe().join(approvers)
    await sync_to_async(_remove_forward)(users)
    await access_changed(socket)
    layer = channel_layers[DEFAULT_CHANNEL_LAYER]

    # when
    await sync_to_async(send_now)([approvers], {"type": "task.opened", "task": 1, "title": "Approve: secret"})
    sent = await asyncio.wait_for(layer.receive(probe.channel), EVENT_TIMEOUT)
    await layer.group_send(f"user.{users.staff.pk}", sent)  # as if it had reached staff's channel in flight

    # then
    assert sent["groups"] == [approvers]
    assert await socket.receive_nothing(timeout=QUIET)
    await socket.disconnect()
