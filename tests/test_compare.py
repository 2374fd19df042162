"""Comparing two versions on the same items (service.ml.compare, `tagflow models compare`)."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session
from typer.testing import CliRunner

from service.api.main import create_app
from service.cli import app
from service.config import DEFAULT_TAGS_FILE, SEED_DATASET, Settings
from service.ml import registry
from service.ml.compare import Contender, compare_versions, paired_counts
from service.ml.encoder import Encoder
from service.ml.evaluation import evaluate_predictions
from service.ml.gate import apply_gate
from service.ml.pipeline import base_split
from service.ml.training import TrainResult, score
from service.tags import TagSet
from tests.conftest import auth, register_promoted
from tests.test_retraining import work_training


def test_paired_counts_and_the_exact_mcnemar_test() -> None:
    truth = ["a", "a", "b", "b", "c"]
    counts = paired_counts(truth, ["a", "a", "b", "c", "a"], ["a", "b", "c", "c", "a"])
    assert counts == {
        "items": 5,
        "same_tag": 3,
        "both_right": 1,
        "only_a_right": 2,
        "only_b_right": 0,
        "both_wrong": 2,
        "mcnemar_p": pytest.approx(0.5),  # two discordant items, both for a: 2 x 0.5^2
    }
    assert paired_counts(truth, truth, truth)["mcnemar_p"] == 1.0  # nothing discordant


def test_two_versions_scored_as_they_serve_on_the_same_items(
    encoder: Encoder,
    tags: TagSet,
    shared_dataset: Path,
    shared_result: TrainResult,
    seed_result: TrainResult,
) -> None:
    """The shared-data model against the seed model, on the shared data's held-out split."""
    _, held_out, _ = base_split(shared_dataset, tags=tags)
    shared, seed = shared_result.model, seed_result.model
    outcome = compare_versions(
        Contender("shared", shared, 0.9),
        Contender("seed", seed, seed.threshold),
        encoder=encoder,
        examples=held_out,
        target_precision=0.99,
    )
    # Each side is the same report `evaluate_predictions` gives for the model as it serves.
    for side, model, cut in (("a", shared, 0.9), ("b", seed, seed.threshold)):
        expected = evaluate_predictions(
            held_out, score(model, encoder, held_out), model.classes, threshold=cut
        )
        assert {k: outcome[side][k] for k in expected} == expected
        assert outcome[side]["seen_in_training"] == 0  # neither trained on the held-out split
    paired = outcome["paired"]
    right = {s: round(outcome[s]["accuracy"] * len(held_out)) for s in ("a", "b")}
    assert paired["items"] == len(held_out)
    assert paired["both_right"] + paired["only_a_right"] == right["a"]
    assert paired["both_right"] + paired["only_b_right"] == right["b"]
    assert sum(paired[k] for k in ("both_right", "only_a_right", "only_b_right", "both_wrong")) == (
        len(held_out)
    )
    # A model of this platform's own items beats one of our 321 seed rows, and not by luck.
    assert right["a"] > right["b"] and paired["mcnemar_p"] < 0.01
    extra = {"version", "seen_in_training"}
    assert outcome["gate"] == apply_gate(
        {k: v for k, v in outcome["a"].items() if k not in extra},
        {k: v for k, v in outcome["b"].items() if k not in extra},
        target_precision=0.99,
    )


