"""Second opinions and adjudication (crud/overlap.py) on SQLite and PostgreSQL: the sample,
the stages a label moves a task through, who may take which stage, undo at each stage,
disputed content kept out of training data, and the agreement figures."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from httpx import Response
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from service.config import Settings
from service.crud import feedback as feedback_crud
from service.crud import labels as labels_crud
from service.crud import leases, overlap, queue_bound
from service.crud import review as review_crud
from service.crud.labels import holdout_for
from service.crud.predictions import in_audit_sample
from service.entities import (
    Feedback,
    FeedbackCreate,
    FeedbackStatus,
    Label,
    OutboxItem,
    Prediction,
    PredictionStatus,
)
from service.entities.common import utcnow
from service.entities.review import ReviewReason, ReviewStage, ReviewStatus
from service.errors import ConflictError
from service.ml.dataset import text_hash
from service.ml.training import TrainResult
from tests.conftest import auth, auth_as, sqlite_app
from tests.test_metrics import scrape
from tests.test_review_api import add_tasks, body
from tests.test_review_queue import TAGS, add_task, do, get, label_task

NLP, CV, MLOPS = "natural-language-processing", "computer-vision", "mlops"


def label(engine: Engine, task_id: int, tag: str, reviewer: str, share: float = 1.0) -> Label:
    return label_task(engine, task_id, tag, reviewer, overlap_share=share)


def claim(engine: Engine, reviewer: str) -> int | None:
    task = do(engine, leases.claim, reviewer=reviewer, lease_s=60)
    return None if task is None else task.id


def current_hashes(engine: Engine) -> set[str]:
    with Session(engine) as session:
        return {row.text_hash for row in labels_crud.current_labels(session)}


def test_the_sample_is_fixed_by_hash_and_independent_of_audit_and_holdout() -> None:
    hashes = [text_hash(f"item {i}", "") for i in range(4000)]
    sampled = [h for h in hashes if overlap.in_overlap_sample(h, share=0.3)]
    assert 0.27 < len(sampled) / len(hashes) < 0.33
    assert sampled == [h for h in hashes if overlap.in_overlap_sample(h, share=0.3)]
    assert not any(overlap.in_overlap_sample(h, share=0.0) for h in hashes)
    assert all(overlap.in_overlap_sample(h, share=1.0) for h in hashes)
    # Drawn from other hash digits: within the audit sample and the holdout, the same share.
    audited = [h for h in hashes if in_audit_sample(h, share=0.5)]
    held = [h for h in hashes if holdout_for(h, share=0.5)]
    for part in (audited, held):
        within = sum(overlap.in_overlap_sample(h, share=0.3) for h in part) / len(part)
        assert 0.25 < within < 0.35, within


def test_outside_the_sample_one_label_closes_the_task(engine: Engine) -> None:
    task_id = add_task(engine, "a plain task", 0.5)
    row = label(engine, task_id, NLP, "ann", share=0.0)
    task = get(engine, task_id)
    assert (task.status, task.stage, task.final_label_id) == (ReviewStatus.LABELED, "first", row.id)
    assert task.first_label_id is None and task.open_key is None


def test_agreeing_second_opinion_closes_the_task(engine: Engine) -> None:
    task_id = add_task(engine, "an overlap task", 0.5)
    assert claim(engine, "ann") == task_id
    first = label(engine, task_id, CV, "ann")
    task = get(engine, task_id)
    assert task.status == ReviewStatus.OPEN and task.stage == ReviewStage.SECOND
    assert (task.first_reviewer, task.first_label_id) == ("ann", first.id)
    assert task.open_key == task.text_hash  # still the content's one open task
    # Ann's label is training data at once; the second opinion is asked of someone else.
    assert task.text_hash in current_hashes(engine)
    assert claim(engine, "ann") is None
    with pytest.raises(ConflictError, match=r"already labelled '.*' by 'ann' \(you\)"):
        label(engine, task_id, CV, "ann")  # hers is the first opinion: undo it to change it
    assert claim(engine, "bob") == task_id
    second = label(engine, task_id, CV, "bob")
    task = get(engine, task_id)
    assert task.status == ReviewStatus.LABELED and task.open_key is None
    assert (task.second_reviewer, task.second_label_id, task.final_label_id) == (
        "bob",
        second.id,
        second.id,
    )
    with Session(engine) as session:
        assert overlap.pairs(session) == [overlap.Pair("ann", CV, "bob", CV, None)]
        stats = {s.reviewer: s for s in labels_crud.reviewer_stats(session, since=utcnow())}
    # Bob's label superseded Ann's with the same tag: that is not a change of her label.
    assert stats["ann"].changed_by_others == 0
    assert (stats["ann"].paired, stats["ann"].agreed_with_peer) == (1, 1.0)


def test_disagreement_waits_for_a_third_reviewer_and_stays_out_of_training(
    engine: Engine,
) -> None:
    task_id = add_task(engine, "a disputed task", 0.5)
    other = add_task(engine, "an ordinary task", 0.1)
    label(engine, other, MLOPS, "ann", share=0.0)
    label(engine, task_id, NLP, "ann")
    label(engine, task_id, CV, "bob")
    task = get(engine, task_id)
    assert task.status == ReviewStatus.OPEN and task.stage == ReviewStage.ADJUDICATE
    assert task.second_reviewer == "bob"
    assert current_hashes(engine) == {get(engine, other).text_hash}
    assert claim(engine, "ann") is None and claim(engine, "bob") is None
    with Session(engine) as session:
        shown = overlap.earlier_labels(session, task=task)
        assert [(e.reviewer, e.tag) for e in shown] == [("ann", NLP), ("bob", CV)]
        assert overlap.agreement_stats(session).waiting_decision == 1
    assert claim(engine, "cat") == task_id
    decided = label(engine, task_id, NLP, "cat")
    task = get(engine, task_id)
    assert task.status == ReviewStatus.LABELED and task.final_label_id == decided.id
    assert task.text_hash in current_hashes(engine)
    with Session(engine) as session:
        assert overlap.earlier_labels(session, task=task) == []
        assert labels_crud.current_label(session, text_hash=task.text_hash).tag == NLP  # type: ignore[union-attr]
        mine = overlap.by_reviewer(overlap.pairs(session))
        stats = overlap.agreement_stats(session)
    assert (mine["ann"].decided, mine["ann"].upheld_rate) == (1, 1.0)
    assert (mine["bob"].decided, mine["bob"].upheld_rate) == (1, 0.0)
    assert (stats.pairs, stats.agreed, stats.decided, stats.waiting_decision) == (1, 0, 1, 0)


def test_undo_steps_back_one_stage(engine: Engine) -> None:
    task_id = add_task(engine, "an undone task", 0.5)
    label(engine, task_id, NLP, "ann")
    # Ann takes her first label back while it waits for a second opinion.
    task = do(engine, review_crud.reopen, task_id=task_id, reviewer="ann", lease_s=60)
    assert (task.status, task.stage, task.leased_by) == (ReviewStatus.LEASED, "first", "ann")
    assert task.first_reviewer is None and task.first_label_id is None
    label(engine, task_id, CV, "ann")
    label(engine, task_id, NLP, "bob")
    with pytest.raises(ConflictError):  # Ann's label is no longer the last word
        do(engine, review_crud.reopen, task_id=task_id, reviewer="ann", lease_s=60)
    task = do(engine, review_crud.reopen, task_id=task_id, reviewer="bob", lease_s=60)
    assert (task.stage, task.second_reviewer, task.leased_by) == ("second", None, "bob")
    label(engine, task_id, CV, "bob")  # Bob agrees after all: closed
    assert get(engine, task_id).status == ReviewStatus.LABELED
    task = do(engine, review_crud.reopen, task_id=task_id, reviewer="bob", lease_s=60)
    assert (task.status, task.stage, task.final_label_id) == (ReviewStatus.LEASED, "second", None)
    label(engine, task_id, CV, "bob")
    with Session(engine) as session:
        assert overlap.pairs(session) == [overlap.Pair("ann", CV, "bob", CV, None)]


def _report(engine: Engine, task_id: int, correct_tag: str) -> int:
    """A user's report that a task reviews (as the review job links it)."""
    task = get(engine, task_id)
    with Session(engine) as session:
        row = Feedback(
            prediction_id="p" * 32,
            correct_tag=correct_tag,
            text_hash=task.text_hash,
            status=FeedbackStatus.IN_REVIEW,
            task_id=task_id,
        )
        session.add(row)
        session.commit()
        assert row.id is not None
        return row.id


