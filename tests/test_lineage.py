"""A version's data lineage over the API (GET /models/{version}/lineage), against the loop that
made it: predictions sent to review, reviewers' labels, users' reports confirmed by review,
a retraining. On SQLite and PostgreSQL, with real Redis, the real worker code and real models.

The registry recorded only a snapshot id with each version, and nothing served the snapshot:
which labels a candidate learned from, and which it was judged on, could be read only from the
database (a QA loop found no API or CLI answer for it)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import redis
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select
from typer.testing import CliRunner

from service import retraining
from service.cli import app as cli_app
from service.cli.lineage import id_ranges
from service.config import SEED_DATASET, Settings
from service.db import init_db, make_engine
from service.entities import Feedback, Label
from service.ml import registry
from service.ml.dataset import Example, load_dataset
from service.ml.encoder import Encoder
from service.ml.pipeline import base_split
from service.ml.training import TrainResult
from service.tags import TagSet
from tests.conftest import KEYS, auth, register_promoted
from tests.test_feedback import make_client, work_labeling  # noqa: F401 (a fixture)
from tests.test_retraining import add_labels, rotated
from tests.test_review_api import wait_outbox_sent

ITEMS = 12  # new contents sent to review
REPORTED = 2  # of them, reported by users with their true tag


def new_contents(shared_dataset: Path, tags: TagSet) -> list[Example]:
    """Items of the shared dataset that the seed (production's base) does not contain."""
    examples, _ = load_dataset(shared_dataset, tags=tags)
    seed, _ = load_dataset(SEED_DATASET, tags=tags)
    known = {e.text_hash for e in seed}
    return [e for e in examples if e.text_hash not in known][:ITEMS]


def label_everything(client: TestClient, truth: dict[str, str]) -> None:
    """Two reviewers take turns labelling every task with the item's true tag."""
    for turn in range(100):
        reviewer = ("ann", "bob")[turn % 2]
        task = client.post("/review/claim", json={"reviewer": reviewer}, headers=auth("reviewer"))
        if task.status_code == 204:
            return
        assert task.status_code == 200, task.text
        labeled = client.post(
            f"/review/{task.json()['task_id']}/label",
            json={"reviewer": reviewer, "tag": truth[task.json()["title"]]},
            headers=auth("reviewer"),
        )
        assert labeled.status_code == 201, labeled.text
    raise AssertionError("the queue did not empty")


def test_a_retrained_versions_lineage_lists_the_labels_and_reports_that_went_in(
    make_client: Callable[..., TestClient],  # noqa: F811
    engine: Engine,
    redis_conn: redis.Redis,
    shared_dataset: Path,
    tags: TagSet,
    encoder: Encoder,
    database_url: str,
) -> None:
    client = make_client(label_holdout_share=0.5, review_suspects=False)
    production = client.get("/models?status=production", headers=auth("admin")).json()
    production = production["models"][0]["version"]
    # Everything to review while reviewers catch up, as an admin would to collect labels.
    cut = client.put(
        f"/models/{production}/threshold", json={"threshold": 1.01}, headers=auth("admin")
    )
    assert cut.status_code == 200, cut.text
    items = new_contents(shared_dataset, tags)
    truth = {e.title: e.tag for e in items}
    answers = []
    for e in items:
        answer = client.post(
            "/predict",
            json={"title": e.title, "description": e.description},
            headers=auth("client"),
        )
        assert answer.status_code == 200 and answer.json()["status"] == "review"
        answers.append(answer.json())
    reports = [
        client.post(
            "/feedback",
            json={"prediction_id": a["prediction_id"], "correct_tag": e.tag, "reporter": f"u{i}"},
            headers=auth("client"),
        ).json()["feedback_id"]
        for i, (a, e) in enumerate(zip(answers[:REPORTED], items[:REPORTED], strict=True))
    ]
    wait_outbox_sent(engine, at_least=ITEMS + REPORTED)
    work_labeling(client, redis_conn)
    label_everything(client, truth)

    settings = client.app.state.tagflow.settings
    with Session(engine, expire_on_commit=False) as session:
        outcome = retraining.retrain(session, settings=settings, tags=tags, encoder=encoder)
        labels = session.exec(select(Label).where(col(Label.superseded_by).is_(None))).all()
        feedback = session.exec(select(Feedback).order_by(col(Feedback.id))).all()
    assert len(labels) == ITEMS

    answer = client.get(f"/models/{outcome['candidate']}/lineage", headers=auth("client"))
    assert answer.status_code == 200, answer.text
    lineage = answer.json()
    assert lineage["snapshot_id"] == outcome["snapshot_id"]
    assert lineage["train_labels"] == outcome["train_labels"] == len(lineage["train_label_ids"])
    assert lineage["holdout_labels"] == outcome["holdout_labels"]
    assert lineage["holdout_labels"] == len(lineage["holdout_label_ids"]) > 0
    assert sorted(lineage["train_label_ids"] + lineage["holdout_label_ids"]) == sorted(
        label.id for label in labels
    )
    held_out = {label.id for label in labels if label.holdout}
    assert set(lineage["holdout_label_ids"]) == held_out
    assert lineage["train_rows"] == outcome["train_rows"]
    assert lineage["eval_rows"] == outcome["eval_rows"] and lineage["base_rows"] == 321
    assert [r["feedback_id"] for r in lineage["reports"]] == reports
    assert all(r["status"] == "confirmed" for r in lineage["reports"])
    by_id = {f.id: f for f in feedback}
    for report in lineage["reports"]:
        assert report["label_id"] == by_id[report["feedback_id"]].label_id
        assert report["held_out"] is (report["label_id"] in held_out)

    # The same at a terminal: `tagflow models lineage V [--json]`.
    env = {
        "TAGFLOW_API_KEYS": f"admin:{KEYS['admin']}",
        "TAGFLOW_DATA_DIR": str(settings.data_dir),
        "TAGFLOW_DATABASE_URL": database_url,
    }
    runner = CliRunner()
    as_json = runner.invoke(cli_app, ["models", "lineage", outcome["candidate"], "--json"], env=env)
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout) == lineage
    text = runner.invoke(cli_app, ["models", "lineage", outcome["candidate"]], env=env)
    assert text.exit_code == 0, text.output
    assert f"labels held out: {lineage['holdout_labels']} (ids " in text.stdout
    assert f"user reports behind them: {REPORTED} (" in text.stdout
    unknown = runner.invoke(cli_app, ["models", "lineage", "v9999"], env=env)
    assert unknown.exit_code == 1 and "v9999" in unknown.stderr

    trained_from_a_file = client.get(f"/models/{production}/lineage", headers=auth("client"))
    assert trained_from_a_file.status_code == 200
    assert trained_from_a_file.json()["snapshot_id"] is None
    assert trained_from_a_file.json()["train_label_ids"] == []
    assert client.get("/models/v9999/lineage", headers=auth("client")).status_code == 404


