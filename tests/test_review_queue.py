"""The review queue's storage and jobs on SQLite and PostgreSQL: task creation and bumping,
duplicates and diversity, append-only labels, re-prioritisation (leases: test_leases.py)."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, select

from service.config import DEFAULT_TAGS_FILE, Settings
from service.crud import labels as labels_crud
from service.crud import leases, review_intake
from service.crud import review as review_crud
from service.crud import snapshots as snapshots_crud
from service.crud.predictions import add_label_checks
from service.db import is_outage, make_engine
from service.entities import Feedback, FeedbackStatus, Label, OutboxItem
from service.entities.common import new_id, utcnow
from service.entities.review import ReviewReason, ReviewStatus, ReviewTask
from service.errors import ConflictError, InvalidInputError, NotFoundError
from service.ml import priority as prio
from service.ml.dataset import Example, text_hash
from service.ml.training import TrainResult, score
from service.tags import TagSet, load_tags
from tests.conftest import register_promoted
from workers import review_jobs
from workers.context import JobContext, use_context

TAGS = load_tags(DEFAULT_TAGS_FILE)
UNSURE = {"natural-language-processing": 0.4, "computer-vision": 0.35, "mlops": 0.15, "other": 0.1}
YOLO = "Real-time object detection with YOLO"


def payload(
    title: str,
    description: str = "",
    *,
    scores: dict[str, float] | None = None,
    reason: str = "low_confidence",
    **extra: Any,
) -> dict[str, Any]:
    """A review payload shaped like `crud.predictions.review_payload`."""
    scores = scores or UNSURE
    return {
        "prediction_id": new_id(),
        "text_hash": text_hash(title, description),
        "title": title,
        "description": description,
        "tag": max(scores, key=scores.__getitem__),
        "scores": scores,
        "model_version": "v-test",
        "reason": reason,
        **extra,
    }


@pytest.fixture
def settings(make_settings: Callable[..., Settings], database_url: str) -> Settings:
    return make_settings(database_url=database_url)


@pytest.fixture
def ctx(settings: Settings, engine: Engine) -> Iterator[JobContext]:
    """The job context a worker would build, installed for the jobs under test."""
    context = JobContext(settings)
    use_context(context)
    yield context
    use_context(None)
    context.engine.dispose()


def add_task(engine: Engine, title: str, uncertainty: float, **fields: Any) -> int:
    with Session(engine, expire_on_commit=False) as session:
        fields.setdefault("reason", ReviewReason.LOW_CONFIDENCE)
        task = review_intake.create_task(
            session,
            task=ReviewTask(
                text_hash=text_hash(title, ""),
                title=title,
                description="",
                uncertainty=uncertainty,
                **fields,
            ),
        )
        assert task is not None and task.id is not None
        return task.id


def get(engine: Engine, task_id: int) -> ReviewTask:
    with Session(engine) as session:
        task = session.get(ReviewTask, task_id)
        assert task is not None
        return task


def tasks(engine: Engine) -> list[ReviewTask]:
    with Session(engine) as session:
        return list(session.exec(select(ReviewTask).order_by(ReviewTask.id)))


def do(engine: Engine, fn: Callable[..., Any], **kwargs: Any) -> Any:
    with Session(engine, expire_on_commit=False) as session:
        return fn(session, **kwargs)


def label_task(
    engine: Engine,
    task_id: int,
    tag: str,
    reviewer: str = "ann",
    tags: TagSet = TAGS,
    overlap_share: float = 0.0,
) -> Label:
    return do(
        engine,
        review_crud.label,
        task_id=task_id,
        tag=tag,
        reviewer=reviewer,
        tags=tags,
        holdout_share=0.2,
        overlap_share=overlap_share,
    )


# --- creating and bumping tasks -------------------------------------------------------------


def test_process_review_creates_a_scored_task(ctx: JobContext, engine: Engine) -> None:
    p = payload(YOLO, "Detect cars in video.")
    result = review_jobs.process_review(p)
    assert result["action"] == "created"
    [task] = tasks(engine)
    assert task.id == result["task_id"]
    assert (task.text_hash, task.open_key) == (p["text_hash"], p["text_hash"])
    assert task.status == ReviewStatus.OPEN and task.reason == ReviewReason.LOW_CONFIDENCE
    assert task.suggestion_tag == "natural-language-processing"
    assert task.suggestion_scores == UNSURE and task.model_version == "v-test"
    assert task.prediction_id == p["prediction_id"]
    assert task.uncertainty == pytest.approx(1 - (0.4 - 0.35))
    assert task.priority == pytest.approx(task.uncertainty)
    embedding = np.frombuffer(task.embedding or b"", dtype=np.float32)
    assert embedding.shape == (384,) and np.linalg.norm(embedding) == pytest.approx(1, abs=1e-3)
    assert task.duplicate_of is None and task.diversity_penalty == 0


def test_same_content_twice_is_one_task_with_two_arrivals(ctx: JobContext, engine: Engine) -> None:
    first = review_jobs.process_review(payload(YOLO))
    second = review_jobs.process_review(payload("  real-time OBJECT detection   with yolo "))
    assert second == {**second, "action": "bumped", "task_id": first["task_id"], "arrivals": 2}
    [task] = tasks(engine)
    assert task.arrivals == 2 and task.reports == 0
    assert task.priority == pytest.approx(task.uncertainty + prio.ARRIVAL_BOOST * math.log1p(1))


def run_concurrently(payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run `process_review` on every payload at once, one thread each."""
    barrier = threading.Barrier(len(payloads))
    results: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    def run(p: dict[str, Any]) -> None:
        barrier.wait()
        try:
            results.append(review_jobs.process_review(p))
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    return results