def _settled(engine: Engine, feedback_id: int) -> tuple[str, str | None]:
    with Session(engine) as session:
        row = feedback_crud.get_feedback(session, feedback_id=feedback_id)
        view = feedback_crud.feedback_public(session, feedback=row)
    return view.status, view.final_tag


def test_a_report_is_settled_by_the_tasks_final_label_only(engine: Engine) -> None:
    """Not by a first label waiting for a second opinion, nor by two that differ; an undo
    puts it back in review; and its final tag is the label that settled it, whatever the
    content's label later becomes."""
    task_id = add_task(engine, "a reported task", 0.5, reason=ReviewReason.USER_REPORT)
    feedback_id = _report(engine, task_id, MLOPS)
    label(engine, task_id, MLOPS, "ann")
    assert _settled(engine, feedback_id) == ("in_review", None)
    label(engine, task_id, CV, "bob")  # a dispute: it waits for a decision
    assert _settled(engine, feedback_id) == ("in_review", None)
    label(engine, task_id, CV, "cat")
    assert _settled(engine, feedback_id) == ("rejected", CV)
    do(engine, review_crud.reopen, task_id=task_id, reviewer="cat", lease_s=60)
    assert _settled(engine, feedback_id) == ("in_review", None)
    label(engine, task_id, MLOPS, "cat")
    assert _settled(engine, feedback_id) == ("confirmed", MLOPS)
    later = add_task(engine, "a reported task", 0.5)  # the same content, reviewed again
    label(engine, later, NLP, "dan", share=0.0)
    assert _settled(engine, feedback_id) == ("confirmed", MLOPS)


