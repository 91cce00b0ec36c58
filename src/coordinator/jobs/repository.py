"""Named SQL of the jobs context: every state change is one guarded UPDATE whose row count is the answer."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import JSONB

from coordinator.billing import exchange, quotas
from coordinator.hosts.service import locked_hosts_sql
from coordinator.jobs import moves, rules
from coordinator.jobs.moves import ASSIGN, GIVE_BACK, LEASED, REQUEUE, START, TIME_OUT, guard_sql, states_sql
from coordinator.karma.service import locked_karma_sql
from coordinator.workloads.rules import MAX_DURATION_BY_TRUST

# Columns every transition returns: enough to build a JobRef and settle money without another read.
RETURNING = """
    RETURNING jobs.id, jobs.user_id, jobs.workload_id, jobs.state, jobs.host_id, jobs.attempt,
              jobs.max_attempts, jobs.budget, jobs.clearing_price, jobs.created_at, jobs.error, jobs.usage,
              jobs.started_at, jobs.completed_at, jobs.parent_id, jobs.batch_config IS NOT NULL AS is_batch
"""


def prompt_chars_sql(alias: str) -> str:
    """Characters of a job's system prompt and prompt (the prompt-token estimate counts them)."""
    return (
        f"length(COALESCE({alias}.input ->> 'system_prompt', '')) "
        f"+ length(COALESCE({alias}.input ->> 'prompt', ''))"
    )


def queue_ahead_sql(created_at: str, select: str = "SELECT count(*)") -> str:
    """The queued jobs ahead of one of `:priority` queued at `created_at` (an SQL expression; their count
    unless `select` says otherwise)."""
    return f"""
        {select} FROM jobs
        WHERE {states_sql([rules.QUEUED], "state")}
          AND (priority > :priority OR (priority = :priority AND created_at < {created_at}))
    """


# Submit in one statement, so in one transaction with no BEGIN or COMMIT: check the cached Cargo is
# current (its revision, see `workloads.catalogue`), price the job (its own budget, else the user's saved
# bid, else the caller's default), apply the quota caps (`billing.quotas.submit_refusal` is the same rule
# and words the refusal from the counts returned here), debit the balance with the ledger's guard
# (`billing.ledger.DEBIT_SQL`), and insert the job and its ledger row only if the debit happened. The
# balance row is locked for this one statement, not for a transaction's round trips.
# `outcome`: ok | stale | quota | insufficient.
_SUBMIT = f"""
    WITH counts AS (
        SELECT
            EXISTS (SELECT 1 FROM workloads WHERE id = :workload_id AND revision = :revision) AS current,
            CASE WHEN CAST(:active_cap AS INTEGER) IS NULL THEN 0 ELSE ({quotas.ACTIVE_JOBS}) END AS active,
            CASE WHEN CAST(:daily_cap AS NUMERIC) IS NULL THEN 0 ELSE ({quotas.SPENT_TODAY}) END AS spent,
            COALESCE(CAST(:explicit AS NUMERIC), ({exchange.SAVED_BID}), CAST(:default AS NUMERIC)) AS price
    ),
    verdict AS (
        SELECT active, spent, price,
               CASE WHEN NOT current THEN 'stale'
                    WHEN active >= CAST(:active_cap AS INTEGER) THEN 'quota'
                    WHEN spent + price > CAST(:daily_cap AS NUMERIC) THEN 'quota'
                    ELSE 'ok' END AS outcome
        FROM counts
    ),
    charge AS (
        UPDATE users SET credits = credits - v.price, updated_at = now()
        FROM verdict v
        WHERE users.id = :user_id AND v.outcome = 'ok' AND users.credits >= v.price
        RETURNING users.credits, v.price
    ),
    job AS (
        INSERT INTO jobs (id, user_id, workload_id, state, input, priority, region, budget, charged,
                          max_attempts, parent_id, batch_index)
        SELECT :id, :user_id, :workload_id, 'queued', :input, :priority, :region, price, price,
               :max_attempts, :parent_id, :batch_index
        FROM charge
        RETURNING created_at
    ),
    ledger AS (
        INSERT INTO transactions (user_id, type, amount, balance_after, job_id, idempotency_key)
        SELECT :user_id, 'charge', -price, credits, :id, :key FROM charge
    )
    SELECT CASE WHEN v.outcome = 'ok' AND NOT EXISTS (SELECT 1 FROM charge) THEN 'insufficient'
                ELSE v.outcome END AS outcome,
           v.price, v.active, v.spent,
           (SELECT credits FROM charge) AS balance,
           (SELECT created_at FROM job) AS created_at,
           CASE WHEN NOT EXISTS (SELECT 1 FROM charge)
                THEN (SELECT credits FROM users WHERE id = :user_id) END AS available,
           ({queue_ahead_sql("now()")}) AS ahead,
           {{direct_host}}
    FROM verdict v
    """
