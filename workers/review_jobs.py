"""RQ jobs of the labelling queue: turning review work into queue tasks, and re-scoring them.

Jobs raise on any failure: RQ then retries them with the outbox's backoff and finally keeps
them in the queue's FailedJobRegistry (counted in GET /review/stats), so nothing is dropped.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
from sqlmodel import Session, col, select

from service.crud import labels as labels_crud
from service.crud import queue_bound, review_intake
from service.crud import review as review_crud
from service.db import configuration_refusal, is_outage, session_scope, take_sqlite_write_lock
from service.entities import Label
from service.entities.common import utcnow
from service.entities.review import ACTIVE, ReviewReason, ReviewTask
from service.logs import exception_line
from service.ml import priority as prio
from service.ml import registry
from service.ml.classifier import TagModel, precomputed
from service.ml.dataset import item_text
from service.ml.encoder import EMBEDDING_DIM, Encoder
from service.outbox import OUTBOX_ID, mark_done
from workers.context import JobContext, get_context

log = logging.getLogger(__name__)

ATTEMPTS = 3  # create / bump rounds when concurrent jobs race on the same content
SCORE_CHUNK = 256


def to_bytes(embedding: np.ndarray) -> bytes:
    """How an embedding is stored on a task: raw float32."""
    return np.asarray(embedding, dtype=np.float32).tobytes()


def from_bytes(blob: bytes) -> np.ndarray:
    """A stored embedding back as a float32 vector."""
    return np.frombuffer(blob, dtype=np.float32)


class LabelIndex:
    """The current labels' embeddings, for screening new tasks for near-duplicates.

    Read on first use and then kept, so the payloads of one labelling job share one read of
    the labels instead of one each (labels a reviewer adds meanwhile only miss a hint).
    """

    def __init__(self, encoder: Encoder) -> None:
        self.encoder = encoder
        self._ids: list[int] = []
        self._tags: list[str] = []
        self._matrix: np.ndarray | None = None

    def nearest(
        self, session: Session, *, embedding: np.ndarray, threshold: float
    ) -> tuple[int, str] | None:
        """The label most similar to `embedding` if cosine >= threshold: (label id, tag)."""
        if self._matrix is None:
            self._load(session)
        assert self._matrix is not None
        if not self._ids:
            return None
        similarity = self._matrix @ embedding
        best = int(similarity.argmax())
        return None if similarity[best] < threshold else (self._ids[best], self._tags[best])

    def _load(self, session: Session) -> None:
        rows = labels_crud.labelled_embeddings(session)
        missing = [i for i, (_, blob) in enumerate(rows) if blob is None]
        encoded = self.encoder.encode(
            [item_text(rows[i][0].title, rows[i][0].description) for i in missing]
        )
        by_index = dict(zip(missing, encoded, strict=True))
        vectors = [
            by_index[i] if blob is None else from_bytes(blob) for i, (_, blob) in enumerate(rows)
        ]
        self._matrix = np.stack(vectors) if vectors else np.empty((0, EMBEDDING_DIM), np.float32)
        self._ids = [int(label.id) for label, _ in rows]  # type: ignore[arg-type]  # stored rows
        self._tags = [label.tag for label, _ in rows]


def _new_task(
    ctx: JobContext, session: Session, payload: dict[str, Any], labels: LabelIndex
) -> ReviewTask:
    """A task for content not in the queue yet: suggestion, duplicate hint, priority terms."""
    user_report = payload["reason"] == ReviewReason.USER_REPORT.value
    embedding = ctx.encoder.encode([item_text(payload["title"], payload["description"])])[0]
    duplicate = labels.nearest(
        session, embedding=embedding, threshold=ctx.settings.duplicate_cosine
    )
    task = ReviewTask(
        text_hash=payload["text_hash"],
        title=payload["title"],
        description=payload["description"],
        reason=ReviewReason(payload["reason"]),
        prediction_id=payload.get("prediction_id"),
        model_version=payload.get("model_version"),
        suggestion_tag=payload.get("tag"),
        suggestion_scores=dict(payload.get("scores") or {}),
        uncertainty=prio.margin_uncertainty(payload.get("scores") or {}),
        reports=int(user_report),
        embedding=to_bytes(embedding),
        duplicate_of=duplicate[0] if duplicate else None,
        duplicate_tag=duplicate[1] if duplicate else None,
    )
    ahead = review_intake.embeddings_ahead(session, priority=review_intake.task_priority(task))
    if ahead:
        task.diversity_penalty = prio.diversity_penalty(
            embedding, np.stack([from_bytes(b) for b in ahead])
        )
    return task


def arrival_key(payload: dict[str, Any]) -> str:
    """Identity of one delivery: the prediction, and for user reports the feedback row."""
    return f"{payload.get('prediction_id')}:{payload['reason']}:{payload.get('feedback_id') or ''}"


def _labelled_meanwhile(session: Session, *, text_hash: str) -> Label | None:
    """The content's label, read in the content's turn (`labels.lock_content`), which the
    insert of its new task then holds until its commit. A label of the content that landed
    after the payload's first look (it closed the open task this arrival would have counted
    on) is seen here: before, such an arrival opened a new task for content just labelled.
    A label of an open task cannot land between this look and the insert: the insert meets
    the open task's unique key, and the arrival counts on it."""
    labels_crud.lock_content(session, text_hash=text_hash)
    return labels_crud.current_label(session, text_hash=text_hash)