def test_a_trusted_report_is_not_confirmed_by_a_label_still_in_review(engine: Engine) -> None:
    """A first label waiting for a second opinion is the content's label in force, but not
    its last word: a trusted report agreeing with it goes to review like any other."""
    task_id = add_task(engine, "a reported task", 0.5)
    label(engine, task_id, MLOPS, "ann")  # in the overlap sample: waits for a second opinion
    task = get(engine, task_id)
    prediction = Prediction(
        id="p" * 32,
        text_hash=task.text_hash,
        title=task.title,
        description=task.description,
        tag=CV,
        confidence=0.6,
        scores={CV: 0.6, MLOPS: 0.4},
        status=PredictionStatus.REVIEW,
        model_version="v0001",
        latency_ms=1.0,
    )
    with Session(engine, expire_on_commit=False) as session:
        session.add(prediction)
        session.commit()
        feedback, created = feedback_crud.create_feedback(
            session,
            body=FeedbackCreate(prediction_id=prediction.id, correct_tag=MLOPS, reporter="eve"),
            prediction=prediction,
            tags=TAGS,
            trust=True,
            holdout_share=0.0,
        )
        waiting = session.exec(select(OutboxItem)).all()
    assert created and feedback.status == FeedbackStatus.RECEIVED
    assert [row.payload["feedback_id"] for row in waiting] == [feedback.id]


def test_the_queue_bound_sheds_only_unlabelled_tasks(engine: Engine) -> None:
    waiting = add_task(engine, "waits for a second opinion", 0.01)
    label(engine, waiting, NLP, "ann")
    fresh = add_task(engine, "never labelled", 0.02)
    later = utcnow() + timedelta(days=60)
    shed = do(engine, queue_bound.shed, limit=0, max_age=timedelta(days=30), now=later)
    assert shed == {"age": 1, "limit": 0}
    assert get(engine, fresh).status == ReviewStatus.SHED
    assert get(engine, waiting).status == ReviewStatus.OPEN


def test_kappa_against_a_hand_computed_case() -> None:
    pairs = [
        overlap.Pair("a", "x", "b", "x", None),
        overlap.Pair("a", "x", "b", "y", None),
        overlap.Pair("a", "y", "c", "y", None),
        overlap.Pair("b", "y", "c", "y", None),
    ]
    # Observed 3/4; tag shares x 3/8, y 5/8: chance (9 + 25) / 64.
    expected = (0.75 - 34 / 64) / (1 - 34 / 64)
    assert overlap.kappa(overlap.table_of(pairs)) == pytest.approx(expected)
    assert overlap.kappa(overlap.table_of([])) is None
    assert overlap.kappa(overlap.table_of([overlap.Pair("a", "x", "b", "x", None)])) is None
    assert overlap.specific_agreement(pairs) == {"x": round(2 / 3, 6), "y": 0.8}


