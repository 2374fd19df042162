"""GET /review/reviewers: each reviewer's labels, agreement with the suggestion, and the labels
another reviewer later changed."""

from __future__ import annotations

from datetime import timedelta

from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from service.crud import labels as labels_crud
from service.crud import review as review_crud
from service.entities import Label
from service.entities.common import utcnow
from service.entities.review import ReviewReason
from tests.conftest import auth
from tests.test_review_queue import add_task, do, label_task


def test_reviewer_stats_count_agreement_and_changes_by_others(
    client: TestClient, engine: Engine
) -> None:
    suggested = [add_task(engine, f"item {i}", 0.5, suggestion_tag="mlops") for i in range(3)]
    no_suggestion = add_task(engine, "no suggestion", 0.5)
    first = label_task(engine, suggested[0], "mlops", reviewer="ann")  # kept the suggestion
    label_task(engine, suggested[1], "other", reviewer="ann")  # changed it
    label_task(engine, no_suggestion, "other", reviewer="ann")
    label_task(engine, suggested[2], "computer-vision", reviewer="bob")
    # Bob takes it back and answers again: one answer of his, not two.
    do(engine, review_crud.reopen, task_id=suggested[2], reviewer="bob", lease_s=60)
    label_task(engine, suggested[2], "mlops", reviewer="bob")
    # A user reports ann's first label; bob's review of the report replaces it.
    report = add_task(engine, "item 0", 0.9, reason=ReviewReason.USER_REPORT)
    label_task(engine, report, "computer-vision", reviewer="bob")
    # An audit item, labelled blind: its tag was never shown, so no agreement with it counts.
    audit = add_task(engine, "audited", 0.95, suggestion_tag="mlops", reason=ReviewReason.AUDIT)
    label_task(engine, audit, "mlops", reviewer="bob")
    # One of ann's labels was yesterday's.
    with Session(engine) as session:
        session.exec(
            update(Label)
            .where(col(Label.id) == first.id)
            .values(created_at=utcnow() - timedelta(days=1))
        )
        session.commit()

    response = client.get("/review/reviewers", headers=auth("reviewer"))
    assert response.status_code == 200, response.text
    by_name = {r["reviewer"]: r for r in response.json()["reviewers"]}
    ann, bob = by_name["ann"], by_name["bob"]
    assert (ann["labels"], ann["labels_today"], ann["with_suggestion"]) == (3, 2, 2)
    assert ann["agreed_with_suggestion"] == 0.5 and ann["changed_by_others"] == 1
    assert (bob["labels"], bob["labels_today"], bob["with_suggestion"]) == (3, 3, 1)
    assert bob["agreed_with_suggestion"] == 1.0 and bob["changed_by_others"] == 0
    assert client.get("/review/reviewers", headers=auth("client")).status_code == 403
    # The queue's own count of today's labels uses the same day.
    stats = do(engine, review_crud.stats, now=utcnow())
    assert stats["labeled_today"] == 5


def test_a_label_taken_back_and_not_given_again_is_no_work_done(engine: Engine) -> None:
    """Undo takes a label back: the undone label counts until its reviewer labels again (an
    undo and a new label are one answer), but not when they pass the item on instead. It
    still counted in /review/reviewers and the queue's labeled_today, and once another
    reviewer labelled the item, as a label of hers that someone else changed."""
    task_id = add_task(engine, "The Annotated GPT-2", 0.5, suggestion_tag="mlops")

    def counts() -> tuple[dict[str, tuple[int, int, int]], int]:
        reviewers = do(engine, labels_crud.reviewer_stats, since=utcnow() - timedelta(hours=1))
        by_name = {r.reviewer: (r.labels, r.labels_today, r.changed_by_others) for r in reviewers}
        return by_name, do(engine, review_crud.stats, now=utcnow())["labeled_today"]

    label_task(engine, task_id, "mlops", reviewer="ann")
    assert counts() == ({"ann": (1, 1, 0)}, 1)
    do(engine, review_crud.reopen, task_id=task_id, reviewer="ann", lease_s=60)
    assert counts() == ({}, 0)  # taken back, while ann holds the item again
    do(engine, review_crud.skip, task_id=task_id, reviewer="ann")
    assert counts() == ({}, 0)  # and once she has passed it on
    label_task(engine, task_id, "natural-language-processing", reviewer="bob")
    assert counts() == ({"bob": (1, 1, 0)}, 1)
