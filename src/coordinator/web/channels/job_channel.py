"""`job:<job_id>` (JobChannel): the owner's job stream — the SSE events, replayed then live, with `seq`.

The events come from the same replay-then-live reader as `GET /jobs/{id}/stream` (`web/sse.py`), so a
consumer on any replica sees every event once, in order. Unlike SSE the channel stays open after the
final event, until the client leaves."""

from __future__ import annotations

import uuid
from typing import Any

from coordinator.errors import NotFound
from coordinator.jobs import rules
from coordinator.jobs import service as jobs
from coordinator.jobs.views import public_job
from coordinator.web.channels import protocol as wire
from coordinator.web.channels.socket import Channel, JoinRefused
from coordinator.web.sse import job_event_batches, replay


def after_seq_of(payload: dict[str, Any]) -> int:
    value = payload.get("after_seq", 0)
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise JoinRefused(wire.INVALID)
    return value


class JobChannel(Channel):
    kind = "job"

    job_id: uuid.UUID
    terminal_at_join = False
    after = 0

    async def join(self, payload: dict[str, Any]) -> dict[str, Any]:
        principal = self.identity.principal
        if principal is None:
            raise JoinRefused(wire.UNAUTHORIZED)
        if "read" not in principal.scopes:
            raise JoinRefused(wire.FORBIDDEN)
        self.after = after_seq_of(payload)
        _, raw_id = wire.topic_kind(self.topic)
        try:
            async with self.runtime.db.read() as session:
                job, slug = await jobs.get_job(session, principal.user, raw_id)
                position = await jobs.queue_position(session, job)
        except NotFound:
            # Unknown ids and other accounts' jobs get the same answer: ids cannot be probed.
            raise JoinRefused(wire.FORBIDDEN) from None
        self.job_id = job.id
        self.terminal_at_join = rules.is_terminal(job.state)
        return {"job": public_job(job, slug, queue_position=position)}

    async def after_join(self) -> None:
        self.spawn(self._stream)

    async def _stream(self) -> None:
        if (
            self.terminal_at_join
            and self.after > 0
            and not await replay(self.runtime, self.job_id, self.after)
        ):
            return  # a finished job whose every event the client already has
        batches = job_event_batches(
            self.runtime, self.job_id, maybe_terminal=self.terminal_at_join, after=self.after
        )
        async for batch in batches:
            for event in batch:  # an empty batch is SSE's keep-alive tick: the socket has heartbeats
                # The SSE payload (always an object with `type`), encoded once, plus its position.
                body = f'{event.encoded[:-1]},"seq":{event.position}}}'
                await self.push_raw(str(event.payload.get("type", "event")), body)

    async def handle_in(self, event: str, payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        if event != "cancel":
            return await super().handle_in(event, payload)
        principal = self.identity.principal
        assert principal is not None  # joined
        if "write" not in principal.scopes:
            return "error", {"reason": wire.FORBIDDEN}
        job, _ = await jobs.cancel_job(self.runtime, principal.user, str(self.job_id))
        status = rules.public_status(job.state)
        if job.state != rules.CANCELLED:
            return "error", {"reason": "not_cancellable", "status": status}
        return "ok", {"status": status}
