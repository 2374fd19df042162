"""Shadow mode end to end on SQLite and PostgreSQL: a registered candidate is scored beside
production on live traffic, and GET /models/{version}/shadow reports its agreement with
production and with reviewer labels."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from service.api.main import create_app
from service.config import SEED_DATASET, Settings
from service.crud import labels as labels_crud
from service.crud import review as review_crud
from service.crud import shadow as shadow_crud
from service.entities import Prediction, ShadowPrediction
from service.ml import registry
from service.ml.dataset import Example, item_text
from service.ml.encoder import Encoder
from service.ml.pipeline import base_split
from service.ml.training import TrainResult, train
from service.tags import TagSet, load_tags
from tests.conftest import auth, make_prediction, register_promoted
from tests.test_metrics import scrape, total
from tests.test_retraining import add_labels
from tests.test_review_queue import add_task, do, label_task
from tests.waiting import wait_for_watch_rounds, wait_until


@pytest.fixture(scope="module")
def noisy_result(encoder: Encoder, tags: TagSet) -> TrainResult:
    """A candidate that learnt every `mlops` item as `other`: it disagrees with production on
    MLOps content, confidently rather than by a coin flip."""
    train_set, eval_set, _ = base_split(SEED_DATASET, tags=tags)
    relabelled = [
        Example(e.title, e.description, "other") if e.tag == "mlops" else e for e in train_set
    ]
    return train(relabelled, eval_set, encoder=encoder, target_precision=0.99)


@pytest.fixture
def shadow_client(
    make_settings: Callable[..., Settings],
    database_url: str,
    engine: Engine,
    seed_result: TrainResult,
    noisy_result: TrainResult,
) -> Iterator[tuple[TestClient, str]]:
    """The app with the seed model in production and the noisy one registered as candidate."""
    settings = make_settings(database_url=database_url, shadow=True)
    register_promoted(engine, settings, seed_result)
    with Session(engine, expire_on_commit=False) as session:
        candidate = registry.register(
            session, result=noisy_result, artifacts_dir=settings.artifacts_dir
        ).version
    with TestClient(create_app(settings)) as client:
        yield client, candidate


def shadow_tags(client: TestClient, version: str, encoder: Encoder, texts: list[str]) -> list[str]:
    """What the candidate answers, computed here from its artifact."""
    state = client.app.state.tagflow
    with Session(state.engine) as session:
        row = registry.get_version(session, version=version)
        model = registry.load_model(row, artifacts_dir=state.settings.artifacts_dir)
    proba = model.predict_proba(texts, encoder.encode)
    return [model.classes[i] for i in proba.argmax(axis=1)]


def stats(client: TestClient, version: str) -> dict[str, Any]:
    response = client.get(f"/models/{version}/shadow", headers=auth("client"))
    assert response.status_code == 200, response.text
    return response.json()


def test_shadow_agreement_with_production_and_labels(
    shadow_client: tuple[TestClient, str],
    engine: Engine,
    encoder: Encoder,
    tags: TagSet,
) -> None:
    client, candidate = shadow_client
    state = client.app.state.tagflow
    wait_until(lambda: state.predictor.shadow is not None, what="the candidate as shadow")
    assert state.predictor.shadow.version == candidate
    assert stats(client, candidate) == {
        "version": candidate,
        "n": 0,
        "labeled": 0,
        "agreement_with_production": None,
        "agreement_with_labels": None,
    }

    _, eval_set, _ = base_split(SEED_DATASET, tags=tags)
    items = eval_set[:16]
    body = {"items": [{"title": e.title, "description": e.description} for e in items]}
    results = client.post("/predict/batch", json=body, headers=auth("client")).json()["results"]
    assert all(r["model_version"] != candidate for r in results)
    expected = shadow_tags(
        client, candidate, encoder, [item_text(e.title, e.description) for e in items]
    )
    wait_until(lambda: stats(client, candidate)["n"] == len(items), what="the shadow's answers")

    with Session(engine) as session:
        logged = {
            row.prediction_id: row
            for row in session.exec(
                select(ShadowPrediction).where(ShadowPrediction.model_version == candidate)
            )
        }
    rows = [logged[r["prediction_id"]] for r in results]
    assert [row.tag for row in rows] == expected
    agree = [row.tag == r["tag"] for row, r in zip(rows, results, strict=True)]
    assert [row.agrees for row in rows] == agree
    assert 0 < sum(agree) < len(items), "the candidate should disagree on some items"
    report = stats(client, candidate)
    assert report["agreement_with_production"] == pytest.approx(sum(agree) / len(items), abs=1e-6)
    assert report["labeled"] == 0 and report["agreement_with_labels"] is None

    # Reviewers label six of the items; one label is corrected afterwards.
    labelled = items[:6]
    add_labels(engine, labelled, share=0.2)
    with Session(engine) as session:
        corrected = next(t for t in tags.names if t != labelled[0].tag)
        labels_crud.append_label(
            session,
            text_hash=labelled[0].text_hash,
            title=labelled[0].title,
            description=labelled[0].description,
            tag=corrected,
            reviewer="lead",
            holdout_share=0.2,
        )
        session.commit()
    truth = [corrected] + [e.tag for e in labelled[1:]]
    right = sum(s == t for s, t in zip(expected[:6], truth, strict=True))
    report = stats(client, candidate)
    assert report["labeled"] == 6
    assert report["agreement_with_labels"] == pytest.approx(right / 6, abs=1e-6)
    assert report["n"] == len(items)


def test_shadow_agreement_counts_only_labels_given_since_it_started(
    shadow_client: tuple[TestClient, str], engine: Engine, tags: TagSet
) -> None:
    """A label given before the shadow's first answer is no test of it (the candidate may have
    trained on it): counted, `agreement_with_labels` read agreement with what it learnt, not
    with what reviewers decide "since" it started, as the README says it does."""
    client, candidate = shadow_client
    state = client.app.state.tagflow
    wait_until(lambda: state.predictor.shadow is not None, what="the candidate as shadow")
    _, eval_set, _ = base_split(SEED_DATASET, tags=tags)
    before, since = eval_set[:4], eval_set[4:8]
    add_labels(engine, before, share=0.2)

    body = {"items": [{"title": e.title, "description": e.description} for e in before + since]}
    assert client.post("/predict/batch", json=body, headers=auth("client")).status_code == 200
    wait_until(lambda: stats(client, candidate)["n"] == 8, what="the shadow's answers")
    report = stats(client, candidate)
    assert (report["labeled"], report["agreement_with_labels"]) == (0, None)

    add_labels(engine, since, share=0.2)
    assert stats(client, candidate)["labeled"] == len(since)


def _shadowed_task(engine: Engine, *, served: str, shadow: str) -> int:
    """A review task of an item the production model tagged `served` and v0002, shadowed,
    tagged `shadow`; its id."""
    task_id = add_task(engine, "a shadowed item", 0.5)
    logged = make_prediction("a shadowed item", tag=served)
    with Session(engine) as session:
        session.add(Prediction(**logged.model_dump()))
        session.add(
            ShadowPrediction(
                prediction_id=logged.id,
                model_version="v0002",
                tag=shadow,
                confidence=0.8,
                agrees=shadow == served,
            )
        )
        session.commit()
    return task_id


def _compared_with_labels(engine: Engine, *, version: str) -> tuple[int, float | None]:
    """How many of `version`'s shadow answers have a label to compare with, and the share
    that agree."""
    with Session(engine) as session:
        report = shadow_crud.shadow_stats(session, version=version)
    return report.labeled, report.agreement_with_labels


def test_shadow_agreement_with_labels_waits_for_a_dispute_to_be_decided(engine: Engine) -> None:
    """Two reviewers who disagree have not yet said what the content is: the shadow's answer
    is compared with the decision, not with the second opinion a dispute leaves in force (in a
    QA run that second opinion counted, while GET /predictions showed no label)."""
    nlp, cv = "natural-language-processing", "computer-vision"
    task_id = _shadowed_task(engine, served=nlp, shadow=cv)

    def compared() -> tuple[int, float | None]:
        return _compared_with_labels(engine, version="v0002")

    label_task(engine, task_id, nlp, "ann", overlap_share=1.0)
    assert compared() == (1, 0.0)  # the first label is the content's while a second is asked
    label_task(engine, task_id, cv, "bob", overlap_share=1.0)
    assert compared() == (0, None)  # disputed: neither opinion is the content's label
    label_task(engine, task_id, cv, "cat", overlap_share=1.0)
    assert compared() == (1, 1.0)  # decided as the shadow answered


def test_shadow_agreement_with_labels_leaves_out_a_label_taken_back(engine: Engine) -> None:
    """A label its reviewer took back with undo is no training data until a label replaces
    it, nor what people decided: the shadow's answer was still compared with it, also once
    the item was skipped."""
    nlp, cv = "natural-language-processing", "computer-vision"
    task_id = _shadowed_task(engine, served=nlp, shadow=cv)

    def compared() -> tuple[int, float | None]:
        return _compared_with_labels(engine, version="v0002")

    label_task(engine, task_id, nlp, "ann")
    assert compared() == (1, 0.0)
    do(engine, review_crud.reopen, task_id=task_id, reviewer="ann", lease_s=60)
    assert compared() == (0, None)  # taken back, while ann holds the item again
    do(engine, review_crud.skip, task_id=task_id, reviewer="ann")
    assert compared() == (0, None)  # and once she has passed it on
    label_task(engine, task_id, cv, "bob")
    assert compared() == (1, 1.0)


def test_shadow_stats_of_unknown_and_unshadowed_versions(
    shadow_client: tuple[TestClient, str],
) -> None:
    client, _ = shadow_client
    missing = client.get("/models/v9999/shadow", headers=auth("client"))
    assert missing.status_code == 404
    assert client.get("/models/v0001/shadow").status_code == 401
    production = stats(client, "v0001")
    assert production["n"] == 0 and production["agreement_with_production"] is None


def test_a_refused_shadow_candidate_is_logged_once_and_shadowed_once_restored(
    make_settings: Callable[..., Settings],
    sqlite_engine: Engine,
    seed_result: TrainResult,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A candidate whose artifact fails its checksum is not shadowed; the watch loop (every
    0.05 s here) says so once, not on every tick, and production keeps serving. Once the file
    is restored (from a backup, say), the candidate is shadowed without a restart."""
    settings = make_settings(
        database_url=str(sqlite_engine.url), shadow=True, watch_interval_s=0.05
    )
    register_promoted(sqlite_engine, settings, seed_result)
    with Session(sqlite_engine, expire_on_commit=False) as session:
        candidate = registry.register(
            session, result=seed_result, artifacts_dir=settings.artifacts_dir
        )
    artifact = settings.artifacts_dir / candidate.artifact_path / registry.MODEL_FILE
    good = artifact.read_bytes()
    artifact.write_bytes(good + b"tampered")
    with (
        caplog.at_level("ERROR", logger="service.api.lifecycle"),
        TestClient(create_app(settings)) as client,
    ):
        state = client.app.state.tagflow

        def refused() -> list[str]:
            return [
                m for r in caplog.records if "shadow candidate refused" in (m := r.getMessage())
            ]

        # The refusal seen, then ten more rounds of the watch loop, in which it is not said
        # again (a fixed 1 s could pass before the loop's first round on a busy machine).
        wait_until(refused, what="the refusal of the tampered candidate")
        wait_for_watch_rounds(state, 10)
        assert state.predictor.shadow is None and state.predictor.current is not None
        assert len(refused()) == 1 and candidate.version in refused()[0]
        assert state.model_refusals == 1 and state.model_errors == []
        artifact.write_bytes(good)
        wait_until(lambda: state.predictor.shadow is not None, what="the restored candidate")
        assert state.predictor.shadow.version == candidate.version
        assert state.shadow_refused == {} and state.model_refusals == 1


