"""Every SQL guard on `jobs.state` is rendered from the move table (`jobs/moves.py`), none by hand; and the
lifecycle table in docs/architecture.md is the one the code declares."""

from __future__ import annotations

import re
from pathlib import Path

from coordinator.jobs import moves, rules
from coordinator.jobs import repository as sql

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "coordinator"
STATE_NAMES = "|".join(rules.STATES)
# A job state written as a literal next to a `state` column: `state = 'queued'`, `j.state IN ('assigned',`,
# `state <> 'running'`; and the ORM's `Job.state == …` / `.state.in_(`.
HAND_WRITTEN = [
    re.compile(rf"\bstate\s*(?:=|<>|!=|IN|NOT IN)\s*\(?\s*'(?:{STATE_NAMES})'", re.IGNORECASE),
    re.compile(r"\bstate\s*=\s*ANY\s*\(", re.IGNORECASE),
    re.compile(r"\bJob\.state\s*(?:==|!=|\.in_\()"),
]
# Reads that filter by state for a report (statistics, gauges, quotas, schema history): no move depends
# on them, and none of these files updates `jobs`.
READ_ONLY = {
    "billing/exchange.py": "market statistics",
    "billing/quotas.py": "count of a user's unfinished jobs",
    "telemetry/collectors.py": "queue gauges",
    "hosts/recommendations.py": "demand per Cargo",
    "hosts/network.py": "network statistics",
    "marketplace/catalogue.py": "a Cargo's finished-job check",
    "benchmarks/page_render.py": "benchmark fixture",
    "benchmarks/scenarios.py": "benchmark driver (reads)",
    "benchmarks/stack.py": "benchmark driver (reads)",
    "benchmarks/baselines.py": "the baseline's own bench_queue table",
    "jobs/models.py": "partial-index predicates (as migration 0001 created them)",
}


def hand_written_guards() -> list[str]:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        relative = path.relative_to(SRC).as_posix()
        if relative.startswith("repo/migrations/") or relative in READ_ONLY:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if any(p.search(line) for p in HAND_WRITTEN):
                found.append(f"{relative}:{number}: {line.strip()}")
    return found


def test_no_state_guard_is_written_by_hand() -> None:
    assert hand_written_guards() == [], "render state guards with jobs.moves.guard_sql / states_sql"


def test_the_scan_finds_a_hand_written_guard() -> None:
    assert any(p.search("WHERE id = :id AND state IN ('assigned', 'running')") for p in HAND_WRITTEN)
    assert any(p.search("WHERE j.state = 'queued'") for p in HAND_WRITTEN)
    assert any(p.search("select(Job).where(Job.state.in_(ACTIVE))") for p in HAND_WRITTEN)
    assert not any(p.search("UPDATE hosts SET status = 'online'") for p in HAND_WRITTEN)


def test_the_read_only_files_update_no_jobs() -> None:
    for relative in READ_ONLY:
        text = (SRC / relative).read_text()
        assert "UPDATE jobs" not in text, relative


def test_each_moves_statement_carries_the_moves_guard() -> None:
    statements = {
        moves.START: sql.START_SQL,
        moves.GIVE_BACK: sql.RETRY_PUBLISH_SQL,
        moves.REQUEUE: sql.REQUEUE_SQL,
        moves.ASSIGN: sql.ASSIGN_MANY_SQL,
        **{m: sql.FINISH_SQL[m.target] for m in moves.FINISH_MOVES.values()},
        **{m: sql.CLOSE_BATCH_SQL[m.target] for m in moves.BATCH_CLOSE_MOVES.values()},
    }
    assert set(statements) == set(moves.MOVES.values()) - {moves.SUBMIT, moves.SUBMIT_PLACED}
    for move, statement in statements.items():
        text = statement.text
        assert moves.target_sql(move) in text, move.name
        assert moves.guard_sql(move) in text or moves.guard_sql(move, "state") in text, move.name
    # The sweeps pick their jobs with the guard of the move they apply.
    assert moves.guard_sql(moves.REQUEUE, "state") in sql.EXPIRED_LEASES_SQL.text
    assert moves.guard_sql(moves.TIME_OUT, "j.state") in sql.OVERDUE_SQL.text
    assert moves.guard_sql(moves.ASSIGN, "j.state") in sql.CLAIM_QUEUED_SQL.text


def test_the_guard_renderer_refuses_what_is_not_a_state() -> None:
    assert moves.states_sql(["queued"], "state") == "state = 'queued'"
    assert moves.guard_sql(moves.REQUEUE) == "jobs.state IN ('assigned', 'running')"
    for bad in ([], ["queued'; DROP TABLE jobs; --"], ["pending"]):
        try:
            moves.states_sql(bad)
        except ValueError:
            continue
        raise AssertionError(f"rendered {bad!r}")


def test_the_architecture_doc_has_the_lifecycle_table_of_the_code() -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text()
    assert moves.lifecycle_table() in doc, "regenerate: python -m coordinator.jobs.moves"