def test_concurrent_jobs_on_one_content_make_one_task(ctx: JobContext, engine: Engine) -> None:
    results = run_concurrently([payload(YOLO) for _ in range(8)])
    assert sorted(r["action"] for r in results) == ["bumped"] * 7 + ["created"]
    [task] = tasks(engine)
    assert task.arrivals == 8 and len(task.arrival_keys) == 8


def test_a_delivery_repeated_counts_once(ctx: JobContext, engine: Engine) -> None:
    """The outbox may re-send and RQ may retry: the same payload is one arrival."""
    p = payload(YOLO)
    results = run_concurrently([p] * 4)
    assert sorted(r["action"] for r in results) == ["created"] + ["duplicate"] * 3
    assert review_jobs.process_review(p)["action"] == "duplicate"
    assert review_jobs.process_review(payload(YOLO))["arrivals"] == 2
    [task] = tasks(engine)
    assert (task.arrivals, task.reports) == (2, 0)


def test_user_report_bumps_the_task_and_links_the_feedback(ctx: JobContext, engine: Engine) -> None:
    p = payload(YOLO)
    review_jobs.process_review(p)
    reports = []
    with Session(engine, expire_on_commit=False) as session:
        for reporter, tag in (("u1", "computer-vision"), ("u2", "mlops")):
            fb = Feedback(
                prediction_id=p["prediction_id"],
                reporter=reporter,
                correct_tag=tag,
                text_hash=p["text_hash"],
            )
            session.add(fb)
            session.commit()
            reports.append(fb.id)
    for feedback_id in reports:
        review_jobs.process_review({**p, "reason": "user_report", "feedback_id": feedback_id})
    [task] = tasks(engine)
    assert task.reason == ReviewReason.USER_REPORT
    assert (task.arrivals, task.reports) == (3, 2)
    assert task.priority == pytest.approx(
        prio.priority(uncertainty=task.uncertainty, reports=2, arrivals=3)
    )
    with Session(engine) as session:
        feedback = [session.get(Feedback, i) for i in reports]
        assert all(
            f and f.task_id == task.id and f.status == FeedbackStatus.IN_REVIEW for f in feedback
        )
    assert task.id is not None
    do(engine, leases.claim, reviewer="ann", lease_s=60)
    label = label_task(engine, task.id, "computer-vision")
    with Session(engine) as session:
        confirmed, rejected = (session.get(Feedback, i) for i in reports)
        assert confirmed and confirmed.status == FeedbackStatus.CONFIRMED
        assert rejected and rejected.status == FeedbackStatus.REJECTED
        assert confirmed.label_id == rejected.label_id == label.id


def test_a_reported_audit_item_stays_in_the_audit_sample(ctx: JobContext, engine: Engine) -> None:
    """Reported items are the likeliest errors: were they to leave the sample, the audit
    would overstate live precision."""
    p = payload(YOLO, reason="audit")
    review_jobs.process_review(p)
    review_jobs.process_review({**p, "reason": "user_report"})
    [task] = tasks(engine)
    assert task.reason == ReviewReason.AUDIT
    assert (task.arrivals, task.reports) == (2, 1)
    assert task.priority == pytest.approx(
        prio.priority(uncertainty=task.uncertainty, reports=1, arrivals=2, audit=True)
    )


