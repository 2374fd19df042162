"""What /metrics reads from the running service when scraped: the served model, the
micro-batcher's totals, the write-behind buffer, the review queue, the audit estimate and RQ.

Alerting on these is the point: e.g. `tagflow_audit_meets_target == 0` (live automatic
precision is below target with 95% confidence), a growing `tagflow_outbox_pending` (Redis
unreachable), `tagflow_outbox_stopped > 0` (review items the relay gave up on), or
`tagflow_rq_failed_jobs > 0`, or `tagflow_rq_workers == 0` (nobody works the queues).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from redis import Redis
from redis.exceptions import RedisError
from rq.registry import FailedJobRegistry
from rq.worker_registration import get_keys
from sqlmodel import Session

from service.api.state import AppState
from service.crud import overlap
from service.crud import review as review_crud
from service.crud.audit import AuditStats, audit_stats
from service.entities.common import utcnow
from service.metrics import Sample


def read_state(state: AppState) -> Iterator[Sample]:
    """Every scrape-time sample; the database and Redis parts each fail on their own."""
    yield from _serving(state)
    yield from state.keys.samples()
    yield from _database(state)
    yield from _redis(state)


def _serving(state: AppState) -> Iterator[Sample]:
    """The models served, what the micro-batcher did, and the write-behind log."""
    yield from _models(state)
    yield from _scoring(state)
    yield from _write_behind(state)


def _models(state: AppState) -> Iterator[Sample]:
    for role, loaded in (
        ("production", state.predictor.current),
        ("shadow", state.predictor.shadow),
    ):
        if loaded is not None:
            labels = {"version": loaded.version, "role": role}
            yield Sample("tagflow_model_info", "The model versions being served", 1, labels)
            yield Sample(
                "tagflow_model_threshold",
                "Confidence at or above which a prediction is accepted automatically",
                loaded.accept_at,
                labels,
            )
    yield Sample(
        "tagflow_model_errors",
        "Why the registry's production version is not served: refusals at load (bad checksum, "
        "unapproved tags), back to 0 once a production version serves",
        len(state.model_errors),
        {},
    )
    yield Sample(
        "tagflow_model_refusals",
        "Model versions refused at load since start",
        state.model_refusals,
        {},
        True,
    )
    yield Sample(
        "tagflow_shadow_errors",
        "Shadow scorings that failed since start (the production answer was unaffected)",
        state.shadow_errors,
        {},
        True,
    )


def _scoring(state: AppState) -> Iterator[Sample]:
    stats = state.batcher.stats
    yield Sample("tagflow_scored_items", "Items scored by the micro-batcher", stats.items, {}, True)
    yield Sample(
        "tagflow_encoded_items",
        "Items the TF-IDF fast path left to the sentence encoder",
        stats.encoded,
        {},
        True,
    )
    yield Sample("tagflow_microbatches", "Micro-batches triaged", stats.batches, {}, True)
    yield Sample(
        "tagflow_scoring_cpu_seconds",
        "CPU time of the scoring threads: the TF-IDF triage and the sentence encoder",
        stats.triage_cpu_s,
        {"stage": "triage"},
        True,
    )
    yield Sample("tagflow_scoring_cpu_seconds", "", stats.encode_cpu_s, {"stage": "encode"}, True)
    yield Sample(
        "tagflow_refused_requests",
        "Prediction requests refused with 503 because too many items were waiting (admission)",
        stats.refused_requests,
        {},
        True,
    )
    yield Sample(
        "tagflow_refused_items", "Items in the refused requests", stats.refused_items, {}, True
    )


def _write_behind(state: AppState) -> Iterator[Sample]:
    yield Sample(
        "tagflow_prediction_log_buffered",
        "Predictions answered but not yet written to the database (write-behind buffer, "
        "and the batch being written)",
        state.log.buffered,
        {},
    )
    yield Sample(
        "tagflow_prediction_log_written",
        "Predictions written to the database",
        state.log.written,
        {},
        True,
    )
    yield Sample(
        "tagflow_prediction_log_flush_failures",
        "Write-behind flushes that failed (their rows were kept and retried)",
        state.log.failures,
        {},
        True,
    )
    yield Sample(
        "tagflow_prediction_log_spilled",
        "Predictions an outage moved from the buffer to the spill file (written back later)",
        state.log.spilled,
        {},
        True,
    )
    yield Sample(
        "tagflow_prediction_log_dead_letters",
        "Predictions the database refused on their own, written to the dead-letter file instead",
        state.log.dead_lettered,
        {},
        True,
    )
    yield Sample(
        "tagflow_prediction_log_dead_letters_waiting",
        "Refused predictions in the dead-letter file, waiting for `tagflow db replay-dead-letters`",
        state.dead_letters(),
        {},
    )


def _database(state: AppState) -> Iterator[Sample]:
    try:
        with Session(state.engine) as session:
            counts = review_crud.stats(session, now=utcnow())
            table = overlap.pair_table(session)
            current = state.predictor.current
            audit = (
                audit_stats(
                    session,
                    version=current.version,
                    target=state.settings.target_precision,
                    threshold=current.accept_at,
                )
                if current is not None
                else None
            )
    except Exception as exc:
        # An outage is a line, again each minute; a new failure of another kind a traceback.
        state.scrape_database_failures.failed(exc, now=time.monotonic())
        yield Sample("tagflow_database_up", "The database answered the last scrape", 0, {})
        return
    state.scrape_database_failures.succeeded()
    yield Sample("tagflow_database_up", "The database answered the last scrape", 1, {})
    states = {"open": counts["open"], "leased": counts["leased"], "shed": counts["shed_now"]}
    for name, n in states.items():
        yield Sample("tagflow_review_tasks", "Review tasks by state", n, {"state": name})
    # Only grows (a late label takes a task out of `shed`, not out of this): its increase is
    # the work the queue bound turned away (reviewers behind).
    yield Sample(
        "tagflow_review_shed",
        "Review tasks the queue bound ever shed, those labelled late since included",
        counts["shed"],
        {},
        counter=True,  # exposed as tagflow_review_shed_total
    )
    for reason, n in counts["by_reason"].items():
        yield Sample(
            "tagflow_review_active_tasks",
            "Open or leased review tasks by reason",
            n,
            {"reason": reason},
        )
    for stage, n in counts["by_stage"].items():
        yield Sample(
            "tagflow_review_stage_tasks",
            "Open or leased review tasks by the answer they wait for (first, second, adjudicate)",
            n,
            {"stage": stage},
        )
    yield from _agreement(table)
    yield Sample(
        "tagflow_outbox_pending",
        "Review items waiting in the database outbox for Redis",
        counts["outbox_pending"],
        {},
    )
    yield Sample(
        "tagflow_outbox_stopped",
        "Review items the outbox relay stopped sending (each of their jobs lost), waiting for "
        "`tagflow db resend-outbox`",
        counts["outbox_stopped"],
        {},
    )
    if audit is not None:
        yield from _audit(audit)


def _agreement(table: overlap.PairTable) -> Iterator[Sample]:
    """The overlap sample: pairs and agreed pairs (rates over a window come from their deltas)
    and Fleiss' kappa over all pairs."""
    yield Sample("tagflow_review_pairs", "Contents labelled twice independently", table.total(), {})
    yield Sample(
        "tagflow_review_pairs_agreed",
        "Contents whose two independent labels agree",
        overlap.agreed_in(table),
        {},
    )
    k = overlap.kappa(table)
    if k is not None:
        yield Sample(
            "tagflow_review_kappa",
            "Fleiss' kappa of the two independent labels over all pairs (1 perfect, 0 chance)",
            k,
            {},
        )


