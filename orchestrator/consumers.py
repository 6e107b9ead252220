"""The one websocket: it authenticates, joins the groups derived from the user, and forwards events.

It never writes. Groups come from who the user is (``user.<id>``, ``group.<id>``, ``ops``), never from the
URL; an instance page may subscribe to ``instance.<id>`` only after the same access check as the page.

Authority is not decided once at connect: the socket re-checks its session and its user (still signed in,
still active, which groups and instances now) when told to (``baton.recheck``, sent by orchestrator/live_access.py
when a session ends or a user, group or permission changes) and every ``BATON_LIVE_RECHECK`` seconds, so a
missed message is healed within that bound. It leaves the groups no longer allowed, and closes with 4401 when the
session or the user is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from importlib import import_module
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django.contrib.auth import get_user
from django.http import HttpRequest

from orchestrator import live_names, livecount
from orchestrator.ports import human_tasks_or_none
from orchestrator.realtime import remember_server_loop, session_digest
from orchestrator.selectors import can_view_all_instances, instance_for_user

logger = logging.getLogger(__name__)

# 4401/4403 mirror HTTP 401/403 in the websocket close-code range reserved for applications. 4401 also ends a
# socket whose session was signed out or whose user was deactivated or deleted.
CLOSE_UNAUTHENTICATED = 4401
# Too many sockets of one person on this process (HTTP 429's counterpart).
CLOSE_TOO_MANY = 4429
# The only message a client sends is {"subscribe": "instance", "id": N}; anything longer is not one.
MAX_FRAME_CHARS = 1024
# Each followed instance is checked again on every re-check; a page follows one.
MAX_INSTANCE_SUBSCRIPTIONS = 20
# Sockets one person may hold open on one web process (tabs of every browser they use): each re-checks on the
# process's one database thread, so sockets without end would delay everyone's re-checks.
MAX_SOCKETS_PER_USER = 30
# Open sockets per user id in this process: ``livecount.open_sockets`` (it counts them for /metrics).
# The largest id a row can have (PostgreSQL bigint): anything above names nothing.
MAX_ROW_ID = 2**63 - 1
# A page asks once per connection; these bound the access checks one socket can cause.
SUBSCRIBE_BURST = 10
SUBSCRIBE_REFILL_SECONDS = 2.0


class Allowance:
    """A token bucket: ``burst`` actions at once, then one more every ``refill_seconds`` (monotonic clock)."""

    def __init__(self, burst: int, refill_seconds: float) -> None:
        self.burst, self.refill_seconds = burst, refill_seconds
        self.tokens = float(burst)
        self.at = time.monotonic()

    def take(self) -> bool:
        """Spend one token if there is one; False (and nothing spent) when the bucket is empty."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) / self.refill_seconds)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


def groups_for_user(user: Any) -> list[str]:
    """The groups a signed-in user listens to."""
    groups = [live_names.user_group(user.pk)] + [
        live_names.people_group(gid) for gid in user.groups.values_list("pk", flat=True)
    ]
    if can_view_all_instances(user):
        groups.append(live_names.OPS_GROUP)
    return groups


def instance_group_if_allowed(user: Any, instance_id: int) -> str | None:
    """``instance.<id>`` if ``user`` may see that instance (the instance page's rule), else None."""
    seen = instance_for_user(user, instance_id, with_data=False)  # the access check only: leave megabytes unread
    return live_names.instance_group(instance_id) if seen is not None else None


def counts_for(user: Any) -> dict[str, int]:
    """The navigation counts pushed to ``user``'s pages (the human side's, through the engine's port); empty
    when no app registered one."""
    people = human_tasks_or_none()
    return people.live_counts(user) if people is not None else {}


def allowed_now(session_key: str | None, user_id: int, instance_ids: list[int]) -> tuple[Any, list[str]] | None:
    """Who the socket's session belongs to now, and the groups that person may listen to now.

    ``session_key`` is the key the socket was opened with, ``user_id`` the user it was opened for, and
    ``instance_ids`` the instances it follows. Returns ``(user, groups)``, or None when the session has ended
    (signed out, expired, password changed), now belongs to someone else, or the user is inactive or deleted:
    the same answer ``django.contrib.auth.get_user`` gives an HTTP request carrying that session.
    """
    if not session_key:
        return None
    request = HttpRequest()
    request.session = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    user = get_user(request)
    if not user.is_authenticated or user.pk != user_id or not user.is_active:
        return None
    groups = groups_for_user(user)
    for instance_id in instance_ids:
        group = instance_group_if_allowed(user, instance_id)
        if group is not None:
            groups.append(group)
    return user, groups