SUBMIT_SQL = text(_SUBMIT.format(direct_host="NULL AS direct_host")).bindparams(
    bindparam("input", type_=JSONB)
)
# The submit that also assigns the job in its transaction (`jobs.dispatcher.Dispatcher.plan_at_submit`,
# `:direct_host` the Island it chose): it locks that Island's row, after the balance's and without waiting
# (a row locked elsewhere is skipped), once the charge happened and only if no queued job is ahead of this
# one, and returns the Island's id when it did. The assignment is the transaction's next statement
# (`ASSIGN_MANY_SQL`), which counts the Island's jobs after the lock.
SUBMIT_AND_LOCK_SQL = text(
    _SUBMIT.format(
        direct_host=f"""(SELECT h.id FROM hosts h
            WHERE h.id = CAST(:direct_host AS uuid) AND EXISTS (SELECT 1 FROM charge)
              AND NOT EXISTS ({queue_ahead_sql("now()", "SELECT 1")})
            FOR NO KEY UPDATE OF h SKIP LOCKED) AS direct_host"""
    )
).bindparams(bindparam("input", type_=JSONB))


# Claims the next queued jobs (priority with ageing, then age); other replicas skip the locked rows. Once
# there is a job to place, the same statement locks the rows of the candidate Islands `island_ids` (after
# the jobs, in id order: `hosts.service.locked_hosts_sql`) and names those that exist (`locked_islands`,
# on every row); their counts of unfinished jobs must be read after the locks, by a statement of its own.
# `fresh_only`: only the jobs not yet told why they wait (`placement.reason`), for a pass that expects to
# place nothing (`Dispatcher.dispatch_batch`).
CLAIM_QUEUED_SQL = text(
    f"""
    WITH claimed AS MATERIALIZED (
        SELECT j.id, j.user_id, j.workload_id, j.input, j.region, j.budget, j.excluded_host_ids,
               j.created_at, j.attempt, w.slug, w.runtime, w.kind, w.required_ram_mb, w.required_vram_mb,
               w.required_cpu_cores, w.platforms, w.cold_start_seconds, w.container_image, w.image_digest,
               w.wasm_url, w.wasm_hash, w.model_url, w.model_hash, w.onnx_task_type, w.trust_level,
               w.price_per_job,
               j.priority + EXTRACT(EPOCH FROM now() - j.created_at) / {rules.AGEING_SECONDS_PER_POINT}
                   AS rank
        FROM jobs j JOIN workloads w ON w.id = j.workload_id
        WHERE {guard_sql(ASSIGN, "j.state")}
          AND (NOT CAST(:fresh_only AS boolean) OR j.placement ->> 'reason' IS NULL)
        ORDER BY rank DESC, j.created_at
        LIMIT :limit
        FOR NO KEY UPDATE OF j SKIP LOCKED
    ),
    islands AS MATERIALIZED ({locked_hosts_sql("CAST(:island_ids AS uuid[])")})
    SELECT claimed.*, ARRAY(SELECT id FROM islands) AS locked_islands
    FROM claimed
    ORDER BY claimed.rank DESC, claimed.created_at
    """
)

# Whether any job is queued (the partial queue index answers it): a pass with nothing to claim costs this
# one statement, not a transaction.
ANY_QUEUED_SQL = text(f"SELECT EXISTS (SELECT 1 FROM jobs WHERE {guard_sql(ASSIGN, 'state')})")

# The coordinator's own count of unfinished jobs per Island (never trusting the Island to refuse).
ACTIVE_PER_HOST_SQL = text(
    f"""
    SELECT host_id, count(*) FROM jobs
    WHERE host_id = ANY(:ids) AND {states_sql(LEASED, "state")}
    GROUP BY host_id
    """
)