def test_models_compare_on_the_command_line(cli_env: dict[str, str]) -> None:
    env = cli_env
    runner = CliRunner()
    for extra in (["--promote"], []):
        trained = runner.invoke(app, ["train", "--data", str(SEED_DATASET), *extra], env=env)
        assert trained.exit_code == 0, trained.output

    data = ["--data", str(SEED_DATASET)]
    as_json = runner.invoke(app, ["models", "compare", "v0002", *data, "--json"], env=env)
    assert as_json.exit_code == 0, as_json.output
    outcome = json.loads(as_json.stdout)
    assert (outcome["a"]["version"], outcome["b"]["version"]) == ("v0002", "v0001")  # production
    # The same data and the same training procedure: the same model, tag for tag.
    assert outcome["paired"]["same_tag"] == outcome["paired"]["items"] == outcome["a"]["n"]
    assert outcome["gate"]["passed"]
    # Both trained on the seed's training split, which is in the file: counted, and said on
    # stderr (the JSON on stdout stays parseable), not silently scored.
    rows = json.loads(runner.invoke(app, ["models", "list", "--json"], env=env).stdout)["models"]
    for side, record in zip(("a", "b"), rows, strict=True):  # v0002, v0001
        seen = outcome[side]["seen_in_training"]
        assert seen == record["data_rows"] < outcome[side]["n"]
        said = " ".join(as_json.stderr.split())
        assert f"{seen} of {outcome[side]['n']} items are in {record['version']}'s training" in said

    table = runner.invoke(app, ["models", "compare", "v0002", "v0001", *data], env=env)
    assert table.exit_code == 0 and "v0002 against v0001" in table.output
    assert "McNemar exact p = 1" in table.output
    missing = runner.invoke(app, ["models", "compare", "v0042", *data], env=env)
    assert missing.exit_code == 1 and "does not exist" in missing.output


def test_compare_over_the_api_as_a_job(
    make_settings: Callable[..., Settings],
    database_url: str,
    engine: Engine,
    shared_dataset: Path,
    shared_result: TrainResult,
    seed_result: TrainResult,
    redis_conn: redis.Redis,
) -> None:
    """The seed model (a candidate) against the shared-data model in production, on the frozen
    evaluation set: the held-out split of the base dataset, here the shared data."""
    settings = make_settings(database_url=database_url, base_dataset=shared_dataset)
    production = register_promoted(engine, settings, shared_result)
    with Session(engine) as session:
        seed = registry.register(
            session, result=seed_result, artifacts_dir=settings.artifacts_dir
        ).version
    with TestClient(create_app(settings)) as client:
        assert client.post(f"/models/{seed}/compare", headers=auth("client")).status_code == 403
        assert client.post("/models/v0042/compare", headers=auth("admin")).status_code == 404
        unknown = client.post(f"/models/{seed}/compare?against=v0042", headers=auth("admin"))
        assert unknown.status_code == 404

        accepted = client.post(f"/models/{seed}/compare", headers=auth("admin"))
        assert accepted.status_code == 202, accepted.text
        work_training(client, redis_conn)
        job = client.get(f"/jobs/{accepted.json()['job_id']}", headers=auth("admin")).json()

    assert job["status"] == "finished", job
    result = job["result"]
    assert (result["a"]["version"], result["b"]["version"]) == (seed, production)
    assert result["evaluation"]["source"] == str(shared_dataset)
    assert result["evaluation"]["rows"] == result["paired"]["items"] == 153
    assert result["evaluation"]["holdout_labels"] == 0
    paired = result["paired"]
    assert paired["only_b_right"] > paired["only_a_right"] and paired["mcnemar_p"] < 0.01
    assert not result["gate"]["passed"] and "weighted_f1" in result["gate"]["failed"]


def _cells(output: str, first: str) -> list[str]:
    """The cells of the table row that starts with `first`, box drawing left out."""
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip(" │┃|").split("│")]
        cells = cells if len(cells) > 1 else line.split()
        if cells and cells[0] == first:
            return cells
    raise AssertionError(f"no row {first!r} in:\n{output}")