def test_second_opinion_and_decision_over_http(
    make_settings: Callable[..., Settings], tmp_path: Path, shared_result: TrainResult
) -> None:
    """The whole loop through the API: Ann labels, Bob gives a blind second opinion that
    differs, the content leaves the label export, Cat sees both and decides."""
    with sqlite_app(make_settings, tmp_path, shared_result, review_overlap_share=1.0) as client:
        [task_id] = add_tasks(client.app.state.tagflow.engine, 1)  # type: ignore[attr-defined]

        def act(path: str, reviewer: str, **extra: str) -> Response:
            return client.post(path, json=body(reviewer, **extra), headers=auth("reviewer"))

        assert act("/review/claim", "ann").json()["stage"] == "first"
        saved = act(f"/review/{task_id}/label", "ann", tag=NLP)
        assert saved.status_code == 201
        assert act("/review/claim", "ann").status_code == 204
        # Ann's label again is hers already (a retry, say): it counts once, not as a second.
        mine = act(f"/review/{task_id}/label", "ann", tag=NLP)
        assert mine.status_code == 200 and mine.json()["id"] == saved.json()["id"]
        changed = act(f"/review/{task_id}/label", "ann", tag=CV)
        assert changed.status_code == 409 and changed.json()["label"]["tag"] == NLP
        blind = act("/review/claim", "bob").json()
        assert (blind["task_id"], blind["stage"], blind["earlier_labels"]) == (
            task_id,
            "second",
            [],
        )
        assert act(f"/review/{task_id}/label", "bob", tag=CV).status_code == 201
        export = client.get("/labels/export?format=jsonl", headers=auth("admin"))
        assert export.status_code == 200 and export.text.strip() == ""
        stats = client.get("/review/stats", headers=auth("reviewer")).json()
        assert stats["by_stage"] == {"first": 0, "second": 0, "adjudicate": 1}
        waiting = scrape(client)
        assert waiting[("tagflow_review_stage_tasks", frozenset({("stage", "adjudicate")}))] == 1
        assert waiting[("tagflow_review_pairs", frozenset())] == 1
        decide = act("/review/claim", "cat").json()
        assert decide["stage"] == "adjudicate"
        assert decide["earlier_labels"] == [
            {"reviewer": "ann", "tag": NLP},
            {"reviewer": "bob", "tag": CV},
        ]
        assert act(f"/review/{task_id}/label", "cat", tag=CV).status_code == 201
        export = client.get("/labels/export?format=jsonl", headers=auth("admin"))
        assert [json.loads(line)["tag"] for line in export.text.splitlines()] == [CV]
        agreement = client.get("/review/agreement", headers=auth("reviewer")).json()
        assert agreement == {
            "pairs": 1,
            "agreed": 0,
            "agreement": 0.0,
            "kappa": -1.0,
            "by_tag": {CV: 0.0, NLP: 0.0},
            "waiting_second": 0,
            "waiting_decision": 0,
            "decided": 1,
        }
        metrics = scrape(client)  # the same figures for Prometheus, read by the alert rules
        assert metrics[("tagflow_review_pairs", frozenset())] == 1
        assert metrics[("tagflow_review_pairs_agreed", frozenset())] == 0
        assert metrics[("tagflow_review_kappa", frozenset())] == -1.0
        assert metrics[("tagflow_review_stage_tasks", frozenset({("stage", "adjudicate")}))] == 0
        people = client.get("/review/reviewers", headers=auth("reviewer")).json()["reviewers"]
        upheld = {r["reviewer"]: (r["paired"], r["disputes_decided"], r["upheld"]) for r in people}
        assert upheld == {"ann": (1, 1, 0.0), "bob": (1, 1, 1.0), "cat": (0, 0, None)}


def test_a_personal_key_cannot_give_its_own_second_opinion(
    make_settings: Callable[..., Settings], tmp_path: Path, shared_result: TrainResult
) -> None:
    """With personal keys, "another reviewer" is another key: Pia cannot second her own label
    by typing another name; Quin's key can."""
    with sqlite_app(make_settings, tmp_path, shared_result, review_overlap_share=1.0) as client:
        [task_id] = add_tasks(client.app.state.tagflow.engine, 1)  # type: ignore[attr-defined]
        assert client.post("/review/claim", headers=auth_as("pia")).json()["stage"] == "first"
        first = client.post(f"/review/{task_id}/label", json={"tag": NLP}, headers=auth_as("pia"))
        assert first.status_code == 201
        posing = client.post("/review/claim", json=body("zed"), headers=auth_as("pia"))
        assert posing.status_code == 403
        assert client.post("/review/claim", headers=auth_as("pia")).status_code == 204
        second = client.post("/review/claim", headers=auth_as("quin")).json()
        assert (second["task_id"], second["stage"]) == (task_id, "second")
