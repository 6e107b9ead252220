"""The one websocket: it authenticates, joins the groups derived from the user, and forwards events.

It never writes. Groups come from who the user is (``user.<id>``, ``group.<id>``, ``ops``), never from the
URL; an instance page may subscribe to ``instance.<id>`` only after the same access check as the page.
"""

from __future__ import annotations

import asyncio
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from orchestrator.realtime import remember_server_loop

# 4401/4403 mirror HTTP 401/403 in the websocket close-code range reserved for applications.
CLOSE_UNAUTHENTICATED = 4401


def groups_for_user(user: Any) -> list[str]:
    """The groups a signed-in user listens to."""
    from orchestrator.selectors import can_view_all_instances

    groups = [f"user.{user.pk}"] + [f"group.{gid}" for gid in user.groups.values_list("pk", flat=True)]
    if can_view_all_instances(user):
        groups.append("ops")
    return groups


def instance_group_if_allowed(user: Any, instance_id: int) -> str | None:
    from orchestrator.selectors import instance_for_user

    return f"instance.{instance_id}" if instance_for_user(user, instance_id) is not None else None


def counts_for(user: Any) -> dict[str, int]:
    from approvals.selectors import inbox_counts

    return inbox_counts(user, fresh=True)


class LiveConsumer(AsyncJsonWebsocketConsumer):
    """Pushes "something changed" events to the pages of one signed-in user."""

    groups_joined: list[str]

    async def connect(self) -> None:
        remember_server_loop(asyncio.get_running_loop())
        user = self.scope.get("user")
        self.groups_joined = []
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        self.groups_joined = await database_sync_to_async(groups_for_user)(user)
        for group in self.groups_joined:
            await self.channel_layer.group_add(group, self.channel_name)
        await self.accept()
        await self.send_json({"type": "hello", "groups": len(self.groups_joined)})

    async def disconnect(self, code: int) -> None:
        for group in getattr(self, "groups_joined", []):
            await self.channel_layer.group_discard(group, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        """The only thing a client may ask: follow one instance it is allowed to see."""
        if not isinstance(content, dict) or content.get("subscribe") != "instance":
            return
        try:
            instance_id = int(str(content.get("id")))
        except (TypeError, ValueError):
            return
        group = await database_sync_to_async(instance_group_if_allowed)(self.scope["user"], instance_id)
        if group is None:
            await self.send_json({"type": "error", "message": "Not found."})
            return
        if group not in self.groups_joined:
            self.groups_joined.append(group)
            await self.channel_layer.group_add(group, self.channel_name)
        await self.send_json({"type": "subscribed", "instance": instance_id})

    async def baton_event(self, message: dict[str, Any]) -> None:
        event = dict(message["event"])
        if "counts" in event.get("refresh", ()):
            # Counts are per user, so each socket asks for its own rather than trusting the sender.
            event["counts"] = await database_sync_to_async(counts_for)(self.scope["user"])
        await self.send_json(event)