# queued → assigned: binds the job to an Island with a lease; the attempt counter counts assignments. The
# Islands' rows are locked already (the claim), so this statement sees every assignment another replica
# committed: it counts each Island's unfinished jobs (`islands`: the pass's locked candidates, returned as
# `active_before`, JSON of id → count, on every row) and assigns a row only while its Island has a slot
# (`slots`, NULL: no cap); the pass's other rows stay queued.
ASSIGN_MANY_SQL = text(
    f"""
    WITH planned AS (
        SELECT u.*, row_number() OVER (PARTITION BY u.host_id ORDER BY u.n) AS k
        FROM unnest(CAST(:ids AS uuid[]), CAST(:host_ids AS uuid[]), CAST(:lease_seconds AS int[]),
                    CAST(CAST(:placements AS text[]) AS jsonb[]), CAST(:clearing_prices AS numeric[]),
                    CAST(:slots AS int[]))
             WITH ORDINALITY AS u(id, host_id, lease_seconds, placement, clearing_price, slots, n)
    ),
    active AS (
        SELECT host_id, count(*) AS n FROM jobs
        WHERE host_id = ANY(CAST(:islands AS uuid[])) AND {states_sql(LEASED, "state")}
        GROUP BY host_id
    ),
    fits AS (
        SELECT planned.* FROM planned LEFT JOIN active ON active.host_id = planned.host_id
        WHERE planned.slots IS NULL OR COALESCE(active.n, 0) + planned.k <= planned.slots
    )
    UPDATE jobs SET {moves.target_sql(ASSIGN)}, host_id = a.host_id, attempt = jobs.attempt + 1,
           assigned_at = now(),
           lease_expires_at = now() + make_interval(secs => a.lease_seconds), placement = a.placement,
           clearing_price = a.clearing_price, updated_at = now(),
           stream_owner = COALESCE(jobs.stream_owner, CAST(:stream_owner AS text))
    FROM fits AS a
    WHERE jobs.id = a.id AND {guard_sql(ASSIGN)}
    """
    + RETURNING
    + f", jobs.stream_owner, {prompt_chars_sql('jobs')} AS prompt_chars,"
    + " (SELECT json_object_agg(host_id, n) FROM active) AS active_before"
)


@dataclass(frozen=True)
class AssignRow:
    """One queued → assigned move of `ASSIGN_MANY_SQL`; `slots`: the Island's capacity (None: no cap)."""

    job_id: uuid.UUID
    host_id: uuid.UUID
    lease_seconds: int
    placement: dict[str, Any] | None = None
    clearing_price: Decimal | None = None
    slots: int | None = None


def assign_many_params(
    rows: Sequence[AssignRow], stream_owner: str | None, islands: Sequence[uuid.UUID] = ()
) -> dict[str, Any]:
    """The parameters of `ASSIGN_MANY_SQL`: the whole dispatch pass in one statement. The stream owner (the
    replica that will produce the jobs' events) is kept if the job already has one (a retry). `islands`:
    whose unfinished jobs to count (the rows' own Islands are always counted)."""
    return {
        "ids": [r.job_id for r in rows],
        "host_ids": [r.host_id for r in rows],
        "lease_seconds": [r.lease_seconds for r in rows],
        "placements": [None if r.placement is None else json.dumps(r.placement) for r in rows],
        "clearing_prices": [r.clearing_price for r in rows],
        "slots": [r.slots for r in rows],
        "islands": list({*islands, *(r.host_id for r in rows)}),
        "stream_owner": stream_owner,
    }


# Why claimed jobs still wait (`placement.reason`), written only when it changed; `since` (the first
# time this stay in the queue was found unplaceable) is kept across changes of reason.
MARK_WAITING_SQL = text(
    f"""
    UPDATE jobs SET placement = a.placement
           || jsonb_build_object('since', COALESCE(jobs.placement -> 'since', to_jsonb(now())))
    FROM unnest(CAST(:ids AS uuid[]), CAST(CAST(:placements AS text[]) AS jsonb[])) AS a(id, placement)
    WHERE jobs.id = a.id AND {guard_sql(ASSIGN)}
      AND (jobs.placement IS NULL
           OR jobs.placement ->> 'reason' IS DISTINCT FROM a.placement ->> 'reason'
           OR jobs.placement ->> 'message' IS DISTINCT FROM a.placement ->> 'message')
    """
)