def _create_or_bump(
    ctx: JobContext, session: Session, payload: dict[str, Any], labels: LabelIndex
) -> tuple[ReviewTask, str] | Label:
    """Bump the open task of this content, else create one; a lost insert race bumps. A user
    report's `feedback_id` is linked to the task in the same transaction. A low-confidence
    arrival whose content was labelled meanwhile opens nothing: the label is returned."""
    user_report = payload["reason"] == ReviewReason.USER_REPORT.value
    key = arrival_key(payload)
    feedback_id = payload.get("feedback_id")
    feedback_id = None if feedback_id is None else int(feedback_id)
    for _ in range(ATTEMPTS):
        bumped = review_intake.bump_task(
            session,
            text_hash=payload["text_hash"],
            user_report=user_report,
            arrival_key=key,
            feedback_id=feedback_id,
        )
        if bumped is not None:
            task, counted = bumped
            return task, "bumped" if counted else "duplicate"
        new = _new_task(ctx, session, payload, labels)
        new.arrival_keys = [key]
        if not user_report:
            labelled = _labelled_meanwhile(session, text_hash=payload["text_hash"])
            if labelled is not None:
                session.rollback()
                return labelled
        task = review_intake.create_task(session, task=new, feedback_id=feedback_id)
        if task is not None:
            return task, "created"
    raise RuntimeError(f"could not create or bump the task for {payload['text_hash'][:12]}")


class ReviewBatchError(Exception):
    """Some payloads of a labelling job failed (the others were processed)."""


def process_reviews(payloads: list[dict[str, Any]]) -> dict[str, Any]:
    """The labelling job: `process_review` for each payload of one outbox relay, in order.

    One job carries up to `service.outbox.REVIEW_BATCH` payloads, so RQ's own work per job
    (about 10 ms of dequeue, heartbeat and bookkeeping here) is paid once per batch, and the
    payloads share one read of the labels. A failing payload is logged and the others still
    run; the job then raises, so RQ retries it with the outbox's backoff and finally keeps it,
    every payload in its arguments, in the FailedJobRegistry. On a retry the payloads already
    done count once (arrival keys), so only the failed ones change anything.
    """
    labels = LabelIndex(get_context().encoder)
    actions: Counter[str] = Counter()
    failed: list[str] = []
    done: list[int] = []
    for number, payload in enumerate(payloads, start=1):
        try:
            actions[process_review(payload, labels=labels)["action"]] += 1
            if payload.get(OUTBOX_ID) is not None:  # jobs relayed before 0011 name no row
                done.append(int(payload[OUTBOX_ID]))
        except Exception as exc:  # recorded, and raised below once the others have run
            if is_outage(exc):
                # The database is away: every payload left would fail the same way, each with
                # a traceback (or, on a locked SQLite file, after 30 s of busy wait each: past
                # the job's timeout). The job is retried whole; payloads done count once.
                # A refusal for its configuration (no such database) is no outage: called
                # one, it contradicted the worker's next line, which stops on it (exit 2).
                refusal = configuration_refusal(exc)
                log.error(
                    "labelling job stopped at payload %d of %d, retried later: the database "
                    + ("refused the connection (%s)" if refusal else "is unavailable (%s)"),
                    number,
                    len(payloads),
                    refusal or exception_line(exc),
                )
                raise
            log.exception("review payload %s failed", str(payload.get("text_hash"))[:12])
            failed.append(f"{str(payload.get('text_hash'))[:12]}: {type(exc).__name__}: {exc}")
    # Before RQ counts the job finished (and, after its result's TTL, forgets it): a row sent
    # but not done whose job Redis no longer has is sent again (`outbox.redeliver_lost`).
    with session_scope(get_context().engine) as session:
        mark_done(session, ids=done)
    shed = bound_queue(get_context())
    if failed:
        raise ReviewBatchError(
            f"{len(failed)} of {len(payloads)} payloads failed: " + "; ".join(failed[:10])
        )
    return {"payloads": len(payloads), "actions": dict(actions), "shed": shed}


