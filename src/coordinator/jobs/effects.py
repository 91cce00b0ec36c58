"""The built-in after-commit effects of a job transition: metrics, capacity, output sink, dispatch wake-up."""

from __future__ import annotations

from dataclasses import replace

import structlog

from coordinator.jobs import moves, rules, wiring
from coordinator.jobs.hooks import Hook, TransitionResult
from coordinator.runtime import Runtime
from coordinator.telemetry import context, metrics

log = structlog.get_logger(__name__)


def transition_event(result: TransitionResult) -> str | None:
    """The log event of a transition (`job.started`, `job.succeeded`, `job.requeued`…); None for those
    logged where they happen (`job.submitted` at submit, `job.assigned` at publish)."""
    if result.from_state is None or result.to_state == rules.ASSIGNED:
        return None
    if result.to_state == rules.RUNNING:
        return "job.started"
    if result.to_state == rules.QUEUED:
        return "job.requeued"
    return f"job.{result.to_state}"


def builtin_hooks(runtime: Runtime) -> dict[str, Hook]:
    """The built-in after-commit hooks by name (`jobs/moves.py` says which moves run which); built once
    per process by `app.build_runtime` (`runtime.builtin_hooks`, with `batches.advance_hook`)."""

    async def count(result: TransitionResult) -> None:
        metrics.job_transitions.labels(
            from_state=result.from_state or "submitted", to_state=result.to_state
        ).inc()
        event = transition_event(result)
        if event is not None:
            with context.bind(job_id=result.job_id, host_id=result.host_id or result.released_host_id):
                log.info(event, from_state=result.from_state, to_state=result.to_state, error=result.error)

    async def free_capacity(result: TransitionResult) -> None:
        if result.released_host_id is not None:
            runtime.fleet.release(result.released_host_id)

    async def tell_output(result: TransitionResult) -> None:
        ref = await wiring.job_ref(runtime, result)
        if result.move == moves.ASSIGN.name and result.attempt == 1:
            ref = replace(ref, new_stream=True)  # its first assignment: no event is stored yet
        sink = runtime.output
        if rules.is_terminal(result.to_state):
            credits = result.credits or 0.0  # a batch parent's money is its children's
            await sink.on_terminal(ref, result.to_state, result.error, result.usage, credits)
        else:
            await sink.on_status(ref, rules.public_status(result.to_state))

    async def wake_dispatch(result: TransitionResult) -> None:
        if runtime.dispatcher is not None:
            runtime.dispatcher.wake()
        bus = runtime.bus
        if bus is not None:
            await bus.wake_dispatchers()

    async def tell_account(result: TransitionResult) -> None:
        """`user:<id>` events: the job's new status, and the balance after a charge or a refund."""
        from coordinator import account_events

        await account_events.job_updated(
            runtime, result.user_id, result.job_id, rules.public_status(result.to_state)
        )
        if result.from_state is None or rules.is_terminal(result.to_state):
            await account_events.credits_changed(runtime, result.user_id, result.balance)

    async def cancel_on_island(result: TransitionResult) -> None:
        """CancelJob to the Island, when the coordinator (not the Island) ended the job."""
        move = moves.MOVES[result.move]
        bus = runtime.bus
        released = result.released_host_id
        if (
            bus is not None
            and released is not None
            and moves.tells_island(move, reported_by=result.reported_by, released=released)
        ):
            await wiring.best_effort(
                bus.publish_cancel(released, result.job_id), "publish_cancel", result.job_id
            )

    return {
        moves.METRICS: count,
        moves.FREE_CAPACITY: free_capacity,
        moves.TELL_OUTPUT: tell_output,
        moves.WAKE_DISPATCHER: wake_dispatch,
        moves.TELL_ACCOUNT: tell_account,
        moves.CANCEL_ON_ISLAND: cancel_on_island,
    }