def mark_waiting_params(waiting: Sequence[tuple[uuid.UUID, dict[str, Any]]]) -> dict[str, Any]:
    return {"ids": [w[0] for w in waiting], "placements": [json.dumps(w[1]) for w in waiting]}


# Queued jobs no Island could take for longer than the unplaceable timeout: they fail with a refund.
UNPLACEABLE_SQL = text(
    f"""
    SELECT id, placement FROM jobs
    WHERE {states_sql([rules.QUEUED], "state")} AND placement ->> 'reason' IS NOT NULL
      AND CAST(placement ->> 'since' AS timestamptz) < now() - make_interval(secs => :timeout)
    ORDER BY created_at
    LIMIT :limit
    FOR NO KEY UPDATE SKIP LOCKED
    """
)

# assigned → queued after a failed AssignJob publish. The attempt still counts (a job whose assignment
# keeps failing to publish is dead-lettered like one whose Islands keep failing it).
RETRY_PUBLISH_SQL = text(
    f"""
    UPDATE jobs SET {moves.target_sql(GIVE_BACK)}, host_id = NULL, assigned_at = NULL,
           lease_expires_at = NULL, placement = NULL, clearing_price = NULL, updated_at = now()
    WHERE id = :id AND {guard_sql(GIVE_BACK, "state")} AND host_id = :host_id AND attempt = :attempt
    """
    + RETURNING
)

# assigned → running on the Island's `started`/`streaming`; any message also extends the lease.
START_SQL = text(
    f"""
    UPDATE jobs SET {moves.target_sql(START)}, started_at = COALESCE(started_at, now()),
           lease_expires_at = GREATEST(lease_expires_at, now() + make_interval(secs => :extend)),
           updated_at = now()
    WHERE id = :id AND host_id = :host_id AND {guard_sql(START, "state")}
    """
    + RETURNING
)

# assigned → running for several jobs at once (the `started` reports of one status pull batch), each only
# by the Island it is assigned to; the rows the guard refused are left out of the answer.
START_MANY_SQL = text(
    f"""
    UPDATE jobs SET {moves.target_sql(START)}, started_at = COALESCE(started_at, now()),
           lease_expires_at = GREATEST(lease_expires_at, now() + make_interval(secs => :extend)),
           updated_at = now()
    FROM unnest(CAST(:ids AS uuid[]), CAST(:host_ids AS uuid[])) AS s(id, host_id)
    WHERE jobs.id = s.id AND jobs.host_id = s.host_id AND {guard_sql(START)}
    """
    + RETURNING
)

# Any accepted message from the assigned Island pushes the lease forward (never backward).
EXTEND_LEASE_SQL = text(
    f"""
    UPDATE jobs SET lease_expires_at = GREATEST(lease_expires_at, now() + make_interval(secs => :extend))
    WHERE id = :id AND host_id = :host_id AND {states_sql(LEASED, "state")}
    """
    + RETURNING
)


# What an ended job costs its consumer: a success pays the clearing price (the budget when there is none),
# never below zero or above the budget; any other end pays nothing (the budget is refunded in full).
_PAID = {
    True: "LEAST(GREATEST(COALESCE(jobs.clearing_price, jobs.budget), 0), jobs.budget)",
    False: "0",
}


