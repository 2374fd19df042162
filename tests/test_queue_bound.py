"""The review queue's bound (crud.queue_bound.shed, run after each labelling job): unsure tasks past
the limit or the age limit leave the queue as `shed`; what people sent and the audit stay."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from service.config import Settings
from service.crud import labels as labels_crud
from service.crud import leases, overlap, queue_bound
from service.crud import review as review_crud
from service.entities import Label, LabelSource
from service.entities.common import utcnow
from service.entities.review import ReviewReason, ReviewStage, ReviewStatus, ReviewTask
from service.errors import ConflictError
from tests.conftest import auth
from tests.test_review_queue import add_task, do, get, label_task, payload, tasks
from workers import review_jobs
from workers.context import JobContext, use_context

MONTH = timedelta(days=30)
TITLES = [
    "Kubeflow pipelines on a Kubernetes cluster",
    "Real-time object detection with YOLO",
    "Fine-tuning BERT for sentiment analysis",
    "Graph neural networks for molecules",
    "Forecasting electricity demand with ARIMA",
]


def set_fields(engine: Engine, task_id: int, **values: object) -> None:
    with Session(engine) as session:
        session.exec(update(ReviewTask).where(col(ReviewTask.id) == task_id).values(**values))
        session.commit()


def statuses(engine: Engine) -> dict[str, ReviewStatus]:
    return {t.title: t.status for t in tasks(engine)}


def protected(engine: Engine) -> list[int]:
    """One task of each kind the bound must never shed, each at the bottom of the queue."""
    ids = [
        add_task(engine, "reported", 0.0, reason=ReviewReason.USER_REPORT, reports=1),
        add_task(engine, "unsure, then reported", 0.0, reports=1),
        add_task(engine, "audit", 0.0, reason=ReviewReason.AUDIT),
        add_task(engine, "label check", 0.0, reason=ReviewReason.LABEL_CHECK),
        add_task(engine, "leased", 0.0),
    ]
    soon = utcnow() + timedelta(minutes=10)
    set_fields(engine, ids[-1], status=ReviewStatus.LEASED, leased_by="ann", lease_expires_at=soon)
    return ids


def test_past_the_limit_the_lowest_priority_unsure_tasks_are_shed(engine: Engine) -> None:
    for title, uncertainty in [("u9", 0.9), ("u2", 0.2), ("u6", 0.6), ("u1", 0.1), ("u4", 0.4)]:
        add_task(engine, title, uncertainty)
    protected(engine)

    shed = do(engine, queue_bound.shed, limit=3, max_age=None, now=utcnow())

    assert shed == {"age": 0, "limit": 2}
    after = statuses(engine)
    assert {t for t, s in after.items() if s == ReviewStatus.SHED} == {"u1", "u2"}
    assert after["leased"] == ReviewStatus.LEASED
    assert [t for t, s in after.items() if s == ReviewStatus.OPEN] == [
        "u9", "u6", "u4", "reported", "unsure, then reported", "audit", "label check"
    ]  # fmt: skip
    assert all(t.open_key is None for t in tasks(engine) if t.status == ReviewStatus.SHED)
    stats = do(engine, review_crud.stats, now=utcnow())
    assert stats["shed"] == 2 and stats["open"] == 7
    # At the bound, nothing more goes; a limit of 0 is no limit.
    assert do(engine, queue_bound.shed, limit=3, max_age=None, now=utcnow()) == {
        "age": 0,
        "limit": 0,
    }
    assert do(engine, queue_bound.shed, limit=0, max_age=None, now=utcnow()) == {
        "age": 0,
        "limit": 0,
    }


def test_unsure_tasks_past_the_age_limit_are_shed(engine: Engine) -> None:
    old, fresh = add_task(engine, "old", 0.9), add_task(engine, "fresh", 0.1)
    kept = protected(engine)
    for task_id in (old, *kept):
        set_fields(engine, task_id, created_at=utcnow() - MONTH - timedelta(hours=1))

    assert do(engine, queue_bound.shed, limit=0, max_age=MONTH, now=utcnow()) == {
        "age": 1,
        "limit": 0,
    }
    assert get(engine, old).status == ReviewStatus.SHED
    assert get(engine, fresh).status == ReviewStatus.OPEN
    assert [get(engine, k).status for k in kept] == [ReviewStatus.OPEN] * 4 + [ReviewStatus.LEASED]


def shed_under(engine: Engine, reviewer: str, title: str) -> int:
    """A task `reviewer` claimed and kept on the page past its lease: it went back to the
    queue (a claim expires a lapsed lease so) and the bound shed it."""
    task_id = add_task(engine, title, 0.1)
    assert do(engine, leases.claim, reviewer=reviewer, lease_s=600).id == task_id
    set_fields(engine, task_id, status=ReviewStatus.OPEN, leased_by=None, lease_expires_at=None)
    do(engine, queue_bound.shed, limit=0, max_age=timedelta(0), now=utcnow() + timedelta(days=1))
    assert get(engine, task_id).status == ReviewStatus.SHED
    return task_id


def test_a_late_label_of_a_shed_task_is_kept(engine: Engine) -> None:
    task_id = shed_under(engine, "ann", "u")
    again = add_task(engine, "u", 0.1)  # the unique open key was freed: the content queues again
    assert again != task_id and get(engine, again).status == ReviewStatus.OPEN

    saved = label_task(engine, task_id, "mlops")  # was a 409, and the label lost

    assert do(engine, labels_crud.current_label, text_hash=saved.text_hash).id == saved.id
    task = get(engine, task_id)
    assert (task.status, task.final_label_id, task.open_key) == (
        ReviewStatus.LABELED,
        saved.id,
        None,
    )
    # Sent again (its answer lost), it is the label saved, not a second one.
    with pytest.raises(review_crud.LabelledAlready) as already:
        label_task(engine, task_id, "mlops")
    assert already.value.label.id == saved.id
    assert get(engine, again).status == ReviewStatus.OPEN  # its own answer settles it


def test_a_late_label_against_a_label_given_meanwhile_waits_for_a_decision(
    engine: Engine,
) -> None:
    task_id = shed_under(engine, "ann", "u")
    bobs = label_task(engine, add_task(engine, "u", 0.1), "computer-vision", reviewer="bob")

    anns = label_task(engine, task_id, "mlops")

    task = get(engine, task_id)
    assert (task.status, task.stage, task.open_key) == (
        ReviewStatus.OPEN,
        ReviewStage.ADJUDICATE,
        bobs.text_hash,
    )
    assert (task.first_label_id, task.second_label_id) == (bobs.id, anns.id)
    # Left out of the training data until decided, as any dispute; a third reviewer decides.
    assert bobs.text_hash not in {lab.text_hash for lab in do(engine, labels_crud.current_labels)}
    assert do(engine, leases.claim, reviewer="ann", lease_s=600) is None
    assert do(engine, leases.claim, reviewer="cat", lease_s=600).id == task_id
    decided = label_task(engine, task_id, "mlops", reviewer="cat")
    assert get(engine, task_id).final_label_id == decided.id
    assert decided.id in {lab.id for lab in do(engine, labels_crud.current_labels)}


def test_a_late_label_agreeing_with_the_label_given_meanwhile_is_labelled(engine: Engine) -> None:
    task_id = shed_under(engine, "ann", "u")
    label_task(engine, add_task(engine, "u", 0.1), "mlops", reviewer="bob")

    anns = label_task(engine, task_id, "mlops")

    assert (get(engine, task_id).status, get(engine, task_id).final_label_id) == (
        ReviewStatus.LABELED,
        anns.id,
    )


def test_a_shed_task_whose_lease_ran_out_stays_shed(engine: Engine) -> None:
    """A task whose lease ran out, taken back to the queue by a claim and then shed: a skip or
    release of it by that reviewer's page must not bring it back to the queue, past the bound
    and without its open key. It did while the sweep kept the lapsed expiry (e3df198, since
    reverted), so the shed task here is given stale lease fields by hand, as a row written then
    still has them: `_may_act` must refuse it by its status, not by its lease fields."""
    lapsed, other = add_task(engine, "u", 0.9), add_task(engine, "v", 0.1)
    assert do(engine, leases.claim, reviewer="ann", lease_s=600).id == lapsed
    assert do(engine, leases.claim, reviewer="bob", lease_s=600).id == other
    set_fields(engine, lapsed, lease_expires_at=utcnow() - timedelta(seconds=1))
    assert do(engine, leases.claim, reviewer="bob", lease_s=600).id == other  # expires ann's
    assert (get(engine, lapsed).status, get(engine, lapsed).leased_by) == (ReviewStatus.OPEN, None)
    do(engine, queue_bound.shed, limit=0, max_age=timedelta(0), now=utcnow() + timedelta(days=1))
    assert get(engine, lapsed).status == ReviewStatus.SHED
    set_fields(engine, lapsed, leased_by="ann", lease_expires_at=utcnow() - timedelta(seconds=1))

    for act in (review_crud.skip, leases.release):
        with pytest.raises(ConflictError, match="shed from the queue"):
            do(engine, act, task_id=lapsed, reviewer="ann")

    assert (get(engine, lapsed).status, get(engine, lapsed).skips) == (ReviewStatus.SHED, 0)
    assert do(engine, review_crud.stats, now=utcnow())["shed"] == 1


@pytest.fixture
def bounded_ctx(
    make_settings: Callable[..., Settings], database_url: str, engine: Engine
) -> Iterator[JobContext]:
    context = JobContext(make_settings(database_url=database_url, review_queue_limit=3))
    use_context(context)
    yield context
    use_context(None)
    context.engine.dispose()


def test_each_labelling_job_applies_the_bound(bounded_ctx: JobContext, engine: Engine) -> None:
    # Unrelated texts, so no diversity penalty reorders them: priority follows the margin.
    batch = [
        payload(title, scores={"mlops": 0.5 + i / 20, "other": 0.5 - i / 20})
        for i, title in enumerate(TITLES)
    ]
    batch.append(payload("A user says this tag is wrong", reason="user_report"))

    result = review_jobs.process_reviews(batch)

    assert result["shed"] == {"age": 0, "limit": 2}
    open_titles = {t.title for t in tasks(engine) if t.status == ReviewStatus.OPEN}
    # The two surest items (smallest uncertainty) went; the report is beyond the bound.
    assert open_titles == {*TITLES[:3], batch[-1]["title"]}
    # The same content arriving again opens a new task; the bound then sheds the lowest again.
    again = review_jobs.process_reviews([payload(TITLES[4], scores=batch[4]["scores"])])
    assert again["actions"] == {"created": 1} and again["shed"] == {"age": 0, "limit": 1}


def test_operators_see_what_the_bound_shed(client: TestClient, engine: Engine) -> None:
    for title, uncertainty in [("u9", 0.9), ("u2", 0.2), ("u1", 0.1)]:
        add_task(engine, title, uncertainty)
    do(engine, queue_bound.shed, limit=1, max_age=None, now=utcnow())

    stats = client.get("/review/stats", headers=auth("reviewer")).json()
    assert (stats["open"], stats["shed"], stats["shed_now"]) == (1, 2, 2)
    metrics = client.get("/metrics", headers=auth("admin")).text
    assert 'tagflow_review_tasks{state="shed"} 2.0' in metrics
    assert 'tagflow_review_tasks{state="open"} 1.0' in metrics
    assert "tagflow_review_shed_total 2.0" in metrics


def test_a_late_label_leaves_the_count_of_tasks_ever_shed(
    client: TestClient, engine: Engine
) -> None:
    """The shedding alert reads what the bound shed as a count that only grows. It read the
    tasks in state `shed`, which a late label takes one out of: an hour in which the bound shed
    one task and a reviewer labelled another late showed no shedding at all."""
    late = shed_under(engine, "ann", "u")
    metrics = client.get("/metrics", headers=auth("admin")).text
    assert "tagflow_review_shed_total 1.0" in metrics

    label_task(engine, late, "mlops")
    add_task(engine, "u2", 0.2)
    do(engine, queue_bound.shed, limit=0, max_age=timedelta(0), now=utcnow() + MONTH)

    metrics = client.get("/metrics", headers=auth("admin")).text
    assert 'tagflow_review_tasks{state="shed"} 1.0' in metrics  # one in, one out
    assert "tagflow_review_shed_total 2.0" in metrics
    stats = client.get("/review/stats", headers=auth("reviewer")).json()
    assert (stats["shed"], stats["shed_now"]) == (2, 1)


def test_a_late_label_racing_a_label_of_the_queued_task_leaves_one_label_in_force(
    engine: Engine,
) -> None:
    """A late label of a shed task labels content that may be in the queue again, so two
    labels of one content can now be written at once. Ann's (the late one) took the content's
    turn and bob's (the queued task's) did not: each read no label in force, and both stayed
    in force, the export holding the content twice with two tags. Bob's now waits for ann's
    and supersedes it, as the queued task's answer settles the content."""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite's one write lock makes the two labels take turns")
    shed_id = shed_under(engine, "ann", "u")
    queued = add_task(engine, "u", 0.1)
    saved: dict[str, Label] = {}

    def send(task_id: int, tag: str, reviewer: str) -> None:
        saved[reviewer] = label_task(engine, task_id, tag, reviewer=reviewer)

    late = threading.Thread(target=send, args=(shed_id, "mlops", "ann"))
    bobs = threading.Thread(target=send, args=(queued, "computer-vision", "bob"))
    with Session(engine) as holder:
        # Ann's label stops at the shed task's row, written and not committed yet.
        holder.exec(select(ReviewTask).where(col(ReviewTask.id) == shed_id).with_for_update())
        late.start()
        waiting = text(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        deadline = time.monotonic() + 30
        while holder.execute(waiting).scalar_one() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        bobs.start()
        bobs.join(timeout=2)  # before: done while ann's label was not committed
    late.join(timeout=60)
    bobs.join(timeout=60)

    in_force = [lab for lab in do(engine, labels_crud.current_labels) if lab.title == "u"]
    assert [(lab.reviewer, lab.tag) for lab in in_force] == [("bob", "computer-vision")]
    assert saved["bob"].supersedes == saved["ann"].id


def test_a_late_label_against_a_trusted_report_supersedes_it(engine: Engine) -> None:
    """With TAGFLOW_TRUST_FEEDBACK, a report about the content of a shed task (no task waits
    for it) labels it. A late label of the shed task with another tag took that report for
    another reviewer's opinion: the content left the training data for an adjudication, and
    the reporter counted as a reviewer in the agreement figures. A reviewer's label replaces
    a report's, as on any task that reviews a report."""
    task_id = shed_under(engine, "ann", "u")
    shed = get(engine, task_id)
    with Session(engine) as session:  # as feedback._trust writes a trusted report's label
        labels_crud.append_label(
            session,
            text_hash=shed.text_hash,
            title=shed.title,
            description="",
            tag="computer-vision",
            reviewer="app-user",
            holdout_share=0.0,
            source=LabelSource.FEEDBACK,
        )
        session.commit()

    anns = label_task(engine, task_id, "mlops")

    task = get(engine, task_id)
    assert (task.status, task.stage, task.final_label_id) == (
        ReviewStatus.LABELED,
        ReviewStage.FIRST,
        anns.id,
    )
    in_force = [lab for lab in do(engine, labels_crud.current_labels) if lab.title == "u"]
    assert [lab.id for lab in in_force] == [anns.id]
    assert do(engine, overlap.pairs) == []