def test_a_doubted_training_label_becomes_one_label_check_task(
    ctx: JobContext, engine: Engine
) -> None:
    """Training's suspect rows reach the queue through the outbox: suggestion = the file's
    label, scores = the model's; sent again by the next training, still one task; once a
    reviewer has labelled the content, sent again, nothing."""
    scores = {"computer-vision": 0.06, "natural-language-processing": 0.9, "mlops": 0.02}
    suspect = {
        "text_hash": text_hash(YOLO, "Boxes and classes."),
        "title": YOLO,
        "description": "Boxes and classes.",
        "tag": "computer-vision",
        "scores": scores | {"other": 0.02},
    }
    for version in ("v0001", "v0002"):
        with Session(engine) as session:
            assert add_label_checks(session, suspects=[suspect], version=version) == 1
            session.commit()
    with Session(engine) as session:
        outbox = session.exec(select(OutboxItem)).all()
    assert [o.payload["reason"] for o in outbox] == ["label_check", "label_check"]
    actions = [review_jobs.process_review(o.payload)["action"] for o in outbox]
    assert actions == ["created", "duplicate"]
    [task] = tasks(engine)
    assert task.reason == ReviewReason.LABEL_CHECK and task.prediction_id is None
    assert task.suggestion_tag == "computer-vision" and task.model_version == "v0001"
    assert task.suggestion_scores["natural-language-processing"] == 0.9
    assert task.id is not None
    do(engine, leases.claim, reviewer="ann", lease_s=60)
    label_task(engine, task.id, "computer-vision")
    again = review_jobs.process_review(outbox[0].payload)
    assert again["action"] == "already_labeled"


def test_labelled_content_opens_no_low_confidence_task(ctx: JobContext, engine: Engine) -> None:
    p = payload(YOLO)
    task_id = review_jobs.process_review(p)["task_id"]
    label = label_task(engine, task_id, "computer-vision")
    again = review_jobs.process_review(payload(YOLO))
    assert again == {"action": "already_labeled", "label_id": label.id, "task_id": None}
    assert len(tasks(engine)) == 1
    report = review_jobs.process_review({**payload(YOLO), "reason": "user_report"})
    assert report["action"] == "created" and report["task_id"] != task_id
    reopened = get(engine, report["task_id"])
    # The content's own label is the nearest labelled item: shown as the duplicate hint.
    assert (reopened.duplicate_of, reopened.duplicate_tag) == (label.id, "computer-vision")


