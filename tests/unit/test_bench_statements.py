"""The statement-log count of the `statements` benchmark: what it counts as a statement and a transaction."""

from __future__ import annotations

from coordinator.benchmarks.statements import BENCH_APP, count_log


def test_statements_transactions_and_shapes_are_counted_per_backend_without_the_benchmarks_own() -> None:
    lines = [
        "stmt||11|05:00:01 [11] LOG:  statement: BEGIN",
        "stmt||11|05:00:02 [11] LOG:  execute <unnamed>: UPDATE jobs SET state = 'running'",
        "\tWHERE id = $1",  # the continuation of a multi-line statement is not a statement
        "stmt||12|05:00:03 [12] LOG:  execute _pg3_0: SELECT 1",  # autocommit: its own tx
        "stmt||11|05:00:04 [11] LOG:  statement: COMMIT",
        f"stmt|{BENCH_APP}|13|05:00:05 [13] LOG:  execute <unnamed>: SELECT state FROM jobs",
        "stmt||11|05:00:06 [11] LOG:  duration: 0.1 ms",
    ]
    statements, transactions, shapes = count_log(lines)
    assert (statements, transactions) == (4, 2)
    assert shapes["SELECT 1"] == 1 and shapes["BEGIN"] == 1 and shapes["COMMIT"] == 1
    assert shapes["UPDATE jobs SET state = 'running' WHERE id = $1"] == 1  # its lines joined
    assert not any("state FROM jobs" in s for s in shapes)