def test_a_versions_evaluation_set_is_given_back_and_reproduces_its_metrics(
    tmp_path: Path,
    encoder_dir: Path,
    database_url: str,
    make_settings: Callable[..., Settings],
    seed_result: TrainResult,
    shared_dataset: Path,
    tags: TagSet,
    encoder: Encoder,
) -> None:
    """`tagflow models eval-set V` writes the items V was judged on (the base file's held-out
    split, less the contents a label replaced, plus its held-out labels), and `tagflow
    evaluate` on that file gives V's recorded metrics back. There was no way to get that set
    but Python: the base split lives in code."""
    base = tmp_path / "base.csv"
    shutil.copyfile(SEED_DATASET, base)
    settings = make_settings(
        data_dir=tmp_path / "cli", database_url=database_url, base_dataset=base
    )
    settings.data_dir.mkdir()
    engine = make_engine(database_url)
    init_db(engine)
    register_promoted(engine, settings, seed_result)
    _, base_eval, _ = base_split(base, tags=tags)
    add_labels(engine, new_contents(shared_dataset, tags), share=0.5)
    add_labels(engine, [rotated(base_eval[0], tags)], share=0.0)  # replaces a base eval row
    with Session(engine, expire_on_commit=False) as session:
        outcome = retraining.retrain(session, settings=settings, tags=tags, encoder=encoder)
        recorded = registry.get_version(session, version=outcome["candidate"]).metrics
    engine.dispose()
    assert outcome["holdout_labels"] > 0

    env = {
        "TAGFLOW_API_KEYS": f"admin:{KEYS['admin']}",
        "TAGFLOW_DATA_DIR": str(settings.data_dir),
        "TAGFLOW_DATABASE_URL": database_url,
        "TAGFLOW_ENCODER_DIR": str(encoder_dir),
    }
    out = tmp_path / "eval.csv"
    runner = CliRunner()
    written = runner.invoke(
        cli_app, ["models", "eval-set", outcome["candidate"], "--out", str(out)], env=env
    )
    assert written.exit_code == 0, written.output
    examples, _ = load_dataset(out, tags=tags)
    assert len(examples) == outcome["eval_rows"] == len(base_eval) - 1 + outcome["holdout_labels"]
    scored = runner.invoke(
        cli_app,
        ["evaluate", "--data", str(out), "--version", outcome["candidate"], "--json"],
        env=env,
    )
    assert scored.exit_code == 0, scored.output
    report = json.loads(scored.stdout)
    assert report["seen_in_training"] == 0
    for figure in ("n", "weighted_f1", "accuracy", "auto", "per_class", "confusion"):
        assert report[figure] == recorded[figure], figure

    with base.open("a", encoding="utf-8") as fh:  # the base file edited since
        fh.write("Edited later,Not the file it was trained on.,other\n")
    refused = runner.invoke(
        cli_app, ["models", "eval-set", outcome["candidate"], "--out", str(out)], env=env
    )
    assert refused.exit_code == 1 and "has changed since" in " ".join(refused.stderr.split())