def _audit(audit: AuditStats) -> Iterator[Sample]:
    labels = {"version": audit.version}
    yield Sample(
        "tagflow_audit_labelled", "Audited auto predictions with a label", audit.audited, labels
    )
    if audit.precision is not None:
        yield Sample(
            "tagflow_audit_precision",
            "Live automatic-acceptance precision (audit)",
            audit.precision,
            labels,
        )
    if audit.meets_target is not None:
        yield Sample(
            "tagflow_audit_meets_target",
            "1 when the audit's 95% interval is above the target precision, 0 when below",
            int(audit.meets_target),
            labels,
        )


def _redis(state: AppState) -> Iterator[Sample]:
    try:
        depths = {name: q.count for name, q in state.queues.items()}
        failed = {name: FailedJobRegistry(queue=q).count for name, q in state.queues.items()}
        workers = live_workers(state.queues.labeling.connection)
    except RedisError as exc:
        state.scrape_redis_failures.failed(exc, now=time.monotonic())
        yield Sample("tagflow_redis_up", "Redis answered the last scrape", 0, {})
        return
    state.scrape_redis_failures.succeeded()
    yield Sample("tagflow_redis_up", "Redis answered the last scrape", 1, {})
    for name, n in depths.items():
        yield Sample("tagflow_rq_queued_jobs", "Jobs waiting in an RQ queue", n, {"queue": name})
    for name, n in failed.items():
        yield Sample(
            "tagflow_rq_failed_jobs", "Jobs in an RQ queue's failed registry", n, {"queue": name}
        )
    yield Sample("tagflow_rq_workers", "RQ workers alive (key not expired)", workers, {})


def live_workers(redis: Redis) -> int:
    """The RQ workers whose key is still there: a worker renews it with each heartbeat, and
    the key of one killed outright expires (RQ's worker set keeps its name until a cleanup)."""
    keys = get_keys(connection=redis)
    if not keys:
        return 0
    return int(redis.exists(*keys))