def bound_queue(ctx: JobContext) -> dict[str, int]:
    """Apply the queue bound (`TAGFLOW_REVIEW_QUEUE_LIMIT`, `TAGFLOW_REVIEW_MAX_AGE_DAYS`)
    after each labelling job: this is where the queue grows, so it never outgrows the bound
    by more than one job's items. A count and at most two UPDATEs: at 20,000 open tasks 8.5 ms
    on SQLite and 6.1 ms on PostgreSQL, under 1% of a 100-item job."""
    settings = ctx.settings
    days = settings.review_max_age_days
    with session_scope(ctx.engine) as session:
        return queue_bound.shed(
            session,
            limit=settings.review_queue_limit,
            max_age=timedelta(days=days) if days else None,
            now=utcnow(),
        )


def process_review(payload: dict[str, Any], *, labels: LabelIndex | None = None) -> dict[str, Any]:
    """Create the review task for a payload of `crud.predictions.review_payload`, or bump the
    open one for the same content. A low-confidence item whose content already has a label in
    force (`crud.labels.label_in_force`) opens nothing; a payload delivered twice counts
    once. `feedback_id` (user reports) is linked to the task in the transaction that creates
    or counts it."""
    ctx = get_context()
    labels = labels or LabelIndex(ctx.encoder)
    text_hash: str = payload["text_hash"]
    user_report = payload["reason"] == ReviewReason.USER_REPORT.value
    with session_scope(ctx.engine) as session:
        # A label taken back or a dispute leaves the content in the queue: the arrival counts.
        existing = None if user_report else labels_crud.label_in_force(session, text_hash=text_hash)
        outcome = existing or _create_or_bump(ctx, session, payload, labels)
        if isinstance(outcome, Label):
            return {"action": "already_labeled", "label_id": outcome.id, "task_id": None}
        task, action = outcome
        return {
            "action": action,
            "task_id": task.id,
            "arrivals": task.arrivals,
            "priority": task.priority,
        }