def _finish_sql(move: moves.Move) -> Any:
    """→ a terminal state, with the settlement's amounts (`charged`, `refunded`) recorded by the same
    statement; the ledger movements follow in the transaction (`lifecycle.PgStore.settle`), with the
    consumer's balance row locked here (`billing.ledger.CREDIT_CTES`: the lock's own statement saved).
    `host_id` NULL means the coordinator decides (cancel, timeout, dead-letter)."""
    paid = _PAID[move is moves.SUCCEED]
    return text(
        f"""
    UPDATE jobs SET {moves.target_sql(move)}, error = :error, usage = COALESCE(:usage, jobs.usage),
           output = COALESCE(CAST(:output AS text), jobs.output),
           charged = {paid}, refunded = jobs.budget - {paid}, settled_at = now(),
           completed_at = now(), lease_expires_at = NULL, updated_at = now()
    FROM (SELECT id, state AS old_state FROM jobs WHERE id = :id FOR NO KEY UPDATE) AS old
    WHERE jobs.id = old.id AND {guard_sql(move)} AND jobs.settled_at IS NULL
      AND (CAST(:host_id AS uuid) IS NULL OR jobs.host_id = CAST(:host_id AS uuid))
    """
        + RETURNING
        + ", old.old_state, jobs.charged,"
        + " (SELECT owner_id FROM hosts WHERE hosts.id = jobs.host_id) AS host_owner_id,"
        + " (SELECT credits FROM users WHERE users.id = jobs.user_id FOR NO KEY UPDATE) AS balance"
        # A success also locks and reads the Island's karma (after the balance: the order every settling
        # transaction takes them in), for its `job_succeeded` (`karma.service.success_write`).
        + (
            ", (" + locked_karma_sql("jobs.host_id", "jobs.id", "'job_succeeded'") + ") AS karma_state"
            if move is moves.SUCCEED
            else ""
        )
    ).bindparams(bindparam("usage", type_=JSONB))


# One guarded UPDATE per terminal move (succeed, fail, cancel, time_out), by target state.
FINISH_SQL: dict[str, Any] = {m.target: _finish_sql(m) for m in moves.FINISH_MOVES.values()}

# assigned|running → queued after a lost lease or a start timeout; the old Island is never tried again.
REQUEUE_SQL = text(
    f"""
    UPDATE jobs SET {moves.target_sql(REQUEUE)}, host_id = NULL, lease_expires_at = NULL, assigned_at = NULL,
           started_at = NULL, placement = NULL, clearing_price = NULL, updated_at = now(),
           excluded_host_ids = CASE WHEN CAST(:host_id AS text) = ANY(jobs.excluded_host_ids)
                                    THEN jobs.excluded_host_ids
                                    ELSE array_append(jobs.excluded_host_ids, CAST(:host_id AS text)) END
    FROM (SELECT id, state AS old_state FROM jobs WHERE id = :id FOR NO KEY UPDATE) AS old
    WHERE jobs.id = old.id AND jobs.host_id = CAST(:host_id AS uuid) AND jobs.attempt = :attempt
      AND {guard_sql(REQUEUE)}
    """
    + RETURNING
    + ", old.old_state"
)


# The job as the Island message handler checks it: who it is assigned to, and in which state.
JOB_FOR_MESSAGE_SQL = text(
    f"""
    SELECT j.id, j.user_id, j.workload_id, j.state, j.host_id, j.attempt, j.created_at,
           j.excluded_host_ids, j.stream_owner, w.kind, w.runtime, {prompt_chars_sql("j")} AS prompt_chars
    FROM jobs j JOIN workloads w ON w.id = j.workload_id
    WHERE j.id = :id
    """
)

# A caller's job as a stream opening checks it: its state, if the job is theirs (an admin's: any job).
OWNED_JOB_STATE_SQL = text(
    "SELECT state FROM jobs WHERE id = :id AND (CAST(:any_owner AS boolean) OR user_id = :user_id)"
)

# Jobs whose lease ran out (the Island went silent): requeue or dead-letter them.
EXPIRED_LEASES_SQL = text(
    f"""
    SELECT id, host_id, attempt, max_attempts, state FROM jobs
    WHERE {guard_sql(REQUEUE, "state")} AND lease_expires_at < now()
    ORDER BY lease_expires_at
    LIMIT :limit
    FOR NO KEY UPDATE SKIP LOCKED
    """
)

# Jobs assigned but never started (the Island drops a malformed or lost AssignJob silently).
START_TIMEOUTS_SQL = text(
    f"""
    SELECT id, host_id, attempt, max_attempts, state FROM jobs
    WHERE {guard_sql(START, "state")} AND assigned_at < now() - make_interval(secs => :timeout)
    ORDER BY assigned_at
    LIMIT :limit
    FOR NO KEY UPDATE SKIP LOCKED
    """
)