def test_label_ids_are_shown_as_runs() -> None:
    assert id_ranges([]) == "none"
    assert id_ranges([10, 1, 2, 3, 7, 9]) == "ids 1-3, 7, 9-10"


def test_a_versions_lineage_keeps_the_reports_behind_its_labels_after_an_undo(
    make_client: Callable[..., TestClient],  # noqa: F811
    engine: Engine,
    redis_conn: redis.Redis,
    shared_dataset: Path,
    tags: TagSet,
    encoder: Encoder,
) -> None:
    """A version's lineage named the reports behind its labels by the label each report was
    settled by: once a reviewer undid such a label (and relabelled the content) after a
    retraining had learned from it, the version's lineage no longer listed the report it had
    learned from, as if it had never gone in. It lists it still, with the label the version
    holds, and the report's status as it is now."""
    client = make_client(review_suspects=False)
    [item] = new_contents(shared_dataset, tags)[:1]
    answer = client.post(
        "/predict",
        json={"title": item.title, "description": item.description},
        headers=auth("client"),
    ).json()
    sent = client.post(
        "/feedback",
        json={"prediction_id": answer["prediction_id"], "correct_tag": item.tag, "reporter": "uma"},
        headers=auth("client"),
    ).json()["feedback_id"]
    work_labeling(client, redis_conn)
    task = client.post("/review/claim", json={"reviewer": "ann"}, headers=auth("reviewer")).json()
    given = client.post(
        f"/review/{task['task_id']}/label",
        json={"reviewer": "ann", "tag": item.tag},
        headers=auth("reviewer"),
    ).json()
    settings = client.app.state.tagflow.settings
    with Session(engine) as session:
        outcome = retraining.retrain(
            session, settings=settings, tags=tags, encoder=encoder, force=True
        )
    url = f"/models/{outcome['candidate']}/lineage"
    before = client.get(url, headers=auth("client")).json()
    held_out = given["id"] in before["holdout_label_ids"]
    assert before["reports"] == [
        {"feedback_id": sent, "label_id": given["id"], "status": "confirmed", "held_out": held_out}
    ]

    undo = client.post(
        f"/review/{task['task_id']}/reopen", json={"reviewer": "ann"}, headers=auth("reviewer")
    )
    assert undo.status_code == 200, undo.text
    other = next(tag for tag in tags.names if tag != item.tag)
    relabeled = client.post(
        f"/review/{task['task_id']}/label",
        json={"reviewer": "ann", "tag": other},
        headers=auth("reviewer"),
    )
    assert relabeled.status_code == 201, relabeled.text
    after = client.get(url, headers=auth("client")).json()
    assert after["reports"] == [{**before["reports"][0], "status": "rejected"}]