def test_an_arrival_racing_a_label_of_its_content_opens_no_task(
    ctx: JobContext, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A low-confidence arrival that found the content unlabelled, then a reviewer's label of
    its open task landing before the arrival counted on that task: the arrival found no open
    task and opened a new one, for content just labelled (the label's and the arrival's
    transactions interleaved). It now takes the content's turn and looks again."""
    task_id = review_jobs.process_review(payload(YOLO))["task_id"]
    looked, go = threading.Event(), threading.Event()
    bump = review_intake.bump_task

    def bump_after_the_label(session: Session, **kwargs: Any) -> Any:
        looked.set()  # the arrival has found the content unlabelled
        assert go.wait(30)
        return bump(session, **kwargs)

    monkeypatch.setattr(review_intake, "bump_task", bump_after_the_label)
    results: list[dict[str, Any]] = []
    arrival = threading.Thread(
        target=lambda: results.append(review_jobs.process_review(payload(YOLO)))
    )
    arrival.start()
    assert looked.wait(30)
    label = label_task(engine, task_id, "computer-vision")
    go.set()
    arrival.join(30)

    assert results == [{"action": "already_labeled", "label_id": label.id, "task_id": None}]
    assert [(t.id, t.status) for t in tasks(engine)] == [(task_id, ReviewStatus.LABELED)]


def test_near_duplicate_of_a_labelled_item_is_flagged(ctx: JobContext, engine: Engine) -> None:
    first = review_jobs.process_review(payload(YOLO))["task_id"]
    label = label_task(engine, first, "computer-vision")
    with Session(engine, expire_on_commit=False) as session:  # a label without a task embedding
        other = labels_crud.append_label(
            session,
            text_hash=text_hash("Serving models with Kubernetes", ""),
            title="Serving models with Kubernetes",
            description="",
            tag="mlops",
            reviewer="feedback",
            holdout_share=0.2,
        )
        session.commit()
    near = get(engine, review_jobs.process_review(payload(YOLO + "!"))["task_id"])
    assert (near.duplicate_of, near.duplicate_tag) == (label.id, "computer-vision")
    near_k8s = get(
        engine, review_jobs.process_review(payload("Serving models with Kubernetes!"))["task_id"]
    )
    assert (near_k8s.duplicate_of, near_k8s.duplicate_tag) == (other.id, "mlops")
    far = get(
        engine,
        review_jobs.process_review(payload("Fine-tuning BERT for sentiment analysis"))["task_id"],
    )
    assert far.duplicate_of is None and far.duplicate_tag is None


def test_no_look_alike_is_shown_by_a_disputed_or_taken_back_label(
    ctx: JobContext, engine: Engine
) -> None:
    """A new task's look-alike hint shows reviewers a labelled item's tag. A content whose two
    reviewers disagree has no label until a third decides, and a label taken back with undo
    none until one replaces it: the hint showed the second opinion, or the label taken back."""
    disputed = review_jobs.process_review(payload(YOLO))["task_id"]
    label_task(engine, disputed, "computer-vision", reviewer="ann", overlap_share=1.0)
    label_task(engine, disputed, "mlops", reviewer="bob", overlap_share=1.0)
    k8s = "Serving models with Kubernetes"
    undone = review_jobs.process_review(payload(k8s))["task_id"]
    label_task(engine, undone, "computer-vision", reviewer="ann")
    do(engine, review_crud.reopen, task_id=undone, reviewer="ann", lease_s=60)
    do(engine, review_crud.skip, task_id=undone, reviewer="ann")

    def hint(title: str) -> tuple[int | None, str | None]:
        task = get(engine, review_jobs.process_review(payload(title))["task_id"])
        return task.duplicate_of, task.duplicate_tag

    assert hint(YOLO + "!") == (None, None)
    assert hint(k8s + "!") == (None, None)
    decided = label_task(engine, disputed, "computer-vision", reviewer="cat")
    replaced = label_task(engine, undone, "mlops", reviewer="bob")
    assert hint(YOLO + "?") == (decided.id, "computer-vision")
    assert hint(k8s + "?") == (replaced.id, "mlops")


def test_an_arrival_counts_on_the_task_of_a_disputed_or_taken_back_label(
    ctx: JobContext, engine: Engine
) -> None:
    """Content whose label was taken back with undo, or whose two reviewers disagree, waits in
    the queue with no label in force: a new arrival of it counts on its task (priority), as on
    any open task. It answered "already_labeled", counting nothing, on the strength of the
    label taken back or the undecided second opinion."""
    undone = review_jobs.process_review(payload(YOLO))["task_id"]
    label_task(engine, undone, "computer-vision", reviewer="ann")
    do(engine, review_crud.reopen, task_id=undone, reviewer="ann", lease_s=60)
    do(engine, review_crud.skip, task_id=undone, reviewer="ann")
    k8s = "Serving models with Kubernetes"
    disputed = review_jobs.process_review(payload(k8s))["task_id"]
    label_task(engine, disputed, "mlops", reviewer="ann", overlap_share=1.0)
    label_task(engine, disputed, "other", reviewer="bob", overlap_share=1.0)

    again = review_jobs.process_review(payload(YOLO))
    assert (again["action"], again["task_id"], again["arrivals"]) == ("bumped", undone, 2)
    again = review_jobs.process_review(payload(k8s))
    assert (again["action"], again["task_id"], again["arrivals"]) == ("bumped", disputed, 2)
    label_task(engine, undone, "computer-vision", reviewer="bob")
    assert review_jobs.process_review(payload(YOLO))["action"] == "already_labeled"


def test_a_labelling_job_runs_its_whole_batch_and_raises_for_what_failed(
    ctx: JobContext, engine: Engine
) -> None:
    """One failing payload neither stops its batch mates nor is lost: the job raises (RQ
    retries it, then keeps it as failed), and on the retry the others count once."""
    good = [payload(YOLO), payload("Serving models with Kubernetes")]
    broken = {"text_hash": "0" * 64, "reason": "low_confidence"}  # no title
    for attempt in range(2):
        with pytest.raises(review_jobs.ReviewBatchError, match="1 of 3 payloads failed.*KeyError"):
            review_jobs.process_reviews([good[0], broken, good[1]])
        assert [(t.title, t.arrivals) for t in tasks(engine)] == [
            (YOLO, 1),
            ("Serving models with Kubernetes", 1),
        ], f"attempt {attempt}"
    assert review_jobs.process_reviews(good) == {
        "payloads": 2,
        "actions": {"duplicate": 2},
        "shed": {"age": 0, "limit": 0},
    }


def test_a_labelling_job_stops_at_the_first_payload_the_database_is_away_for(
    ctx: JobContext, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    """With the database away every payload failed in turn, each with a traceback (on a
    SQLite file locked by another process, after its 30 s busy timeout each: 100 payloads
    outlast the job's 10-minute timeout). The job now stops at the first, in one line, and
    RQ retries it whole."""
    reachable = ctx.engine
    ctx.engine = make_engine(
        "sqlite:////nonexistent-dir/tagflow.db"
        if engine.dialect.name == "sqlite"
        else "postgresql+psycopg://postgres@127.0.0.1:1/test"
    )
    batch = [payload(f"Unsure item {i}") for i in range(5)]
    try:
        with (
            caplog.at_level(logging.INFO, logger="workers.review_jobs"),
            pytest.raises(OperationalError) as error,
        ):
            review_jobs.process_reviews(batch)
    finally:
        ctx.engine.dispose()
        ctx.engine = reachable
    assert is_outage(error.value)
    said = [(r.getMessage(), r.exc_info) for r in caplog.records]
    assert len(said) == 1 and said[0][1] is None, said
    assert said[0][0].startswith("labelling job stopped at payload 1 of 5, retried later")
    # Back, the retry creates the tasks.
    assert review_jobs.process_reviews(batch)["actions"] == {"created": 5}


def test_a_labelling_job_screens_its_batch_against_the_labels(
    ctx: JobContext, engine: Engine
) -> None:
    first = review_jobs.process_review(payload(YOLO))["task_id"]
    label = label_task(engine, first, "computer-vision")
    result = review_jobs.process_reviews(
        [payload(YOLO + "!"), payload("Fine-tuning BERT for sentiment analysis"), payload(YOLO)]
    )
    assert result["actions"] == {"created": 2, "already_labeled": 1}
    near, far = tasks(engine)[1:]
    assert (near.duplicate_of, near.duplicate_tag) == (label.id, "computer-vision")
    assert far.duplicate_of is None


def test_diversity_screening_reads_only_the_tasks_just_ahead(
    ctx: JobContext, engine: Engine
) -> None:
    ids = [add_task(engine, f"task {i}", uncertainty=1.0 + i / 10) for i in range(5)]
    with Session(engine) as session:
        for i, task_id in enumerate(ids):
            task = session.get(ReviewTask, task_id)
            assert task is not None
            task.embedding = np.full(384, i, dtype=np.float32).tobytes()
            session.add(task)
        session.commit()
        ahead = review_intake.embeddings_ahead(session, priority=1.05, limit=3)
        everything = review_intake.embeddings_ahead(session, priority=0.0)
    assert [np.frombuffer(b, dtype=np.float32)[0] for b in ahead] == [1, 2, 3]
    assert len(everything) == 5


def test_near_copies_behind_a_task_get_a_diversity_penalty(ctx: JobContext, engine: Engine) -> None:
    tie = {"natural-language-processing": 0.5, "computer-vision": 0.5, "mlops": 0.0, "other": 0.0}
    lead = get(engine, review_jobs.process_review(payload(YOLO, scores=tie))["task_id"])
    copy = get(engine, review_jobs.process_review(payload(YOLO + "!"))["task_id"])
    other = get(
        engine,
        review_jobs.process_review(payload("Fine-tuning BERT for sentiment analysis"))["task_id"],
    )
    assert lead.diversity_penalty == 0 and other.diversity_penalty == 0
    assert copy.diversity_penalty > 0.3
    assert copy.priority == pytest.approx(copy.uncertainty - copy.diversity_penalty)
    assert copy.priority < other.priority < lead.priority


# --- labels ------------------------------------------------------------------------------


def test_label_checks_tag_task_and_lease(engine: Engine) -> None:
    task_id = add_task(engine, "first", 0.9)
    do(engine, leases.claim, reviewer="ann", lease_s=60)
    with pytest.raises(InvalidInputError):
        label_task(engine, task_id, "not-a-tag")
    with pytest.raises(NotFoundError):
        label_task(engine, 999_999, "mlops")
    with pytest.raises(ConflictError):
        label_task(engine, task_id, "mlops", reviewer="bob")
    label = label_task(engine, task_id, "mlops", reviewer="ann")
    assert (label.tag, label.reviewer, label.task_id, label.supersedes) == (
        "mlops",
        "ann",
        task_id,
        None,
    )
    task = get(engine, task_id)
    assert task.status == ReviewStatus.LABELED and task.open_key is None
    assert task.leased_by is None
    with pytest.raises(ConflictError):  # labelled: only reopen (undo) changes it
        label_task(engine, task_id, "other", reviewer="ann")


def test_relabelling_appends_and_supersedes(engine: Engine) -> None:
    task_id = add_task(engine, "first", 0.9)
    first = label_task(engine, task_id, "mlops", reviewer="ann")
    with pytest.raises(ConflictError):
        do(engine, review_crud.reopen, task_id=task_id, reviewer="bob", lease_s=60)
    reopened = do(engine, review_crud.reopen, task_id=task_id, reviewer="ann", lease_s=60)
    assert reopened.status == ReviewStatus.LEASED and reopened.leased_by == "ann"
    assert reopened.open_key == reopened.text_hash
    with pytest.raises(ConflictError):
        label_task(engine, task_id, "other", reviewer="bob")
    second = label_task(engine, task_id, "other", reviewer="ann")
    assert second.supersedes == first.id
    with Session(engine) as session:
        old = session.get(Label, first.id)
        assert old is not None
        assert (old.tag, old.reviewer, old.superseded_by) == ("mlops", "ann", second.id)
        assert old.created_at.replace(tzinfo=None) == first.created_at.replace(tzinfo=None)
        current = labels_crud.current_labels(session)
    assert [(c.id, c.tag) for c in current] == [(second.id, "other")]
    with pytest.raises(ConflictError):  # an unlabelled task has nothing to undo
        do(
            engine,
            review_crud.reopen,
            task_id=add_task(engine, "x", 0.1),
            reviewer="ann",
            lease_s=60,
        )


def test_a_label_undone_and_not_given_again_is_no_training_data(engine: Engine) -> None:
    """Undo takes a label back; skipped after it (or released, or its lease run out), the
    label was still exported and trained on: in a QA run, "The Annotated GPT-2" labelled mlops
    by mistake, undone and skipped, was an export row tagged mlops. The next label, by anyone,
    is the content's label as before."""
    task_id = add_task(engine, "The Annotated GPT-2", 0.9)
    kept = label_task(engine, add_task(engine, "another item", 0.1), "other", reviewer="ann")

    def exported() -> list[tuple[int | None, str]]:
        with Session(engine) as session:
            return [(row.id, row.tag) for row in labels_crud.current_labels(session)]

    wrong = label_task(engine, task_id, "mlops", reviewer="ann")
    assert exported() == [(kept.id, "other"), (wrong.id, "mlops")]
    do(engine, review_crud.reopen, task_id=task_id, reviewer="ann", lease_s=60)
    assert exported() == [(kept.id, "other")]  # taken back, while ann holds the item again
    do(engine, review_crud.skip, task_id=task_id, reviewer="ann")
    assert exported() == [(kept.id, "other")]  # and once she has passed it on
    right = label_task(engine, task_id, "natural-language-processing", reviewer="bob")
    assert right.supersedes == wrong.id
    assert exported() == [(kept.id, "other"), (right.id, "natural-language-processing")]


def test_new_labels_towards_a_retraining_leave_out_disputed_and_taken_back_ones(
    engine: Engine,
) -> None:
    """TAGFLOW_RETRAIN_AFTER_LABELS counts new labels: those a retraining would learn. A
    content whose reviewers disagree and a label taken back with undo are none until decided
    or replaced, and counted towards the next automatic retraining all the same."""

    def new_labels() -> int:
        return do(engine, snapshots_crud.labels_since, since=None)

    disputed = add_task(engine, "a disputed item", 0.5)
    label_task(engine, disputed, "mlops", reviewer="ann", overlap_share=1.0)
    assert new_labels() == 1  # the first opinion is the content's label while a second is asked
    label_task(engine, disputed, "other", reviewer="bob", overlap_share=1.0)
    assert new_labels() == 0
    undone = add_task(engine, "an undone item", 0.5)
    label_task(engine, undone, "mlops", reviewer="ann")
    assert new_labels() == 1
    do(engine, review_crud.reopen, task_id=undone, reviewer="ann", lease_s=60)
    do(engine, review_crud.skip, task_id=undone, reviewer="ann")
    assert new_labels() == 0
    label_task(engine, disputed, "other", reviewer="cat", overlap_share=1.0)
    label_task(engine, undone, "computer-vision", reviewer="bob")
    assert new_labels() == 2


def test_reopen_refused_while_the_content_has_another_open_task(
    ctx: JobContext, engine: Engine
) -> None:
    task_id = review_jobs.process_review(payload(YOLO))["task_id"]
    label_task(engine, task_id, "computer-vision")
    review_jobs.process_review({**payload(YOLO), "reason": "user_report"})
    with pytest.raises(ConflictError):
        do(engine, review_crud.reopen, task_id=task_id, reviewer="ann", lease_s=60)


def test_holdout_is_fixed_by_the_content_hash(engine: Engine) -> None:
    titles = [f"item number {i}" for i in range(40)]
    for title in titles:
        task_id = add_task(engine, title, 0.5)
        label = label_task(engine, task_id, "other")
        h = text_hash(title, "")
        assert label.holdout == (int(h[:8], 16) % 1000 < 200)
    with Session(engine) as session:
        held = sum(label.holdout for label in labels_crud.current_labels(session))
    assert 0 < held < 40
    assert labels_crud.holdout_for("0" * 64, share=0.2)
    assert not labels_crud.holdout_for("f" * 64, share=0.2)


def test_stats_count_the_queue(engine: Engine) -> None:
    a, _b = add_task(engine, "a", 0.9), add_task(engine, "b", 0.5)
    add_task(engine, "c", 0.1, reason=ReviewReason.USER_REPORT)
    do(engine, leases.claim, reviewer="ann", lease_s=60)
    label_task(engine, a, "mlops")
    do(engine, leases.claim, reviewer="ann", lease_s=60)
    with Session(engine) as session:
        session.add(OutboxItem(kind="review", payload={}))
        session.commit()
    stats = do(engine, review_crud.stats, now=utcnow())
    assert stats == {
        "open": 1,
        "leased": 1,
        "labeled_today": 1,
        "shed": 0,
        "shed_now": 0,
        "by_reason": {"low_confidence": 1, "user_report": 1, "audit": 0, "label_check": 0},
        "by_stage": {"first": 2, "second": 0, "adjudicate": 0},
        "outbox_pending": 1,
        "outbox_stopped": 0,
    }


# --- re-prioritisation -------------------------------------------------------------------


def test_reprioritize_rescores_open_tasks_with_production(
    ctx: JobContext, engine: Engine, settings: Settings, shared_result: TrainResult
) -> None:
    sure = {"natural-language-processing": 0.0, "computer-vision": 0.0, "mlops": 0.0, "other": 1.0}
    texts = [YOLO, YOLO + "!", "Fine-tuning BERT for sentiment analysis", "Kubeflow pipelines"]
    ids = [review_jobs.process_review(payload(t, scores=sure))["task_id"] for t in texts]
    labelled = add_task(engine, "already done", 0.5)
    label_task(engine, labelled, "mlops")
    assert review_jobs.reprioritize("v-old") == {
        "model_version": None,
        "updated": 0,
        "requested": "v-old",
    }
    version = register_promoted(engine, settings, shared_result)
    result = review_jobs.reprioritize(version)
    assert result == {"model_version": version, "updated": 4, "requested": version}
    proba = score(shared_result.model, ctx.encoder, [Example(t, "", "other") for t in texts])
    classes = shared_result.model.classes
    rescored = [get(engine, i) for i in ids]
    for task, p in zip(rescored, proba, strict=True):
        assert task.model_version == version
        assert task.suggestion_tag == classes[int(p.argmax())]
        expected = dict(zip(classes, p.tolist(), strict=True))
        assert task.suggestion_scores == pytest.approx(expected, abs=1e-5)
        assert task.uncertainty == pytest.approx(prio.margin_uncertainty(task.suggestion_scores))
        assert task.priority == pytest.approx(review_intake.task_priority(task))
    yolo, copy = rescored[0], rescored[1]
    behind, ahead = (copy, yolo) if yolo.uncertainty >= copy.uncertainty else (yolo, copy)
    assert ahead.diversity_penalty == 0 and behind.diversity_penalty > 0.3
    assert get(engine, labelled).model_version is None  # labelled tasks are left alone


def test_reprioritize_keeps_a_label_checks_file_label(
    ctx: JobContext, engine: Engine, settings: Settings, shared_result: TrainResult
) -> None:
    """A label check asks a reviewer whether the training file's label is right: its suggestion
    is that label. A newly promoted model re-scores the task (scores, priority) and leaves the
    label, or the reviewer would never see what the file says."""
    doubted = {"natural-language-processing": 0.05, "computer-vision": 0.9, "mlops": 0.03}
    check = payload(
        YOLO,
        scores=doubted | {"other": 0.02},
        reason="label_check",
        prediction_id=None,
        tag="natural-language-processing",
    )
    task_id = review_jobs.process_review(check)["task_id"]
    assert get(engine, task_id).suggestion_tag == "natural-language-processing"
    version = register_promoted(engine, settings, shared_result)
    assert review_jobs.reprioritize(version)["updated"] == 1
    task = get(engine, task_id)
    assert task.model_version == version
    assert task.suggestion_tag == "natural-language-processing"
    [p] = score(shared_result.model, ctx.encoder, [Example(YOLO, "", "other")])
    expected = dict(zip(shared_result.model.classes, p.tolist(), strict=True))
    assert task.suggestion_scores == pytest.approx(expected, abs=1e-5)
    assert max(task.suggestion_scores, key=task.suggestion_scores.__getitem__) == "computer-vision"


def test_reprioritize_leaves_an_audit_item_to_the_version_that_served_it(
    ctx: JobContext, engine: Engine, settings: Settings, shared_result: TrainResult
) -> None:
    """An audit item measures the live precision of the version that accepted it, at the
    confidence it accepted it with: re-scored with a newly promoted version, the old version's
    audit lost it and the new one's counted an item it never served."""
    served = {"natural-language-processing": 0.01, "computer-vision": 0.97, "mlops": 0.01}
    item = payload(YOLO, scores=served | {"other": 0.01}, reason="audit", model_version="v-old")
    task_id = review_jobs.process_review(item)["task_id"]
    before = get(engine, task_id)
    version = register_promoted(engine, settings, shared_result)
    review_jobs.reprioritize(version)
    after = get(engine, task_id)
    assert (after.model_version, after.suggestion_tag) == ("v-old", "computer-vision")
    assert after.suggestion_scores == before.suggestion_scores
    assert after.priority == before.priority


def test_reprioritize_keeps_the_order_a_reviewer_skipped_tasks_in(
    ctx: JobContext, engine: Engine, settings: Settings, shared_result: TrainResult
) -> None:
    """Once every open task is one a reviewer skipped, their claims go round them, the one
    skipped longest ago first. A re-scoring (after each promotion) stamped every task as
    changed, in priority order: the round restarted from the top, and the task just skipped
    came straight back."""
    ids = [review_jobs.process_review(payload(title))["task_id"] for title in (YOLO, "Kubeflow")]
    version = register_promoted(engine, settings, shared_result)
    review_jobs.reprioritize(version)
    high, low = sorted(ids, key=lambda task_id: -get(engine, task_id).priority)
    for task_id in (low, high):  # the lower one skipped first
        do(engine, review_crud.skip, task_id=task_id, reviewer="ann")

    assert review_jobs.reprioritize(version)["updated"] == 2

    assert do(engine, leases.claim, reviewer="ann", lease_s=60).id == low


def test_an_arrival_keeps_the_order_a_reviewer_skipped_tasks_in(
    ctx: JobContext, engine: Engine
) -> None:
    """Once every open task is one a reviewer skipped, their claims go round them, the one
    skipped longest ago first. Another arrival of a task's content (counted on it) stamped it
    as changed: it went to the end of the round, and the task just skipped came straight
    back, as a re-scoring did."""
    first, then = (review_jobs.process_review(payload(t))["task_id"] for t in (YOLO, "Kubeflow"))
    for task_id in (first, then):
        do(engine, review_crud.skip, task_id=task_id, reviewer="ann")

    again = review_jobs.process_review(payload(YOLO))
    assert (again["action"], again["task_id"]) == ("bumped", first)

    assert do(engine, leases.claim, reviewer="ann", lease_s=60).id == first


def test_reprioritize_keeps_what_reviewers_and_reports_did_while_it_scored(
    ctx: JobContext,
    engine: Engine,
    settings: Settings,
    shared_result: TrainResult,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A re-scoring reads every open task, scores them all (minutes with a full queue: an
    encode per task), then writes each task's priority. A skip that landed meanwhile (its
    priority sunk by SKIP_STEP) and a user report that bumped a task (raised to the top) were
    overwritten with the priority of the task as first read: the skipped item came straight
    back, and the reported one sank to where an unreported one stands, until the next
    promotion re-scored the queue."""
    skipped_id = review_jobs.process_review(payload(YOLO))["task_id"]
    reported = payload("Kubeflow pipelines")
    reported_id = review_jobs.process_review(reported)["task_id"]
    labelled_id = review_jobs.process_review(payload("Fine-tuning BERT"))["task_id"]
    version = register_promoted(engine, settings, shared_result)
    real_score = review_jobs._score

    def score_while_reviewers_work(*args: Any, **kwargs: Any) -> Any:
        do(engine, leases.claim, reviewer="ann", lease_s=60)  # the top task
        [held] = [t for t in tasks(engine) if t.leased_by == "ann"]
        do(engine, review_crud.skip, task_id=held.id, reviewer="ann")
        report = {**reported, "prediction_id": new_id(), "reason": "user_report"}
        assert review_jobs.process_review(report)["action"] == "bumped"
        label_task(engine, labelled_id, "mlops", reviewer="bob")
        skipped_ids.append(held.id)
        return real_score(*args, **kwargs)

    skipped_ids: list[int | None] = []
    monkeypatch.setattr(review_jobs, "_score", score_while_reviewers_work)
    assert review_jobs.reprioritize(version)["updated"] == 2  # not the one labelled meanwhile
    [skipped_now] = skipped_ids
    assert skipped_now in (skipped_id, reported_id, labelled_id)
    for task in tasks(engine):
        assert task.model_version == version or task.id == labelled_id
        if task.status != ReviewStatus.LABELED:
            # As the stored terms say, skips and reports included.
            assert task.priority == pytest.approx(review_intake.task_priority(task)), task.id
    report_task = get(engine, reported_id)
    assert (report_task.reports, report_task.reason) == (1, ReviewReason.USER_REPORT)
    assert get(engine, skipped_now).skips == 1  # type: ignore[arg-type]
    labelled = get(engine, labelled_id)
    assert (labelled.status, labelled.model_version) == (ReviewStatus.LABELED, "v-test")