def test_a_tag_with_no_items_and_no_answers_shows_no_figures(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    """Evaluated on a file with no mlops item, a model that never answered mlops had mlops
    precision, recall and F1 of 0.000 in `tagflow evaluate` and `models compare` (slices in
    the same case showed "-"): nothing was measured, so the tables show "-" and the JSON
    null."""
    runner = CliRunner()
    for extra in (["--promote"], []):
        trained = runner.invoke(app, ["train", "--data", str(SEED_DATASET), *extra], env=cli_env)
        assert trained.exit_code == 0, trained.output
    with SEED_DATASET.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    picked = [r for r in rows if r["tag"] == "computer-vision"][:5]
    picked += [r for r in rows if r["tag"] == "natural-language-processing"][:5]
    data = tmp_path / "no_mlops.csv"
    with data.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["title", "description", "tag"])
        writer.writeheader()
        writer.writerows(picked)

    args = ["evaluate", "--data", str(data), "--version", "v0001"]
    report = json.loads(runner.invoke(app, [*args, "--json"], env=cli_env).stdout)
    confusion = report["confusion"]
    column = confusion["labels"].index("mlops")
    assert sum(row[column] for row in confusion["matrix"]) == 0  # never answered mlops
    assert report["per_class"]["mlops"] == {
        "precision": None,
        "recall": None,
        "f1": None,
        "support": 0,
    }
    table = runner.invoke(app, args, env={**cli_env, "COLUMNS": "100"})
    assert table.exit_code == 0, table.output
    assert _cells(table.output, "mlops") == ["mlops", "-", "-", "-", "0"]
    assert _cells(table.output, "computer-vision")[1] != "-"

    compare = ["models", "compare", "v0002", "v0001", "--data", str(data)]
    outcome = json.loads(runner.invoke(app, [*compare, "--json"], env=cli_env).stdout)
    assert outcome["a"]["per_class"]["mlops"]["f1"] is None
    assert outcome["gate"]["passed"], outcome["gate"]["failed"]
    table = runner.invoke(app, compare, env={**cli_env, "COLUMNS": "100"})
    assert table.exit_code == 0, table.output
    assert _cells(table.output, "F1 mlops") == ["F1 mlops", "-", "-"]


def test_a_tag_only_the_judged_version_knows_has_its_row(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    """The compare table listed F1 for B's tags only: a candidate that learned a newly
    approved tag (robotics) and gave it to items of another tag had its figures in the JSON,
    but no row in the table, so the table hid its wrong answers."""
    tags_file = tmp_path / "tags.csv"
    tags_file.write_text(DEFAULT_TAGS_FILE.read_text() + 'robotics,"Robots and their control."\n')
    env = {**cli_env, "TAGFLOW_TAGS_FILE": str(tags_file)}
    with SEED_DATASET.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    things = ["cups", "boxes", "tools", "fruit", "cables", "bottles", "shoes", "books"]
    robots = [
        {
            "title": f"Robot arm grasping {thing}",
            "description": f"A robot learns to pick and place {thing} with a gripper.",
            "tag": "robotics",
        }
        for thing in things + ["toys", "plates", "bags", "parts"]
    ]
    with_robots = tmp_path / "with_robots.csv"
    wrong = tmp_path / "robots_as_other.csv"  # items the candidate calls robotics, wrongly
    for path, extra in ((with_robots, robots), (wrong, [{**r, "tag": "other"} for r in robots])):
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=["title", "description", "tag"])
            writer.writeheader()
            writer.writerows({k: r[k] for k in ("title", "description", "tag")} for r in rows)
            writer.writerows(extra)
    runner = CliRunner()
    for data, extra in ((SEED_DATASET, ["--promote"]), (with_robots, [])):
        trained = runner.invoke(app, ["train", "--data", str(data), *extra], env=env)
        assert trained.exit_code == 0, trained.output

    compare = ["models", "compare", "v0002", "v0001", "--data", str(wrong)]
    outcome = json.loads(runner.invoke(app, [*compare, "--json"], env=env).stdout)
    assert outcome["a"]["per_class"]["robotics"]["precision"] == 0.0  # answered, wrongly
    assert "robotics" not in outcome["b"]["per_class"]
    table = runner.invoke(app, compare, env={**env, "COLUMNS": "100"})
    assert table.exit_code == 0, table.output
    assert _cells(table.output, "F1 robotics") == ["F1 robotics", "0.000", "-"]


def test_an_empty_version_to_compare_against_is_refused(client: TestClient) -> None:
    """`?against=` with no value (a script's `against=$OTHER`, OTHER unset) queued a comparison
    with production, as if no other version were named; now it is a 422, and nothing runs."""
    before = client.get("/jobs", headers=auth("admin")).json()["jobs"]
    empty = client.post("/models/v0001/compare?against=", headers=auth("admin"))
    assert empty.status_code == 422, empty.text
    assert empty.json()["detail"][0]["loc"] == ["query", "against"]
    assert client.get("/jobs", headers=auth("admin")).json()["jobs"] == before
