"""Correlation ids on every log line: bind them once, carry them across HTTP, NATS and background jobs.

    with context.bind(job_id=job.id, host_id=host.id):   # every log line inside carries both
        ...
    await nc.publish(subject, data, headers=context.nats_headers())   # ids travel with the message
    with context.bind_from_nats(msg, host_id=host_id):    # ...and come back on the other side
        ...
    await task.defer_async(workload_id=5, **context.job_kwargs())    # into a procrastinate job

Ids live in one context variable (a mapping, replaced on every bind), so they follow the asyncio task (and
tasks it creates) and never leak into another request or job; `merge_ids` is the log processor that puts
them on every line. (structlog's own contextvars cost three scans of the whole context per bind, and a
bind happens for every NATS message.)"""

from __future__ import annotations

import contextvars
import re
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType
from typing import Any

# The correlation ids, and the NATS header each one travels in.
HEADERS = {
    "request_id": "X-Request-ID",
    "job_id": "X-Job-ID",
    "host_id": "X-Host-ID",
    "workload_id": "X-Workload-ID",
    "user_id": "X-User-ID",
}
KEYS = tuple(HEADERS)

# What we accept from outside (HTTP and NATS headers): short, printable, no spaces, no log injection.
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:/+=@-]{1,128}$")


def new_request_id() -> str:
    return uuid.uuid4().hex


def clean_id(value: object) -> str | None:
    """The id as a string if it is safe to log and forward, else None."""
    if value is None:
        return None
    text = str(value)
    return text if _SAFE_ID.match(text) else None


# Never mutated: every bind replaces the mapping (so a task's copy of the context keeps its own ids).
_IDS: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar(
    "coordinator_ids", default=MappingProxyType({})
)


def current_ids() -> dict[str, str]:
    """The correlation ids bound right now (only those that are set)."""
    return dict(_IDS.get())


def merge_ids(logger: Any, method_name: str, event_dict: Any) -> Any:
    """structlog processor: the bound ids on the line (what the line names itself wins)."""
    for key, value in _IDS.get().items():
        event_dict.setdefault(key, value)
    return event_dict


@contextmanager
def bind(**ids: object) -> Iterator[dict[str, str]]:
    """Bind correlation ids (None values are skipped) for the block; on exit every binding made inside,
    by this call or by `add`, is undone and the previous ones are back."""
    before = _IDS.get()
    token = _IDS.set({**before, **{k: str(v) for k, v in ids.items() if v is not None}})
    try:
        yield current_ids()
    finally:
        try:
            _IDS.reset(token)
        except ValueError:  # left in another context than it was entered in
            _IDS.set(before)


def add(**ids: object) -> None:
    """Bind more ids for the rest of the enclosing `bind` block (or request): e.g. `user_id` once the
    caller is authenticated, `job_id` once the job row exists."""
    _IDS.set({**_IDS.get(), **{k: str(v) for k, v in ids.items() if v is not None}})


def nats_headers(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """NATS message headers carrying the current ids (merge with `Nats-Msg-Id` etc. via `extra`)."""
    headers = {HEADERS[key]: value for key, value in current_ids().items()}
    if extra:
        headers.update(extra)
    return headers


def ids_from_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    """The correlation ids found in message headers (case-insensitive names, unsafe values dropped)."""
    if not headers:
        return {}
    lowered = {name.lower(): value for name, value in headers.items()}
    found: dict[str, str] = {}
    for key, header in HEADERS.items():
        value = clean_id(lowered.get(header.lower()))
        if value is not None:
            found[key] = value
    return found


@contextmanager
def bind_from_nats(msg: Any, **ids: object) -> Iterator[dict[str, str]]:
    """Bind the ids a NATS message carries in its headers, plus `ids` known from the subject or payload
    (those win), for the block."""
    carried: dict[str, object] = dict(ids_from_headers(getattr(msg, "headers", None)))
    carried.update({k: v for k, v in ids.items() if v is not None})
    with bind(**carried) as bound:
        yield bound


def job_kwargs() -> dict[str, str]:
    """The current ids as keyword arguments for `defer_async(...)`. The task must accept them (declare
    the ones it needs, e.g. `request_id: str | None = None`, or `**ids: str`)."""
    return current_ids()


def ids_from_job(task_kwargs: Mapping[str, Any]) -> dict[str, str]:
    """The correlation ids among a procrastinate job's keyword arguments."""
    found = {key: clean_id(task_kwargs.get(key)) for key in KEYS}
    return {key: value for key, value in found.items() if value is not None}


async def correlate_job(call_next: Callable[[], Awaitable[Any]], context: Any, worker: Any) -> Any:
    """procrastinate worker middleware: every log line of a job carries its task name, its queue job id
    and the correlation ids found in its keyword arguments."""
    job = context.job
    with bind(task=job.task_name, queue_job_id=job.id, **ids_from_job(job.task_kwargs or {})):
        return await call_next()