# Running jobs past their Cargo's maximum duration (by trust level, or the Cargo's own override).
OVERDUE_SQL = text(
    f"""
    SELECT j.id, j.host_id FROM jobs j JOIN workloads w ON w.id = j.workload_id
    WHERE {guard_sql(TIME_OUT, "j.state")}
      AND j.started_at < now() - make_interval(secs => COALESCE(
              NULLIF(w.max_duration_seconds, 0),
              (CAST(:limits AS jsonb) ->> CAST(w.trust_level AS text))::int, 60))
    LIMIT :limit
    FOR NO KEY UPDATE OF j SKIP LOCKED
    """
).bindparams(limits=json.dumps({str(k): v for k, v in MAX_DURATION_BY_TRUST.items()}))

# Known, not suspended Islands for the submit-time check, narrowed by the indexed hardware and region
# columns; whether one could run the job is decided by `rules.could_run` on its HostView, not here.
CAPABLE_HOSTS_SQL = text(
    """
    SELECT id, owner_id, status, approved, region, platform, transport, gpu_model, gpu_vram_mb, cpu_cores,
           ram_mb, supported_runtimes, max_concurrent, active_jobs, warm_workload_ids, asking_prices,
           rtt_ms, karma
    FROM hosts
    WHERE status <> 'suspended' AND suspended_at IS NULL
      AND (:ram = 0 OR ram_mb IS NULL OR ram_mb >= :ram)
      AND (:vram = 0 OR gpu_vram_mb >= :vram)
      AND (:cores = 0 OR cpu_cores IS NULL OR cpu_cores >= :cores)
      AND (CAST(:region AS text) IS NULL OR region = :region OR region LIKE :region || '-%')
      AND NOT (CAST(id AS text) = ANY(CAST(:excluded AS text[])))
    """
)

# How many queued jobs are ahead of this one (priority, then age) — the consumer's queue position.
QUEUE_POSITION_SQL = text(queue_ahead_sql(":created_at"))

# Queued jobs that waited long enough for the retry worker to check they are still placeable.
STALE_QUEUED_SQL = text(
    f"""
    SELECT j.id, j.user_id, j.region, j.excluded_host_ids, w.runtime, w.required_ram_mb,
           w.required_vram_mb, w.required_cpu_cores
    FROM jobs j JOIN workloads w ON w.id = j.workload_id
    WHERE {states_sql([rules.QUEUED], "j.state")} AND j.updated_at < now() - make_interval(secs => :age)
    LIMIT :limit
    """
)

# The jobs an Island still holds (assigned, not started): re-sent when a channel Island re-joins.
ASSIGNED_TO_HOST_SQL = text(
    f"""
    SELECT j.id, j.workload_id, j.input, j.lease_expires_at, w.runtime, w.container_image, w.image_digest,
           w.wasm_url, w.wasm_hash, w.model_url, w.model_hash, w.onnx_task_type, w.trust_level
    FROM jobs j JOIN workloads w ON w.id = j.workload_id
    WHERE j.host_id = :host_id AND {states_sql([rules.ASSIGNED], "j.state")}
    ORDER BY j.created_at
    """
)

# Claims a job's stream for a replica unless another already owns it; returns the owner (NULL when the
# claim raced another one: the statement's snapshot predates it, so ask again).
CLAIM_STREAM_OWNER_SQL = text(
    """
    WITH claim AS (
        UPDATE jobs SET stream_owner = :me WHERE id = :id AND stream_owner IS NULL RETURNING stream_owner
    )
    SELECT COALESCE((SELECT stream_owner FROM claim), (SELECT stream_owner FROM jobs WHERE id = :id))
    """
)

# Takes a job's stream over from an owner that no longer answers (only if it still is the owner).
TAKE_OVER_STREAM_SQL = text(
    """
    UPDATE jobs SET stream_owner = :me WHERE id = :id AND stream_owner = :dead RETURNING stream_owner
    """
)


def _close_batch_sql(move: moves.Move) -> Any:
    """A batch parent's end: merged output, no money moved (the children carry the charges)."""
    return text(
        f"""
    UPDATE jobs SET {moves.target_sql(move)}, output = :output, error = :error, completed_at = now(),
           settled_at = now(), updated_at = now()
    WHERE id = :id AND {guard_sql(move, "state")}
    """
        + RETURNING
    )


CLOSE_BATCH_SQL: dict[str, Any] = {m.target: _close_batch_sql(m) for m in moves.BATCH_CLOSE_MOVES.values()}
