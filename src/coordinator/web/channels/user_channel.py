"""`user:<user_id>`: account events for the web pages (`job_updated`, `credits`, `island_updated`)."""

from __future__ import annotations

from typing import Any

from coordinator.account_events import user_topic
from coordinator.pubsub import SubscriberOverflow, Subscription
from coordinator.web.channels import protocol as wire
from coordinator.web.channels.socket import Channel, JoinRefused


class UserChannel(Channel):
    kind = "user"

    sub: Subscription | None = None

    async def join(self, payload: dict[str, Any]) -> dict[str, Any]:
        principal = self.identity.principal
        if principal is None:
            raise JoinRefused(wire.UNAUTHORIZED)
        _, raw_id = wire.topic_kind(self.topic)
        if not raw_id.isdigit():
            raise JoinRefused(wire.FORBIDDEN)
        if int(raw_id) != principal.user.id and not principal.is_admin:
            raise JoinRefused(wire.FORBIDDEN)
        # Subscribe before answering: nothing published after the join reply is missed.
        self.sub = self.runtime.pubsub.subscribe(user_topic(int(raw_id)))
        return {}

    async def after_join(self) -> None:
        self.spawn(self._forward)

    async def _forward(self) -> None:
        hub = self.runtime.pubsub
        while True:
            assert self.sub is not None
            try:
                event = await self.sub.get()
            except SubscriberOverflow:  # fell behind: these are "refresh" hints, keep going
                self.sub = hub.subscribe(self.sub.topic)
                continue
            if event is not None:
                body = event.payload
                await self.push(str(body.get("event")), dict(body.get("payload") or {}))

    async def terminate(self) -> None:
        await super().terminate()
        if self.sub is not None:
            self.sub.close()