def _score(model: TagModel, encoder: Encoder, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and embeddings of `texts`, in chunks."""
    probas, embeddings = [], []
    for start in range(0, len(texts), SCORE_CHUNK):
        chunk = texts[start : start + SCORE_CHUNK]
        emb = encoder.encode(chunk)
        probas.append(model.predict_proba(chunk, precomputed(chunk, emb)))
        embeddings.append(emb)
    return np.vstack(probas), np.vstack(embeddings).astype(np.float32)


def _diversity_in_order(embeddings: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Penalty of each task against the tasks ranked just above it by base priority, as many
    as a new task is screened against (`review_intake.AHEAD_SCREENED`)."""
    order = np.argsort(-base, kind="stable")
    penalties = np.zeros(len(base))
    for pos, i in enumerate(order):
        ahead = order[max(0, pos - review_intake.AHEAD_SCREENED) : pos]
        penalties[i] = prio.diversity_penalty(embeddings[i], embeddings[ahead])
    return penalties


def rescored_suggestion(task: ReviewTask, predicted: str) -> str | None:
    """The tag a re-scored task suggests: the model's `predicted` one, except on a label check,
    whose suggestion is the training file's label it asks a reviewer to confirm (the model's
    view is in the scores beside it)."""
    return task.suggestion_tag if task.reason == ReviewReason.LABEL_CHECK else predicted


def reprioritize(version: str | None = None) -> dict[str, Any]:
    """Re-score every open/leased task but the audit's with the registry's production model:
    suggestion (a label check's stays the file's label), scores, uncertainty, and priority
    with the diversity term recomputed in priority order.
    `version` is the version that triggered the job; the registry's production one is used.

    The scoring (an encode per task: minutes with a full queue) and the diversity terms work
    on the tasks as first read; the write takes them again as they are now, locked for that
    write alone (`_lock_active`), so what reviewers and reports did meanwhile counts in the new
    priorities: a skip's SKIP_STEP, a report's bump. Written from the first read, as before,
    both were undone. A task labelled or shed meanwhile is left as it is."""
    ctx = get_context()
    with session_scope(ctx.engine) as session:
        row = registry.get_production(session)
        if row is None:
            return {"model_version": None, "updated": 0, "requested": version}
        model = registry.load_model(row, artifacts_dir=ctx.settings.artifacts_dir)
        # An audit item measures the version that served it (`GET /models/{v}/audit`): moved
        # to the new one, the old lost it and the new gained an item it never served.
        read = [t for t in review_crud.active_tasks(session) if t.reason != ReviewReason.AUDIT]
        if not read:
            return {"model_version": row.version, "updated": 0, "requested": version}
        proba, embeddings = _score(
            model, ctx.encoder, [item_text(t.title, t.description) for t in read]
        )
        names = ctx.tags.names
        rescored: dict[int | None, Rescored] = {}
        for task, p, emb in zip(read, proba, embeddings, strict=True):
            by_class = dict(zip(model.classes, p.tolist(), strict=True))
            scores = {t: round(float(by_class.get(t, 0.0)), 6) for t in names}
            rescored[task.id] = Rescored(
                scores=scores,
                predicted=model.classes[int(p.argmax())],
                uncertainty=prio.margin_uncertainty(scores),
                embedding=emb,
            )
        base = np.array([_base_priority(t, uncertainty=rescored[t.id].uncertainty) for t in read])
        for task, penalty in zip(read, _diversity_in_order(embeddings, base), strict=True):
            rescored[task.id].diversity_penalty = float(penalty)
        session.rollback()  # the first read's transaction is over: nothing to write from it
        tasks = [t for t in _lock_active(session, ids=list(rescored)) if t.id in rescored]
        for task in tasks:
            new = rescored[task.id]
            task.suggestion_scores = new.scores
            task.suggestion_tag = rescored_suggestion(task, new.predicted)
            task.uncertainty = new.uncertainty
            task.diversity_penalty = new.diversity_penalty
            task.model_version = row.version
            # updated_at is left as it is: it orders the tasks a reviewer skipped (the one
            # skipped longest ago first), and stamping every task restarted their round.
            task.embedding = task.embedding or to_bytes(new.embedding)
            task.priority = review_intake.task_priority(task)  # with its skips and reports now
            session.add(task)
        session.commit()
        log.info("reprioritized %d review tasks with %s", len(tasks), row.version)
        return {"model_version": row.version, "updated": len(tasks), "requested": version}


@dataclass
class Rescored:
    """What a re-scoring makes of one task, before it is written."""

    scores: dict[str, float]
    predicted: str
    uncertainty: float
    embedding: np.ndarray
    diversity_penalty: float = 0.0


def _base_priority(task: ReviewTask, *, uncertainty: float) -> float:
    """`task`'s priority with a new `uncertainty`, before its diversity term is recomputed (a
    transient copy: the task as read is not changed)."""
    terms = ReviewTask(
        text_hash=task.text_hash,
        title=task.title,
        description=task.description,
        reason=task.reason,
        uncertainty=uncertainty,
        reports=task.reports,
        arrivals=task.arrivals,
        skips=task.skips,
        diversity_penalty=task.diversity_penalty,
    )
    return review_intake.task_priority(terms) + task.diversity_penalty


def _lock_active(session: Session, *, ids: list[int | None]) -> list[ReviewTask]:
    """The tasks of `ids` still open or leased, read again as stored now and locked until the
    session commits: their rows (PostgreSQL), the database's write lock (SQLite, which a
    transaction's first write takes; what it reads after that is the latest commit)."""
    if session.get_bind().dialect.name != "postgresql":
        take_sqlite_write_lock(session, table=ReviewTask)
    return list(
        session.exec(
            select(ReviewTask)
            .where(col(ReviewTask.id).in_(ids), col(ReviewTask.status).in_(ACTIVE))
            .order_by(col(ReviewTask.priority).desc(), col(ReviewTask.id))
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    )