def test_a_promoted_shadow_is_dropped_when_the_newest_candidate_is_refused(
    make_settings: Callable[..., Settings],
    sqlite_engine: Engine,
    seed_result: TrainResult,
) -> None:
    """The shadow is the newest candidate or nothing. Once the shadowed candidate is promoted
    and the candidate left is refused (an old one that answers a tag retired since, or one
    whose artifact fails its checksum), production must not go on scoring itself as its own
    shadow, which reported an agreement with production of 1.0."""
    settings = make_settings(
        database_url=str(sqlite_engine.url), shadow=True, watch_interval_s=0.05
    )
    register_promoted(sqlite_engine, settings, seed_result)
    with Session(sqlite_engine, expire_on_commit=False) as session:
        refused = registry.register(
            session, result=seed_result, artifacts_dir=settings.artifacts_dir
        )
        shadowed = registry.register(
            session, result=seed_result, artifacts_dir=settings.artifacts_dir
        )
    artifact = settings.artifacts_dir / refused.artifact_path / registry.MODEL_FILE
    artifact.write_bytes(artifact.read_bytes() + b"tampered")
    with TestClient(create_app(settings)) as client:
        predictor = client.app.state.tagflow.predictor
        wait_until(lambda: predictor.shadow is not None, what="the newest candidate as shadow")
        assert predictor.shadow.version == shadowed.version
        with Session(sqlite_engine) as session:
            registry.promote(
                session,
                version=shadowed.version,
                tags=load_tags(settings.tags_file),
                artifacts_dir=settings.artifacts_dir,
                actor="test",
            )
        wait_until(lambda: predictor.current.version == shadowed.version, what="the promotion")
        wait_until(lambda: predictor.shadow is None, what="production to stop shadowing itself")


def test_the_shadow_shows_the_cut_its_candidate_would_be_served_with(
    shadow_client: tuple[TestClient, str],
) -> None:
    """A cut set by hand on the candidate (before promoting it, say) was not the shadow's:
    tagflow_model_threshold{role="shadow"} went on showing training's cut."""
    client, candidate = shadow_client
    predictor = client.app.state.tagflow.predictor
    wait_until(lambda: predictor.shadow is not None, what="the candidate as shadow")
    trained = predictor.shadow.accept_at
    body = {"threshold": 0.91 if trained != 0.91 else 0.92, "note": "ready to promote"}
    response = client.put(f"/models/{candidate}/threshold", json=body, headers=auth("admin"))
    assert response.status_code == 200, response.text
    assert predictor.shadow.version == candidate
    assert predictor.shadow.accept_at == body["threshold"]
    samples = scrape(client)
    shown = total(samples, "tagflow_model_threshold", version=candidate, role="shadow")
    assert shown == body["threshold"]