async def _publish_count(*, force: bool = False) -> None:
    """This process's open sockets for /metrics (orchestrator/livecount.py); a Redis fault is logged, never raised
    into the socket's life."""
    try:
        await asyncio.to_thread(livecount.publish, force=force)
    except Exception:
        logger.warning("live socket: could not publish the open sockets' count", exc_info=True)


class LiveConsumer(AsyncJsonWebsocketConsumer):
    """Pushes "something changed" events to the pages of one signed-in user."""

    groups_joined: list[str]

    async def connect(self) -> None:
        remember_server_loop(asyncio.get_running_loop())
        user = self.scope.get("user")
        self.groups_joined = []
        self.instance_ids: list[int] = []
        self.gone = False
        self.rechecker: asyncio.Task[None] | None = None
        # Group membership changes only under this lock: re-checks and subscriptions run concurrently.
        self.groups_lock = asyncio.Lock()
        self.subscribe_allowance = Allowance(SUBSCRIBE_BURST, SUBSCRIBE_REFILL_SECONDS)
        if user is None or not user.is_authenticated:
            # Accepted only to be closed with the reason: a refused handshake reaches the page as 1006, which it
            # cannot tell from a network fault, so a page whose session ended while its socket was down would retry
            # for ever. The Origin was checked before this (another site's page still gets a refused handshake).
            await self.accept()
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        session = self.scope.get("session")
        self.session_key: str | None = getattr(session, "session_key", None)
        self.session_digest = session_digest(self.session_key) if self.session_key else None
        self.user_id = user.pk
        if len(livecount.open_sockets[user.pk]) >= MAX_SOCKETS_PER_USER:
            logger.warning("live socket: user %s already has %s sockets open here", user.pk, MAX_SOCKETS_PER_USER)
            await self.close(code=CLOSE_TOO_MANY)
            return
        livecount.open_sockets[user.pk].add(self)
        self.groups_joined = await database_sync_to_async(groups_for_user)(user)
        for group in self.groups_joined:
            await self.channel_layer.group_add(group, self.channel_name)
        await self.accept()
        # The counts ride on the hello: whatever changed while this page had no socket (a server restart, an event
        # pub/sub dropped) reached it as no event, and its list's resync re-fetches rows, not the badges.
        counts = await database_sync_to_async(counts_for)(user)
        await self.send_json({"type": "hello", "groups": len(self.groups_joined), "counts": counts})
        self.rechecker = asyncio.create_task(self.recheck_periodically())
        await _publish_count(force=True)

    async def disconnect(self, code: int) -> None:
        self.gone = True
        user_id: int | None = getattr(self, "user_id", None)  # None: closed before it was counted
        if user_id is not None and user_id in livecount.open_sockets:
            livecount.open_sockets[user_id].discard(self)
            if not livecount.open_sockets[user_id]:
                del livecount.open_sockets[user_id]
            await _publish_count(force=True)
        rechecker = getattr(self, "rechecker", None)
        if rechecker is not None:
            # Stopped before leaving the groups: a re-check cut off later could join one after we left.
            rechecker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await rechecker
        for group in getattr(self, "groups_joined", []):
            await self.channel_layer.group_discard(group, self.channel_name)
        self.groups_joined = []

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any) -> None:
        """A frame from the page: one bad frame (binary, not JSON, too long, too deep) is answered, never fatal."""
        if text_data is None or len(text_data) > MAX_FRAME_CHARS:
            await self.send_json({"type": "error", "message": "Send one short JSON object."})
            return
        try:
            content = json.loads(text_data)
        except (ValueError, RecursionError):
            await self.send_json({"type": "error", "message": "That frame is not JSON."})
            return
        try:
            await self.receive_json(content)
        except Exception:
            logger.exception("live socket: a client frame failed")
            await self.send_json({"type": "error", "message": "That request failed."})

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        """What a client may ask: its counts afresh (``{"ask": "counts"}``, sent by the page's periodic resync), or
        to follow one instance it is allowed to see. Every request is answered.

        The id must be a JSON integer that can be a row's id (not a string, a float, a boolean or a list): what
        the page sends. An instance already followed is confirmed without asking the database (the re-check keeps
        it honest); asking about others is limited to SUBSCRIBE_BURST requests, then one per
        SUBSCRIBE_REFILL_SECONDS, so a flood of frames cannot turn into a flood of queries.
        """
        if isinstance(content, dict) and content.get("ask") == live_names.COUNTS and len(content) == 1:
            await self._send_counts()
            return
        if not isinstance(content, dict) or content.get("subscribe") != "instance":
            await self.send_json({"type": "error", "message": "Unknown request."})
            return
        instance_id = content.get("id")
        if type(instance_id) is not int or not 0 < instance_id <= MAX_ROW_ID:
            await self.send_json({"type": "error", "message": "Not found."})
            return
        async with self.groups_lock:
            if self.gone:
                return
            group = live_names.instance_group(instance_id)
            if group not in self.groups_joined:
                if not self.subscribe_allowance.take():
                    await self.send_json({"type": "error", "message": "Too many requests: try again later."})
                    return
                if await database_sync_to_async(instance_group_if_allowed)(self.scope["user"], instance_id) is None:
                    await self.send_json({"type": "error", "message": "Not found."})
                    return
                if len(self.instance_ids) >= MAX_INSTANCE_SUBSCRIPTIONS:
                    await self.send_json({"type": "error", "message": "Too many instances followed."})
                    return
                self.groups_joined.append(group)
                self.instance_ids.append(instance_id)
                await self.channel_layer.group_add(group, self.channel_name)
        await self.send_json({"type": "subscribed", "instance": instance_id})

    async def _send_counts(self) -> None:
        """Answer ``{"ask": "counts"}`` with the user's counts read now; asks share the subscriptions' allowance, so
        a flood of them is not a flood of queries."""
        async with self.groups_lock:
            if self.gone:
                return
            if not self.subscribe_allowance.take():
                await self.send_json({"type": "error", "message": "Too many requests: try again later."})
                return
            counts = await database_sync_to_async(counts_for)(self.scope["user"])
        await self.send_json({"type": live_names.COUNTS, "counts": counts})

    async def baton_event(self, message: dict[str, Any]) -> None:
        """Forward one event, if this socket is still in a group it was sent to (realtime.send_now names them).

        A socket that has just left a group (a re-check) can still find that group's event in its queue: read from
        Redis before the unsubscribe, or dispatched while the re-check was leaving.
        """
        if self.gone or not self._addressed(message):
            return
        event = dict(message["event"])
        if live_names.COUNTS in event.get("refresh", ()):
            # Counts are per user, so each socket asks for its own rather than trusting the sender.
            event["counts"] = await database_sync_to_async(counts_for)(self.scope["user"])
            if self.gone or not self._addressed(message):
                return  # a re-check ended the socket or left the group while the counts were read
        await self.send_json(event)

    def _addressed(self, message: dict[str, Any]) -> bool:
        groups = message.get("groups")
        if groups is None:
            return True  # sent by a process of the previous release, which did not name its groups
        return any(group in self.groups_joined for group in groups)

    async def baton_recheck(self, message: dict[str, Any]) -> None:
        """Something about this user's authority changed (orchestrator/live_access.py): check it now."""
        ended = message.get("ended_session")
        if ended is not None and ended == self.session_digest:
            await self.end()
            return
        await self.recheck()

    async def recheck_periodically(self) -> None:
        """Re-check every BATON_LIVE_RECHECK seconds, so a lost or never-sent recheck message is healed."""
        period = float(settings.BATON_LIVE_RECHECK)
        # A random first wait spreads the sockets of a restarted server over the period.
        await asyncio.sleep(period * random.uniform(0.5, 1.0))
        while not self.gone:
            try:
                await self.recheck()
            except asyncio.CancelledError:
                raise
            except Exception:
                # The database or Redis is away: the HTTP pages fail as well; try again next period.
                logger.warning("live socket: re-check of user %s failed", self.user_id, exc_info=True)
            await _publish_count()
            await asyncio.sleep(period)

    async def recheck(self) -> None:
        """Leave the groups the user may no longer listen to and join new ones; close if the user is gone."""
        async with self.groups_lock:
            if self.gone:
                return
            now = await database_sync_to_async(allowed_now)(self.session_key, self.user_id, list(self.instance_ids))
            if now is None:
                await self.end(locked=True)
                return
            user, groups = now
            self.scope["user"] = user
            left = [g for g in self.groups_joined if g not in groups]
            joined = [g for g in groups if g not in self.groups_joined]
            for group in left:
                await self.channel_layer.group_discard(group, self.channel_name)
            for group in joined:
                await self.channel_layer.group_add(group, self.channel_name)
            self.instance_ids = [i for i in self.instance_ids if live_names.instance_group(i) in groups]
            self.groups_joined = groups
        if left or joined:
            # The page may show what is no longer the user's (or miss what now is): re-fetch the inbox and counts.
            counts = await database_sync_to_async(counts_for)(user)
            await self.send_json({"type": live_names.ACCESS_CHANGED, "refresh": [live_names.INBOX], "counts": counts})

    async def end(self, *, locked: bool = False) -> None:
        """The session or the user is gone: forward nothing more, leave every group, close with 4401."""
        self.gone = True
        if not locked:
            async with self.groups_lock:
                await self._leave_all()
        else:
            await self._leave_all()
        await self.close(code=CLOSE_UNAUTHENTICATED)

    async def _leave_all(self) -> None:
        for group in self.groups_joined:
            await self.channel_layer.group_discard(group, self.channel_name)
        self.groups_joined = []
