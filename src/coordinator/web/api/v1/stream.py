"""`GET /api/v1/jobs/{id}/stream`: the job's events as Server-Sent Events (client-api §7)."""

from __future__ import annotations

from fastapi import Depends, Request
from starlette.responses import StreamingResponse

from coordinator.accounts.service import Principal
from coordinator.jobs import service as jobs
from coordinator.telemetry import context
from coordinator.web.auth import get_runtime, require_read
from coordinator.web.errors import error_responses
from coordinator.web.routing import ApiRouter
from coordinator.web.sse import job_stream_body, sse_response

router = ApiRouter(tags=["jobs"])


@router.get(
    "/api/v1/jobs/{job_id}/stream",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}, **error_responses(401, 403, 404, 429)},
)
async def stream_job(
    job_id: str, request: Request, principal: Principal = Depends(require_read)
) -> StreamingResponse:
    """Replay every event of the caller's job, then follow it live; closes after `done` or `error`."""
    runtime = get_runtime(request)
    found, maybe_terminal = await jobs.stream_access(runtime, principal.user, job_id)
    context.add(job_id=found)  # the stream's lines (it runs in a task copied from this context) too
    return sse_response(job_stream_body(runtime, found, maybe_terminal=maybe_terminal))
