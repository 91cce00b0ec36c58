"""Server-side batches over real HTTP (client-api §6): submit, status, merge, fail_fast, cancel."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest_asyncio
from sqlalchemy import text

from tests.factories import make_consumer
from tests.job_support import assert_money_conserved, balance
from tests.stream_support import Stack, assign, finish, parse_like_js, read_raw, stream_stack

CHAT_INPUTS = [{"prompt": "a"}, {"prompt": "b"}, {"prompt": "c"}]


@pytest_asyncio.fixture
async def stack(database_url: str) -> AsyncIterator[Stack]:
    async with stream_stack(database_url) as s:
        yield s


async def submit(stack: Stack, **body: Any) -> dict[str, Any]:
    payload = {"workload": "llm-chat", "inputs": CHAT_INPUTS, "merge_strategy": "concat"}
    payload.update(body)
    response = await stack.http.post("/api/v1/jobs/batch", headers=stack.consumer.headers, json=payload)
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


async def status(stack: Stack, batch_id: str) -> dict[str, Any]:
    response = await stack.http.get(f"/api/v1/jobs/{batch_id}/batch-status", headers=stack.consumer.headers)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def run_child(stack: Stack, child_id: str, output: str, state: str = "succeeded") -> None:
    ref = await assign(stack, uuid.UUID(child_id))
    await stack.accumulator.on_output(ref, 1, output, False)
    if state == "succeeded":
        await stack.accumulator.on_output(ref, 2, "", True)
        await finish(stack, ref)
    else:
        await finish(stack, ref, state, error="Container crash: General error (application failure)")


async def get_job(stack: Stack, job_id: str) -> dict[str, Any]:
    response = await stack.http.get(f"/api/v1/jobs/{job_id}", headers=stack.consumer.headers)
    assert response.status_code == 200
    data: dict[str, Any] = response.json()["data"]
    return data


async def test_submit_returns_a_top_level_batch_job_and_the_parent_is_a_regular_job(stack: Stack) -> None:
    batch = await submit(stack, bid_price="2.5")
    assert batch["data"] == {k: v for k, v in batch.items() if k != "data"}
    assert batch["state"] == "running" and batch["workload"] == "llm-chat"
    assert batch["batch"] == {
        "chunk_count": 3,
        "merge_strategy": "concat",
        "fail_mode": "best_effort",
        "completed": 0,
        "failed": 0,
    }
    assert [(c["batch_index"], c["state"]) for c in batch["children"]] == [
        (0, "queued"),
        (1, "queued"),
        (2, "queued"),
    ]
    assert batch["created_at"].endswith("Z")
    parent = await get_job(stack, batch["id"])
    assert isinstance(parent["workload_id"], int) and parent["status"] == "running"
    assert parent["input"]["inputs_count"] == 3 and parent["input"]["batch"]["bid_price"] == "2.5"
    progress = await status(stack, batch["id"])
    assert progress["parent_id"] == batch["id"] and progress["chunk_count"] == 3
    assert progress["child_states"] == {"queued": 3}
    # Each child is charged its bid; the parent costs nothing.
    assert await balance(stack.runtime, stack.consumer.user.id) == Decimal(10_000) - Decimal("7.5")


async def test_concat_merges_child_outputs_in_batch_order_and_the_parent_completes(stack: Stack) -> None:
    batch = await submit(stack)
    children = {c["batch_index"]: c["id"] for c in batch["children"]}
    for index in (2, 0, 1):  # finishing out of order
        await run_child(stack, children[index], f"out{index}")
    progress = await status(stack, batch["id"])
    assert progress["parent_state"] == "succeeded" and progress["child_states"] == {"succeeded": 3}
    parent = await get_job(stack, batch["id"])
    assert parent["status"] == "completed"
    assert json.loads(parent["output"]) == ["out0", "out1", "out2"]
    # The parent's own stream ends with `done` like any job's.
    _, _, raw = await read_raw(stack.http, f"/api/v1/jobs/{batch['id']}/stream", stack.consumer.headers)
    assert parse_like_js(raw)[-1]["type"] == "done"


async def test_flatten_removes_one_level_and_best_effort_keeps_going_after_a_failure(stack: Stack) -> None:
    batch = await submit(stack, merge_strategy="flatten")
    ids = [c["id"] for c in batch["children"]]
    await run_child(stack, ids[0], "[1,2]")
    await run_child(stack, ids[1], "x", state="failed")
    await run_child(stack, ids[2], "[[3],4]")
    parent = await get_job(stack, batch["id"])
    assert parent["status"] == "completed"
    assert json.loads(parent["output"]) == [1, 2, None, [3], 4]
    progress = await status(stack, batch["id"])
    assert progress["child_states"] == {"succeeded": 2, "failed": 1}
    failed = next(c for c in progress["children"] if c["batch_index"] == 1)
    assert failed["state"] == "failed" and failed["error"].startswith("Container crash")
    await assert_money_conserved(stack.runtime)


async def test_fail_fast_fails_the_parent_and_cancels_the_rest_with_refunds(stack: Stack) -> None:
    batch = await submit(stack, fail_mode="fail_fast")
    ids = [c["id"] for c in batch["children"]]
    await run_child(stack, ids[0], "ok")
    await run_child(stack, ids[1], "x", state="failed")
    progress = await status(stack, batch["id"])
    assert progress["parent_state"] == "failed"
    assert progress["child_states"] == {"succeeded": 1, "failed": 1, "cancelled": 1}
    parent = await get_job(stack, batch["id"])
    assert parent["status"] == "failed" and "batch child 1 failed" in parent["error"]
    # Paid for one success only: two refunds (the failed and the cancelled child).
    assert await balance(stack.runtime, stack.consumer.user.id) == Decimal(10_000) - Decimal(1)
    await assert_money_conserved(stack.runtime)


async def test_max_parallelism_holds_inputs_until_a_slot_frees(stack: Stack) -> None:
    batch = await submit(stack, max_parallelism=1)
    parent_id = uuid.UUID(batch["id"])

    async def child_rows() -> list[tuple[int, str, str]]:
        async with stack.runtime.db.session() as session:
            rows = await session.execute(
                text("SELECT batch_index, state, id FROM jobs WHERE parent_id = :id ORDER BY batch_index"),
                {"id": parent_id},
            )
            return [(int(r[0]), r[1], str(r[2])) for r in rows]

    progress = await status(stack, batch["id"])
    assert progress["child_states"] == {"queued": 3}
    for index in range(3):
        rows = await child_rows()
        # Exactly one child exists unfinished at a time; the next input appears only when it ends.
        assert [r[0] for r in rows] == list(range(index + 1))
        assert [r[1] for r in rows] == ["succeeded"] * index + ["queued"]
        await run_child(stack, rows[-1][2], f"r{index}")
    parent = await get_job(stack, batch["id"])
    assert json.loads(parent["output"]) == ["r0", "r1", "r2"]


async def test_cancelling_the_parent_cancels_its_children(stack: Stack) -> None:
    batch = await submit(stack, max_parallelism=2)
    response = await stack.http.delete(f"/api/v1/jobs/{batch['id']}", headers=stack.consumer.headers)
    assert response.status_code == 200 and response.json()["data"]["status"] == "cancelled"
    progress = await status(stack, batch["id"])
    assert progress["parent_state"] == "cancelled"
    assert progress["child_states"] == {"cancelled": 3}
    assert await balance(stack.runtime, stack.consumer.user.id) == Decimal(10_000)
    await assert_money_conserved(stack.runtime)


async def test_invalid_batches_are_refused_with_nothing_created(stack: Stack) -> None:
    url, headers = "/api/v1/jobs/batch", stack.consumer.headers
    base = {"workload": "llm-chat", "inputs": CHAT_INPUTS}
    for body, field in [
        ({**base, "inputs": []}, "inputs"),
        ({**base, "inputs": [{"prompt": "x"}] * 101}, "inputs"),
        ({**base, "merge_strategy": "zip"}, "merge_strategy"),
        ({**base, "fail_mode": "yolo"}, "fail_mode"),
        ({**base, "bid_price": "abc"}, "bid_price"),
        ({**base, "inputs": [{"prompt": "x"}, {"max_tokens": 3}]}, "inputs.1"),
        ({**base, "inputs": [{"prompt": "x"}, "text"]}, "inputs.1"),
    ]:
        response = await stack.http.post(url, headers=headers, json=body)
        assert response.status_code == 422, (body, response.text)
        assert any(key.startswith(field) for key in response.json()["errors"]), response.json()
    poor = await make_consumer(stack.runtime, "poor@example.com", credits=Decimal(2))
    response = await stack.http.post(url, headers=poor.headers, json=base)
    assert response.status_code == 402
    async with stack.runtime.db.session() as session:
        assert await session.scalar(text("SELECT count(*) FROM jobs")) == 0
    for job_id in (str(uuid.uuid4()), "nope"):
        response = await stack.http.get(f"/api/v1/jobs/{job_id}/batch-status", headers=headers)
        assert response.status_code == 404


async def test_the_last_childs_end_closes_the_parent_in_the_same_transaction(stack: Stack) -> None:
    """The roll-up is an effect of the child's move: rolled back with it, committed with it."""
    from coordinator.jobs import lifecycle, moves

    batch = await submit(stack, inputs=[{"prompt": "only"}])
    child = uuid.UUID(batch["children"][0]["id"])
    await assign(stack, child)
    parent_state = text("SELECT state, output FROM jobs WHERE id = :id")
    inputs = lifecycle.Inputs(host_id=stack.host_id, output='"x"')
    async with stack.runtime.db.session() as session:
        result = await lifecycle.transition_in(session, moves.SUCCEED, child, inputs)
        assert result is not None and [r.move for r in result.then] == ["close_batch_ok"]
        inside = (await session.execute(parent_state, {"id": uuid.UUID(batch["id"])})).one()
        assert tuple(inside) == ("succeeded", '["x"]')
        await session.rollback()  # a crash before commit: neither the child's end nor the parent's close
    async with stack.runtime.db.session() as session:
        after = (await session.execute(parent_state, {"id": uuid.UUID(batch["id"])})).one()
    assert tuple(after) == ("running", None)
    assert (await get_job(stack, str(child)))["status"] == "running"
