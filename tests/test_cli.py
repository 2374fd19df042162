"""The CLI end to end: train with a report, list, evaluate, promote, rollback."""

from __future__ import annotations

import csv
import inspect
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import redis
import typer
from alembic import command as alembic
from rich.errors import MarkupError
from rq import Queue
from sqlalchemy import event, make_url, text
from sqlmodel import Session, select
from typer.testing import CliRunner

from service.api_keys import KeyRing, fingerprint, new_key
from service.cli import app
from service.cli.common import CommandGroup, console
from service.cli.main import suspects_table
from service.config import DEFAULT_TAGS_FILE, SEED_DATASET, Caller, Role, Settings
from service.crud import labels as labels_crud
from service.db import init_db, make_engine
from service.entities import ModelVersion
from service.entities.prediction import Prediction
from service.jobs import list_jobs
from service.migrations import current_revision, head_revision, make_config
from service.ml import registry
from service.ml.bundle import export_bundle
from service.ml.dataset import Example
from service.ml.training import TrainResult
from service.outbox import TRAINING_QUEUE
from service.redis_server import EmbeddedRedis, free_port
from tests.conftest import KEYS, MISCONFIGURED_POSTGRES, ROOT, auth, register_promoted
from tests.test_jobs import ran_three_and_queued_one
from tests.waiting import wait_until

# Said by each command that needs Redis without its URL: beside `tagflow up`, the URL to set
# is the one `up` printed (a new port and password at each start).
NO_REDIS_URL = (
    "TAGFLOW_REDIS_URL is not set; the API and the workers share their queues through Redis "
    "(beside `tagflow up`, set it to the `embedded Redis at redis://...` URL `up` printed)"
)


def _said(output: str) -> str:
    """CLI output with rich's line wrapping undone."""
    return " ".join(output.split())


def test_train_list_evaluate_promote_rollback(cli_env: dict[str, str]) -> None:
    env = cli_env
    runner = CliRunner()
    trained = runner.invoke(app, ["train", "--data", str(SEED_DATASET), "--promote"], env=env)
    assert trained.exit_code == 0, trained.output
    assert "validation of" in trained.output and "weighted F1" in trained.output
    assert "v0001: production" in trained.output
    assert "no labels to check" in trained.output  # the seed's labels are all ours and clean
    assert "sends every item to review" not in trained.stderr  # the seed's model has a cut
    again = runner.invoke(app, ["train", "--data", str(SEED_DATASET)], env=env)
    assert "v0002: candidate" in again.output

    listed = runner.invoke(app, ["models", "list"], env={**env, "COLUMNS": "80"})
    # One line per version at 80 columns, the time included (it used to wrap onto a second).
    lines = {line.split()[0]: line for line in listed.output.splitlines() if "v000" in line}
    assert list(lines) == ["v0002", "v0001"], listed.output
    row = r"v0001 +production +\d{4}-\d\d-\d\d \d\d:\d\d +\d+ +(\d+) +0\.\d{3} +\d+% +\d\.\d{3}"
    found = re.search(row, lines["v0001"])
    assert found, listed.output
    # The items its figures were measured on: a retrained version's set is another one.
    assert int(found.group(1)) == 65 and "own evaluation set" in _said(listed.output)
    none = runner.invoke(app, ["models", "list", "--where", "weighted_f1>1.5"], env=env)
    assert none.exit_code == 0 and "no version meets weighted_f1>1.5" in none.output
    as_json = runner.invoke(
        app, ["models", "list", "--json", "--where", "auto.coverage>=0.5"], env=env
    )
    assert as_json.exit_code == 0, as_json.output
    records = json.loads(as_json.output)["models"]  # as GET /models answers
    assert [r["version"] for r in records] == ["v0002", "v0001"]
    assert records[1]["status"] == "production" and records[1]["metrics"]["auto"]["coverage"] >= 0.5
    typo = runner.invoke(app, ["models", "list", "--json", "--where", "weighted_f>0.5"], env=env)
    assert typo.exit_code == 2 and "did you mean weighted_f1" in typo.stderr
    assert typo.stdout == ""  # errors go to stderr: a script parsing --json never reads one

    evaluated = runner.invoke(
        app, ["evaluate", "--data", str(SEED_DATASET), "--version", "v0001", "--json"], env=env
    )
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(evaluated.stdout)
    assert report["version"] == "v0001" and report["n"] >= 240
    # The seed's training split is in the file: said, and counted, not silently scored.
    assert report["seen_in_training"] == records[1]["data_rows"] < report["n"]
    assert f"{records[1]['data_rows']} of {report['n']} items are in v0001's training data" in (
        _said(evaluated.stderr)
    )
    # As it serves: at a cut set after training (by hand here, or by the audit), as `models
    # compare` scores it; it used to report the cut training chose.
    cut = runner.invoke(app, ["models", "threshold", "v0001", "0.99"], env=env)
    assert cut.exit_code == 0 and "v0001 is served with cut 0.99; running APIs" in cut.output
    # A version not in production is not served: said so (it read "is served with cut").
    later = runner.invoke(app, ["models", "threshold", "v0002", "0.9"], env=env)
    assert later.exit_code == 0, later.output
    assert "v0002 (candidate) will be served with cut 0.9 once promoted" in _said(later.output)
    at_cut = runner.invoke(
        app, ["evaluate", "--data", str(SEED_DATASET), "--version", "v0001", "--json"], env=env
    )
    served = json.loads(at_cut.stdout)["auto"]
    assert served["threshold"] == 0.99 != report["auto"]["threshold"]
    compared = runner.invoke(
        app, ["models", "compare", "v0001", "v0001", "--data", str(SEED_DATASET), "--json"], env=env
    )
    assert json.loads(compared.stdout)["a"]["auto"] == served

    assert runner.invoke(app, ["models", "promote", "v0002"], env=env).exit_code == 0
    rolled = runner.invoke(app, ["models", "rollback", "--from", "v0002"], env=env)
    assert rolled.exit_code == 0 and "v0001 is production" in rolled.output
    again = runner.invoke(app, ["models", "rollback", "--from", "v0002"], env=env)
    assert again.exit_code == 1 and "v0002 is not production (v0001 is)" in _said(again.output)
    # Production already: nothing changes, and it says so, not "APIs switch within seconds".
    same = runner.invoke(app, ["models", "promote", "v0001"], env=env)
    assert same.exit_code == 0 and "v0001 is production already: nothing changed" in same.output
    history = runner.invoke(app, ["models", "history", "--json"], env=env)
    assert history.exit_code == 0, history.output
    changes = json.loads(history.output)["changes"]  # as GET /models/history answers
    assert [(c["action"], c["version"], c["actor"].split(" (")[0]) for c in changes] == [
        ("rollback", "v0001", "tagflow models rollback"),
        ("promote", "v0002", "tagflow models promote"),
        ("promote", "v0001", "tagflow train --promote"),
    ]
    odd = runner.invoke(app, ["models", "rollback", "--from", "v0001\nERROR: fake"], env=env)
    assert odd.exit_code == 2 and "is not a version name" in odd.output
    table = runner.invoke(app, ["models", "history", "--limit", "1"], env=env)
    assert table.exit_code == 0 and "rollback" in table.output and "v0002" in table.output
    assert "tagflow train" not in table.output
    missing = runner.invoke(app, ["models", "promote", "v0042"], env=env)
    assert missing.exit_code == 1 and "does not exist" in missing.output
    # A byte that is not UTF-8 in the name (a lone surrogate to Python) names no version,
    # as over HTTP (404); it was the database driver's UnicodeEncodeError traceback.
    for command in (["models", "promote"], ["models", "export"], ["models", "recalibrate"]):
        odd = runner.invoke(app, [*command, "v\udcff"], env=env)
        assert odd.exit_code == 1 and "does not exist" in odd.output, odd.output


def test_only_serving_needs_keys(tmp_path: Path) -> None:
    """The API refuses to start without keys; commands that act on the data directory run
    without them, e.g. beside `make run`, whose keys are generated."""
    env = {"TAGFLOW_API_KEYS": "", "TAGFLOW_DEV": "0", "TAGFLOW_DATA_DIR": str(tmp_path)}
    result = CliRunner().invoke(app, ["serve", "--port", "0"], env=env)
    assert result.exit_code == 2 and "TAGFLOW_API_KEYS is empty" in result.output
    listed = CliRunner().invoke(app, ["models", "list"], env=env)
    assert listed.exit_code == 0, listed.output
    # Where it looked, so that one run from another folder than the API's says so.
    database = f"sqlite:///{(tmp_path / 'tagflow.db').resolve()}"
    assert f"no version yet in {database}" in _said(listed.output)


def test_serve_in_development_mode_without_keys_generates_them(
    tmp_path: Path, encoder_dir: Path, test_redis_url: str
) -> None:
    """TAGFLOW_DEV=1 lets `serve` start with no keys configured; an API that accepts no key
    would answer 401 to every request, so it generates and prints keys as `up` does, and
    prints the address it serves (with `--port 0`, the port the system picked)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAGFLOW_")}
    env |= {
        "HF_HUB_OFFLINE": "1",
        "TAGFLOW_DEV": "1",
        "TAGFLOW_DATA_DIR": str(tmp_path / "var"),
        "TAGFLOW_ENCODER_DIR": str(encoder_dir),
        "TAGFLOW_REDIS_URL": test_redis_url,
    }
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--port", "0"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while not (printed := re.search(r"API on (http://127\.0\.0\.1:\d+) ", log.read_text())):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        url = printed.group(1)
        key = re.search(r"client:(client-\S+)", log.read_text())
        assert key and not url.endswith(":0"), log.read_text()
        request = urllib.request.Request(
            f"{url}/whoami", headers={"Authorization": f"Bearer {key.group(1)}"}
        )
        while True:  # uvicorn binds just after the line is printed
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    assert json.loads(response.read())["role"] == "client"
                break
            except urllib.error.URLError:
                assert process.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.parametrize("command", ["serve", "up"])
def test_a_port_in_use_is_a_one_line_error_before_any_start_up(
    command: str, cli_env: dict[str, str], tmp_path: Path
) -> None:
    """Not a bind error in the middle of the log after loading (or training) the model."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = CliRunner().invoke(app, [command, "--port", str(port)], env=cli_env)
    assert result.exit_code == 2, result.output
    assert f"cannot listen on 127.0.0.1:{port}" in result.output
    assert "Address already in use" in result.output
    assert not (tmp_path / "var" / "redis").exists()  # `up` started no Redis, trained nothing


@pytest.mark.parametrize("command", ["serve", "up"])
def test_the_address_comes_from_tagflow_host_and_tagflow_port_too(
    command: str, cli_env: dict[str, str], tmp_path: Path
) -> None:
    """Set in the environment, as every other setting, TAGFLOW_PORT was ignored: `up` served on
    8000, where its team had set another port (held here, to be refused before start-up)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        env = cli_env | {"TAGFLOW_HOST": "127.0.0.1", "TAGFLOW_PORT": str(port)}
        result = CliRunner().invoke(app, [command], env=env)
    assert result.exit_code == 2, result.output
    assert f"cannot listen on 127.0.0.1:{port}" in result.output
    assert not (tmp_path / "var" / "redis").exists()
    refused = CliRunner().invoke(app, [command], env=cli_env | {"TAGFLOW_PORT": "70000"})
    assert refused.exit_code == 2 and "TAGFLOW_PORT" in refused.output, refused.output


def test_keys_new_prints_a_key_and_the_line_that_accepts_it(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["keys", "new", "reviewer", "--name", "Ann Lee"])
    assert result.exit_code == 0, result.output
    key = result.output.split("key  (give it to its holder): ")[1].split()[0]
    line = result.output.split("line (add it to the key file): ")[1].strip()
    assert line.startswith("reviewer/Ann Lee:sha256:") and key not in line
    path = tmp_path / "keys"
    path.write_text(line + "\n")
    assert KeyRing({}, path).lookup(key) == Caller(Role.REVIEWER, "Ann Lee")
    for bad in (["reviewer", "--name", "a:b"], ["reviewer", "--name", " "], ["boss"]):
        assert CliRunner().invoke(app, ["keys", "new", *bad]).exit_code == 2, bad


def test_peoples_text_is_printed_as_typed_never_read_as_markup(
    cli_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """rich markup is off: "[/]" in a version name or path was read as a closing tag (a
    MarkupError traceback), and "[red]" vanished from a key's name in the line it prints."""
    runner = CliRunner()
    # An unknown version is a refusal (1); a missing --data file a usage error (2).
    for args, code in (
        (["models", "promote", "[/]"], 1),
        (["models", "export", "[/]"], 1),
        (["evaluate", "--data", "[/]x.csv"], 2),
    ):
        result = runner.invoke(app, args, env=cli_env)
        assert not isinstance(result.exception, MarkupError), args
        assert result.exit_code == code and "[/]" in result.stderr, (args, result.output)
    named = runner.invoke(app, ["keys", "new", "client", "--name", "[red]bob"])
    assert "line (add it to the key file): client/[red]bob:sha256:" in named.output
    item = {"title": "[/] Closing tags", "tag": "natural-language-processing"}
    item |= {"predicted": "computer-vision", "confidence": 0.93, "p_label": 0.02}
    console.print(suspects_table({"count": 1, "share": 0.01, "max_p_label": 0.05, "items": [item]}))
    shown = capsys.readouterr().out  # 80 columns, as in a pipe: tags whole, the title wraps
    assert "[/] Closing" in shown and "natural-language-processing" in shown
    assert "computer-vision 0.93" in shown
    # Both tags long: side by side in columns of their own, they left the title no room.
    item |= {"title": "Model Serving using FastAPI", "tag": "computer-vision"}
    item |= {"predicted": "natural-language-processing"}
    console.print(suspects_table({"count": 1, "share": 0.01, "max_p_label": 0.05, "items": [item]}))
    shown = capsys.readouterr().out
    assert "Model Serving using FastAPI" in shown and "natural-language-processing 0.93" in shown


def test_a_title_with_terminal_escapes_is_shown_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    """The labels to check at the end of `tagflow train` printed a training row's title as it
    was, and rich passes ESC through: a title sent by an API client, exported with its label
    and trained on, could set the admin's window title (OSC), clear their screen or colour
    what follows. Control characters are shown as escapes, as the logs show them."""
    item = {"title": "YOLO \x1b]0;owned\x1b\\\x1b[2J\x1b[31mred", "tag": "mlops"}
    item |= {"predicted": "computer-vision", "confidence": 0.97, "p_label": 0.01}
    console.print(suspects_table({"count": 1, "share": 0.01, "max_p_label": 0.1, "items": [item]}))
    shown = capsys.readouterr().out
    assert "\x1b" not in shown
    assert "".join(shown.split()).count("\\x1b") == 4, shown  # each ESC, as its escape


def test_keys_list_shows_fingerprints_never_keys(tmp_path: Path) -> None:
    ann, ann_line = new_key(Role.REVIEWER, "ann")
    path = tmp_path / "keys"
    path.write_text(f"# reviewers\n{ann_line}\nclient/search:plain-client-key-1\n")
    env = {
        "TAGFLOW_API_KEYS": "admin:admin-key-in-env",
        "TAGFLOW_API_KEYS_FILE": str(path),
        "COLUMNS": "200",  # rich wraps narrower tables
    }
    listed = CliRunner().invoke(app, ["keys", "list"], env=env)
    assert listed.exit_code == 0, listed.output
    rows = [line.split("│")[1:-1] for line in listed.output.splitlines() if line.count("│") == 6]
    assert [[cell.strip() for cell in row] for row in rows] == [
        [fingerprint("admin-key-in-env"), "admin", "", "key", "TAGFLOW_API_KEYS"],
        [fingerprint(ann), "reviewer", "ann", "sha256", str(path)],
        [fingerprint("plain-client-key-1"), "client", "search", "key", str(path)],
    ]
    for secret in ("admin-key-in-env", "plain-client-key-1", ann):
        assert secret not in listed.output
    # A file the service would refuse is refused here too, with the reason.
    path.write_text(f"{ann_line}\n{ann_line}\n")
    refused = CliRunner().invoke(app, ["keys", "list"], env=env)
    assert refused.exit_code == 2 and "listed twice" in refused.output


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["serve", "--port", "99999"], "Invalid value for '--port'"),
        (["serve", "--host", "nowhere.invalid", "--port", "0"], "pass --host"),
        (["db", "prune", "--older-than-days", "1000000", "--dry-run"], "--older-than-days"),
        (["db", "prune", "--older-than-days", "nan"], "nan is not a number of days from 1 to"),
        (["db", "prune", "--older-than-days", "0.5"], "0.5 is not a number of days from 1 to"),
        (
            ["db", "prune", "--older-than-days", "1", "--lock-timeout", "0"],
            "0.0 is not a number of seconds from",
        ),
        # A cut out of range is a usage error, as typer's own are (it used to exit 1).
        (["models", "threshold", "v0001", "1.5"], "threshold 1.5 is outside (0, 1.01]"),
        (["models", "threshold", "v0001", "0"], "threshold 0.0 is outside (0, 1.01]"),
        (["models", "threshold", "v0001", "nan"], "threshold nan is outside (0, 1.01]"),
    ],
)
def test_out_of_range_options_are_one_line_errors(
    args: list[str], said: str, cli_env: dict[str, str]
) -> None:
    result = CliRunner().invoke(app, args, env=cli_env)
    assert result.exit_code == 2 and said in _said(result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_train_says_when_too_few_rows_leave_no_cut(cli_env: dict[str, str], tmp_path: Path) -> None:
    """15 seed rows per tag: 48 training rows after the held-out split, fewer than the 100
    out-of-fold answers a cut at 0.99 is judged from, so the version accepts nothing. Training
    says so, and what would change it, instead of leaving an admin to wonder why every item
    goes to review."""
    rows = list(csv.DictReader(SEED_DATASET.open(encoding="utf-8")))
    few = [r for tag in {r["tag"] for r in rows} for r in [x for x in rows if x["tag"] == tag][:15]]
    small = tmp_path / "small.csv"
    with small.open("w", encoding="utf-8", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(few)
    trained = CliRunner().invoke(app, ["train", "--data", str(small)], env=cli_env)
    assert trained.exit_code == 0, trained.output
    said = _said(trained.stderr)
    assert "sends every item to review" in said and "at least 100 training rows'" in said, said
    assert "(48 rows in all here)" in said, said


def test_the_no_cut_warning_names_the_rule_at_a_lower_target(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    """At TAGFLOW_TARGET_PRECISION=0.9 a cut is judged from the 20th out-of-fold answer on,
    two of them wrong at most; the warning said "at least 10 ... with one wrong at most"
    (`min_evidence` alone). 15 seed rows per tag with the tags dealt round in turn, so no
    label says anything of its text and no cut reaches 0.9."""
    rows = list(csv.DictReader(SEED_DATASET.open(encoding="utf-8")))
    tags = sorted({r["tag"] for r in rows})
    few = [r for tag in tags for r in [x for x in rows if x["tag"] == tag][:15]]
    for i, row in enumerate(few):
        row["tag"] = tags[i % len(tags)]
    noisy = tmp_path / "noisy.csv"
    with noisy.open("w", encoding="utf-8", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(few)
    env = {**cli_env, "TAGFLOW_TARGET_PRECISION": "0.9"}
    trained = CliRunner().invoke(app, ["train", "--data", str(noisy)], env=env)
    assert trained.exit_code == 0, trained.output
    said = _said(trained.stderr)
    assert "sends every item to review" in said, said
    rule = "at least 20 training rows' out-of-fold answers above it, at most 2 of them wrong"
    assert rule in said, said


def test_a_training_file_whose_name_the_registry_cannot_show_is_refused(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    """A file name with a byte that is not UTF-8 (a Latin-1 "é") reaches Python as a lone
    surrogate. The version trained on it was registered with that path as `params.source`,
    after which every GET /models answered 500: now a usage error, before any training."""
    latin1 = tmp_path / "caf\udce9.csv"  # bytes b"caf\xe9.csv" on disk
    latin1.write_bytes(SEED_DATASET.read_bytes())
    runner = CliRunner()
    refused = runner.invoke(app, ["train", "--data", str(latin1)], env=cli_env)
    assert refused.exit_code == 2, refused.output
    assert "its name is not UTF-8 text" in _said(refused.output)
    listed = runner.invoke(app, ["models", "list", "--json"], env=cli_env)
    assert listed.exit_code == 0 and json.loads(listed.stdout)["models"] == []


def test_a_user_name_that_is_not_utf8_is_recorded_escaped(cli_env: dict[str, str]) -> None:
    """A byte that is not UTF-8 in LOGNAME (a Latin-1 "é") reaches Python as a lone surrogate:
    `models promote` (and rollback, `train --promote`) ended in a traceback from the database
    driver instead of changing production. The history names the user with the byte escaped."""
    env = {**cli_env, "LOGNAME": "caf\udce9"}
    runner = CliRunner()
    trained = runner.invoke(app, ["train", "--data", str(SEED_DATASET), "--promote"], env=env)
    assert trained.exit_code == 0, trained.output
    listed = runner.invoke(app, ["models", "history", "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    (change,) = json.loads(listed.stdout)["changes"]
    assert change["actor"].startswith("tagflow train --promote (caf\\xe9@")


def test_a_threshold_note_the_registry_cannot_show_is_refused(
    cli_env: dict[str, str], make_settings: Callable[..., Settings]
) -> None:
    """A byte that is not UTF-8 in `--note` (a Latin-1 terminal's "é") reaches Python as a lone
    surrogate. It was kept in the version's threshold history, after which every GET /models
    and GET /models/{version} answered 500 (their JSON cannot hold it): now a usage error, and
    the cut is not changed."""
    runner = CliRunner()
    trained = runner.invoke(app, ["train", "--data", str(SEED_DATASET)], env=cli_env)
    assert trained.exit_code == 0, trained.output
    latin1 = runner.invoke(
        app, ["models", "threshold", "v0001", "0.9", "--note", "caf\udce9"], env=cli_env
    )
    assert latin1.exit_code == 2 and "Invalid value for '--note'" in _said(latin1.output)
    settings = make_settings()  # the same data directory, so the same registry
    with Session(make_engine(settings.resolved_database_url)) as session:
        row = registry.get_version(session, version="v0001")
        assert "history" not in row.thresholds and "serving" not in row.thresholds
        registry.public_record(row, artifacts_dir=settings.artifacts_dir).model_dump_json()
    kept = runner.invoke(
        app, ["models", "threshold", "v0001", "0.9", "--note", "café"], env=cli_env
    )
    assert kept.exit_code == 0, kept.output


@pytest.mark.parametrize(
    ("command", "overrides", "said"),
    [
        (["serve"], {"TAGFLOW_REDIS_URL": None}, NO_REDIS_URL),
        (["worker"], {"TAGFLOW_REDIS_URL": None}, NO_REDIS_URL),
        (["retrain", "--enqueue"], {"TAGFLOW_REDIS_URL": None}, NO_REDIS_URL),
        # Set but not answering, as for `worker` (it used to be exit 1, on two lines).
        (["retrain", "--enqueue"], {}, "cannot queue a retraining: Redis is unavailable"),
        (["worker"], {"TAGFLOW_DATA_DIR": "{tmp}/a-file"}, "a-file: not a directory"),
        (["worker"], {"TAGFLOW_TAGS_FILE": "{tmp}/none.csv"}, "TAGFLOW_TAGS_FILE: tag file"),
        (["train", "--data", "x.csv"], {"TAGFLOW_TAGS_FILE": "{tmp}/none.csv"}, "tag file"),
        (["models", "promote", "v0001"], {"TAGFLOW_TAGS_FILE": "{tmp}/none.csv"}, "tag file"),
        (["serve"], {"TAGFLOW_DATABASE_URL": "sqlite://"}, "in-memory SQLite"),
        (["models", "list"], {"TAGFLOW_DATABASE_URL": "sqlite:///:memory:"}, "in-memory"),
        (["serve"], {"TAGFLOW_TAGS_FILE": "{tmp}/none.csv"}, "TAGFLOW_TAGS_FILE: tag file"),
        (["up"], {"TAGFLOW_TAGS_FILE": "{tmp}/none.csv"}, "TAGFLOW_TAGS_FILE: tag file"),
        (["serve"], {"TAGFLOW_DATA_DIR": "{tmp}/a-file"}, "a-file: not a directory"),
        (["up"], {"TAGFLOW_DATA_DIR": "{tmp}/a-file"}, "a-file: not a directory"),
        (["models", "list"], {"TAGFLOW_DATA_DIR": "{tmp}/a-file"}, "not a directory"),
        (["models", "list"], {"TAGFLOW_DATABASE_URL": "mysql://u@h/db"}, "not a database"),
        (["serve"], {"TAGFLOW_DATABASE_URL": "not a url"}, "not a database tagflow runs on"),
        (
            ["models", "list"],
            {"TAGFLOW_DATABASE_URL": "postgresql+psycopg://postgres:pw@127.0.0.1:9/test"},
            "cannot open the database postgresql+psycopg://postgres:***@127.0.0.1:9/test: "
            "connection failed",
        ),
        (
            ["serve"],
            {"TAGFLOW_DATABASE_URL": "sqlite:///{tmp}/a-file/tagflow.db"},
            "unable to open database file",
        ),
        (
            ["db", "current"],
            {"TAGFLOW_DATABASE_URL": "postgresql+psycopg://postgres:pw@127.0.0.1:9/test"},
            "cannot open the database postgresql+psycopg://postgres:***@127.0.0.1:9/test: "
            "connection failed",
        ),
        (
            ["db", "prune", "--older-than-days", "5", "--dry-run"],
            {"TAGFLOW_DATABASE_URL": "sqlite:///{tmp}/a-file/tagflow.db"},
            "cannot open the database sqlite:///",
        ),
        (["db", "upgrade"], {"TAGFLOW_DATA_DIR": "{tmp}/a-file"}, "a-file: not a directory"),
        # It said "database: none (no file at .../a-file/tagflow.db)", exit 0.
        (["db", "current"], {"TAGFLOW_DATA_DIR": "{tmp}/a-file"}, "a-file: not a directory"),
        # A file as the models folder, or as the dead-letter file: tracebacks.
        (["models", "list"], {"TAGFLOW_DATA_DIR": "{tmp}/odd"}, "odd/models is not a directory"),
        (
            ["db", "replay-dead-letters"],
            {"TAGFLOW_DATA_DIR": "{tmp}/odd-letters"},
            "dead-letter/predictions.jsonl: Is a directory",
        ),
        (["db", "replay-dead-letters"], {"TAGFLOW_DATABASE_URL": "mysql://u@h/db"}, "not a"),
        # The server's reason alone, not libpq's "connection failed: connection to server...".
        *(
            (
                ["models", "list"],
                {"TAGFLOW_DATABASE_URL": misconfigured.values[0]},
                f"{make_url(misconfigured.values[0]).render_as_string(hide_password=True)} "
                f"refused the connection: {misconfigured.values[1]} (TAGFLOW_DATABASE_URL)",
            )
            for misconfigured in MISCONFIGURED_POSTGRES
        ),
    ],
)
def test_start_up_failures_are_one_line_errors(
    command: list[str],
    overrides: dict[str, str | None],
    said: str,
    cli_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """Each names what to change, with exit code 2, before any model loads: not a traceback
    from the middle of the API's start-up."""
    (tmp_path / "a-file").write_text("not a folder")
    (tmp_path / "odd-letters" / "dead-letter" / "predictions.jsonl").mkdir(parents=True)
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "models").write_text("not a folder")
    env: dict[str, str | None] = {**cli_env, "TAGFLOW_REDIS_URL": "redis://127.0.0.1:1/0"}
    env.update({k: v.format(tmp=tmp_path) if v else v for k, v in overrides.items()})
    result = CliRunner().invoke(
        app, [*command, *(["--port", "0"] if command[0] in ("serve", "up") else [])], env=env
    )
    assert result.exit_code == 2, result.output
    assert said in _said(result.output)
    # An exit, not an exception that escaped (CliRunner keeps those in `exception`).
    assert isinstance(result.exception, SystemExit), result.exception
    assert len(result.output.strip().splitlines()) == 1, result.output  # also in a pipe


def test_a_worker_whose_redis_does_not_answer_at_start_exits_1(cli_env: dict[str, str]) -> None:
    """An outage, as a Redis lost mid-job is: one line, exit 1, for a supervisor to start it
    again. It was exit 2, which is a configuration error's, and `tagflow up` does not start
    a worker again after one (a Redis restarting under `up` would have stopped `up`)."""
    env = {**cli_env, "TAGFLOW_REDIS_URL": "redis://127.0.0.1:1/0"}
    result = CliRunner().invoke(app, ["worker"], env=env)
    said = "cannot work: Redis at redis://127.0.0.1:1/0 does not answer: Error 111 connecting"
    assert result.exit_code == 1 and said in _said(result.output), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_a_worker_whose_redis_refuses_it_exits_2(
    cli_env: dict[str, str], test_redis_url: str, tmp_path: Path
) -> None:
    """A wrong password, or a database the server does not have, is a configuration error a
    restart repeats: it was exit 1, an outage's, and `tagflow up` started its worker again
    once a minute for ever, each time to the same line."""
    no_such_db = make_url(test_redis_url).set(database="100000").render_as_string(False)
    embedded = EmbeddedRedis(tmp_path / "redis")
    url = embedded.start()
    try:
        wrong_password = url.replace(embedded.password, "not-the-password")
        for redis_url, reason in (
            (no_such_db, "DB index is out of range"),
            (wrong_password, "invalid username-password pair"),
        ):
            env = {**cli_env, "TAGFLOW_REDIS_URL": redis_url}
            result = CliRunner().invoke(app, ["worker"], env=env)
            assert result.exit_code == 2, result.output
            said = _said(result.output)
            assert "cannot work: Redis at redis://" in said and "refused the connection" in said
            assert reason in said and "not-the-password" not in said, said
    finally:
        embedded.stop()


def test_a_retraining_queued_on_a_redis_that_refuses_it_says_so(
    cli_env: dict[str, str], test_redis_url: str, tmp_path: Path
) -> None:
    """`retrain --enqueue` on a wrong password or a database Redis does not have said "Redis is
    unavailable", an outage's words (worth a retry), where `worker` says the server refused the
    connection (fix TAGFLOW_REDIS_URL), as the README's "Command line" promises for both."""
    no_such_db = make_url(test_redis_url).set(database="100000").render_as_string(False)
    embedded = EmbeddedRedis(tmp_path / "redis")
    url = embedded.start()
    try:
        wrong_password = url.replace(embedded.password, "not-the-password")
        for redis_url, reason in (
            (no_such_db, "DB index is out of range"),
            (wrong_password, "invalid username-password pair"),
        ):
            env = {**cli_env, "TAGFLOW_REDIS_URL": redis_url}
            result = CliRunner().invoke(app, ["retrain", "--enqueue"], env=env)
            assert result.exit_code == 2, result.output
            said = _said(result.output)
            assert "cannot queue a retraining: Redis at redis://" in said, said
            assert "refused the connection" in said and "unavailable" not in said, said
            assert reason in said and "not-the-password" not in said, said
    finally:
        embedded.stop()


def test_an_outbox_row_id_no_database_holds_is_a_usage_error(cli_env: dict[str, str]) -> None:
    """An id with a digit too many was SQLite's OverflowError, a traceback (exit 1)."""
    for bad in ("99999999999999999999999", "0"):
        result = CliRunner().invoke(app, ["db", "resend-outbox", bad], env=cli_env)
        assert result.exit_code == 2, result.output
        assert "Invalid value for 'ID'" in _said(result.output), result.output
    fine = CliRunner().invoke(app, ["db", "resend-outbox", str(2**63 - 1)], env=cli_env)
    assert fine.exit_code == 1, fine.output
    assert f"not re-queued: {2**63 - 1}: no such row, or not stopped" in _said(fine.output)


def test_an_encoder_folder_that_cannot_be_made_is_one_line_at_start(
    cli_env: dict[str, str], test_redis_url: str, tmp_path: Path
) -> None:
    """TAGFLOW_ENCODER_DIR where no folder can be made (not writable, or under a file) with no
    export in it yet: the API's start-up ended in a traceback (exit 3), and `models check` and
    `train` in one too. One line naming the setting now, exit 2."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    encoder_dir = blocker / "encoder"
    env = {**cli_env, "TAGFLOW_REDIS_URL": test_redis_url, "TAGFLOW_ENCODER_DIR": str(encoder_dir)}
    fault = f"Not a directory: {encoder_dir} (TAGFLOW_ENCODER_DIR)"
    for command, said in (
        (["serve", "--port", "0"], f"cannot serve: {fault}"),
        (["worker"], f"cannot work: {fault}"),
        (["train", "--data", str(SEED_DATASET)], f"cannot export the encoder: {fault}"),
    ):
        result = CliRunner().invoke(app, command, env=env)
        assert result.exit_code == 2, result.output
        assert said in _said(result.output), result.output


def test_a_dot_env_file_that_is_not_utf8_is_named(
    cli_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Latin-1 byte in `.env` was "configuration error: 'utf-8' codec can't decode byte
    0xe9 in position 24", naming no file: a reader looked for it in the environment."""
    (tmp_path / ".env").write_bytes(b"TAGFLOW_API_KEYS=admin:caf\xe9\n")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["models", "list"], env=cli_env)
    assert result.exit_code == 2, result.output
    said = _said(result.output)
    assert said.startswith(f"configuration error: {tmp_path / '.env'} is not UTF-8 text"), said


def test_a_data_directory_moved_elsewhere_keeps_working(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    """Restored from a backup to another path: the SQLite file and the artifacts move together,
    and the versions (recorded with absolute paths) still load."""
    runner = CliRunner()
    trained = runner.invoke(app, ["train", "--data", str(SEED_DATASET), "--promote"], env=cli_env)
    assert trained.exit_code == 0, trained.output
    restored = tmp_path / "restored"
    (tmp_path / "var").rename(restored)
    env = {**cli_env, "TAGFLOW_DATA_DIR": str(restored)}
    evaluated = runner.invoke(app, ["evaluate", "--data", str(SEED_DATASET), "--json"], env=env)
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.stdout)["version"] == "v0001"
    listed = runner.invoke(app, ["models", "list", "--json"], env=env)
    assert json.loads(listed.output)["models"][0]["artifact_path"] == str(
        (restored / "models" / "v0001").resolve()
    )


def test_db_current_asks_without_creating_a_database(cli_env: dict[str, str]) -> None:
    """Asking which revision a missing SQLite database is at leaves no empty file behind (the
    next command would find a database "at none" there)."""
    env = {**cli_env, "COLUMNS": "400"}  # the path on one line
    database = Path(env["TAGFLOW_DATA_DIR"]) / "tagflow.db"
    result = CliRunner().invoke(app, ["db", "current"], env=env)
    assert result.exit_code == 0, result.output
    assert f"database: none (no file at {database})" in _said(result.output)
    assert not database.exists()
    assert CliRunner().invoke(app, ["db", "upgrade"], env=env).exit_code == 0
    again = CliRunner().invoke(app, ["db", "current"], env=env)
    assert again.exit_code == 0 and "no file" not in again.output
    assert "database: none" not in again.output


def _start_serve(settings: Settings, *, port: int, log: Path) -> subprocess.Popen[bytes]:
    """`tagflow serve` as its own process with `settings`, its output to `log`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAGFLOW_")}
    env |= {
        "HF_HUB_OFFLINE": "1",
        "TAGFLOW_API_KEYS": f"client:{KEYS['client']}",
        "TAGFLOW_DATA_DIR": str(settings.data_dir),
        "TAGFLOW_DATABASE_URL": settings.resolved_database_url,
        "TAGFLOW_ENCODER_DIR": str(settings.encoder_dir),
        "TAGFLOW_REDIS_URL": str(settings.redis_url),
        # Nothing is written before the stop: the row in the database is the shutdown's.
        "TAGFLOW_LOG_FLUSH_INTERVAL_S": "600",
    }
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _handles(pid: int, stop: signal.Signals) -> bool:
    """Whether process `pid` has a handler for `stop` (Linux: SigCgt in /proc/PID/status)."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = next(line for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught.split()[1], 16) >> (stop - 1) & 1)


def test_db_upgrade_says_whether_it_upgraded(cli_env: dict[str, str]) -> None:
    """`tagflow db upgrade` said "database at 0015" whether it had upgraded the database or
    found it at the newest revision already; it now says which, and from which revision."""
    env = {**cli_env, "COLUMNS": "400"}  # each line whole
    head = head_revision()

    def upgrade() -> str:
        result = CliRunner().invoke(app, ["db", "upgrade"], env=env)
        assert result.exit_code == 0, result.output
        return _said(result.output)

    assert upgrade() == f"database upgraded from none (new) to {head}"
    engine = make_engine(f"sqlite:///{Path(env['TAGFLOW_DATA_DIR']) / 'tagflow.db'}")
    with engine.begin() as conn:  # as a release before 0014 left it
        alembic.downgrade(make_config(conn), "0013")
    assert upgrade() == f"database upgraded from 0013 to {head}"
    assert current_revision(engine) == head
    engine.dispose()
    assert upgrade() == f"database at {head}, the newest revision: nothing to upgrade"


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_stopped_while_it_starts_exits_0(
    stop: signal.Signals, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """A supervisor's stop of a `serve` it had just started, in the half second (seconds on a
    busy machine) of imports and checks before it served: SIGTERM's default action killed it
    (exit 143), and a Ctrl-C printed a KeyboardInterrupt traceback (130). A stop is a clean
    exit from the moment the program runs (before that, the interpreter itself is starting)."""
    settings = make_settings(database_url=f"sqlite:///{tmp_path / 'api.db'}")
    log = tmp_path / "serve.log"
    process = _start_serve(settings, port=free_port(), log=log)
    try:
        # SIGINT is handled from the interpreter's start (KeyboardInterrupt): its handler says
        # nothing; Python handles SIGTERM only once the program asks to.
        wait_until(
            lambda: _handles(process.pid, signal.SIGTERM),
            what="serve handling SIGTERM",
            every_s=0.001,
        )
        process.send_signal(stop)
        code = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    said = log.read_text()
    assert code == 0, said
    # Stopped while it started: serve takes the signals before it prints this, once started.
    assert "API on" not in said and "Traceback" not in said, said


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_stopped_by_a_signal_writes_its_predictions_and_exits_0(
    stop: signal.Signals,
    make_settings: Callable[..., Settings],
    seed_result: TrainResult,
    tmp_path: Path,
) -> None:
    """A supervisor (systemd, Docker, Kubernetes) reads a non-zero exit as a failed stop:
    `serve` ended by the SIGTERM that uvicorn re-raises after its clean shutdown (143)."""
    database = tmp_path / "api.db"
    settings = make_settings(database_url=f"sqlite:///{database}")
    engine = make_engine(settings.resolved_database_url)
    init_db(engine)
    register_promoted(engine, settings, seed_result)
    port = free_port()
    log = tmp_path / "serve.log"
    process = _start_serve(settings, port=port, log=log)
    try:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/predict",
            data=json.dumps({"title": "BERT for NER", "description": ""}).encode(),
            headers={**auth("client"), "Content-Type": "application/json"},
        )
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    answered = json.loads(response.read())["prediction_id"]
                break
            except urllib.error.URLError:
                assert process.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        process.send_signal(stop)
        assert process.wait(timeout=60) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "Application shutdown complete" in log.read_text()
    with Session(engine) as session:
        assert [row.id for row in session.exec(select(Prediction))] == [answered]
    engine.dispose()


def _seed_in_production(
    make_settings: Callable[..., Settings], seed_result: TrainResult
) -> Settings:
    """The settings of a SQLite registry in the data directory cli_env names, with the seed
    model as production v0001."""
    settings = make_settings()
    settings.data_dir.mkdir(parents=True)
    engine = make_engine(settings.resolved_database_url)
    init_db(engine)
    register_promoted(engine, settings, seed_result)
    engine.dispose()
    return settings


@pytest.mark.parametrize("command", [["evaluate"], ["models", "compare", "v0001"]])
def test_scoring_a_file_says_what_its_validation_dropped(
    command: list[str],
    cli_env: dict[str, str],
    make_settings: Callable[..., Settings],
    seed_result: TrainResult,
    tmp_path: Path,
) -> None:
    """`evaluate` and `models compare` dropped a file's duplicates, one with another tag among
    them, without a word, and never said that a tag had no items to score (the warning was
    written for them): each is now a warning on stderr, the JSON on stdout as it was."""
    _seed_in_production(make_settings, seed_result)
    data = tmp_path / "scored.csv"
    data.write_text(
        "title,description,tag\n"
        "YOLO for counting cars,Object detection on drone video.,computer-vision\n"
        "YOLO for counting cars,Object detection on drone video.,mlops\n"
        "Serving BERT with FastAPI,A REST API in Docker.,mlops\n"
        "serving bert with fastapi,a rest api in docker.,mlops\n"
    )
    result = CliRunner().invoke(app, [*command, "--data", str(data), "--json"], env=cli_env)
    assert result.exit_code == 0, result.output
    json.loads(result.stdout)
    said = [" ".join(line.split()) for line in result.stderr.strip().split("warning: ")[1:]]
    assert said == [
        f"2 duplicate (title, description) pair(s) in {data} dropped: each content is scored "
        "once, with its first row's tag",
        "tag 'natural-language-processing' has no examples: a model trained on this file never "
        "answers it, and one evaluated on it gets no figures for it",
        "tag 'other' has no examples: a model trained on this file never answers it, and one "
        "evaluated on it gets no figures for it",
        "1 duplicate(s) with another tag than the first row's, which is kept: line 3 (mlops) "
        "repeats line 2 (computer-vision)",
    ], result.stderr


def test_models_compare_with_an_empty_version_compares_nothing(
    cli_env: dict[str, str], make_settings: Callable[..., Settings], seed_result: TrainResult
) -> None:
    """`tagflow models compare v0001 "$OTHER"` with OTHER unset compared v0001 with production
    and exited 0, as if no version were named; the API's ?against= empty is a 422. Now a usage
    error, before any scoring; B left out still means production."""
    _seed_in_production(make_settings, seed_result)
    runner = CliRunner()
    data = ["--data", str(SEED_DATASET), "--json"]
    for versions in (["v0001", ""], ["v0001", " "], ["", "v0001"]):
        refused = runner.invoke(app, ["models", "compare", *versions, *data], env=cli_env)
        assert refused.exit_code == 2, refused.output
        shown = repr(next(v for v in versions if v != "v0001"))
        assert _said(refused.stderr) == f"cannot compare: {shown} is not a version name"
        assert refused.stdout == ""
    against_production = runner.invoke(app, ["models", "compare", "v0001", *data], env=cli_env)
    assert against_production.exit_code == 0, against_production.output
    assert json.loads(against_production.stdout)["b"]["version"] == "v0001"


def test_evaluate_with_an_empty_version_evaluates_nothing(
    cli_env: dict[str, str], make_settings: Callable[..., Settings], seed_result: TrainResult
) -> None:
    """`tagflow evaluate --data F --version "$V"` with V unset evaluated production and exited
    0, as if no version were named (models compare refuses it since c922d6e). Now a usage
    error, before any scoring; --version left out still means production."""
    _seed_in_production(make_settings, seed_result)
    runner = CliRunner()
    data = ["evaluate", "--data", str(SEED_DATASET), "--json"]
    for version in ("", " "):
        refused = runner.invoke(app, [*data, "--version", version], env=cli_env)
        assert refused.exit_code == 2, refused.output
        assert (
            _said(refused.stderr) == f"cannot evaluate: --version {version!r} is not a version name"
        )
        assert refused.stdout == ""
    production = runner.invoke(app, data, env=cli_env)
    assert production.exit_code == 0, production.output
    assert json.loads(production.stdout)["version"] == "v0001"


def test_a_database_unavailable_mid_command_is_one_line(
    cli_env: dict[str, str],
    make_settings: Callable[..., Settings],
    seed_result: TrainResult,
) -> None:
    """Opening the database was checked (one line, exit 2), but a database that fails once the
    command runs (here: locked by another process past SQLite's 30 s busy timeout; the same
    for PostgreSQL gone) printed rich's page-long traceback box."""
    settings = _seed_in_production(make_settings, seed_result)
    holder = sqlite3.connect(settings.data_dir / "tagflow.db", isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")  # a writer that holds on (a backup, a stuck job)
        result = CliRunner().invoke(app, ["models", "promote", "v0001"], env=cli_env)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert result.exit_code == 2, result.output
    assert "the database is unavailable: database is locked" in result.stderr
    assert "Traceback" not in result.output and "╭" not in result.output


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]])
def test_a_database_unavailable_during_db_prune_is_exit_2(
    cli_env: dict[str, str], database_url: str, dry_run: list[str]
) -> None:
    """`tagflow db` commands caught a database outage once the command ran (here a statement
    cancelled by PostgreSQL's statement_timeout while it waited for a held lock) as "database
    error on ...", exit 1: a refusal, where the README and every other command say an
    unavailable database is exit 2, worth a retry."""
    url = make_url(database_url).update_query_dict({"options": "-c statement_timeout=200"})
    env = {**cli_env, "TAGFLOW_DATABASE_URL": url.render_as_string(hide_password=False)}
    holder = make_engine(database_url)
    try:
        with holder.connect() as conn:  # a migration or a stuck job that holds the table
            conn.execute(text("LOCK TABLE prediction IN ACCESS EXCLUSIVE MODE"))
            result = CliRunner().invoke(
                app, ["db", "prune", "--older-than-days", "1", *dry_run], env=env
            )
    finally:
        holder.dispose()
    assert result.exit_code == 2, result.output
    assert "the database is unavailable: canceling statement due to statement timeout" in _said(
        result.stderr
    )
    assert len(result.output.strip().splitlines()) == 1, result.output


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize(
    ("options", "waits_s"), [([], 10), (["--dry-run", "--lock-timeout", "1"], 1)]
)
def test_db_prune_waits_for_a_held_lock_a_bounded_time(
    cli_env: dict[str, str], database_url: str, options: list[str], waits_s: float
) -> None:
    """`tagflow db prune` behind a lock another transaction held (a migration, a stuck job)
    waited for as long as it was held: from cron, a prune that never ended and was never
    reported. It waits 10 s for a lock (`--lock-timeout`), then says so in one line, exit 2
    as for a database that is unavailable: worth a retry (but not called an outage: it said
    "the database is unavailable" of a database that answered all along)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAGFLOW_")}
    env |= {**cli_env, "HF_HUB_OFFLINE": "1", "TAGFLOW_DATABASE_URL": database_url}
    holder = make_engine(database_url)
    try:
        with holder.connect() as conn:
            conn.execute(text("LOCK TABLE prediction IN ACCESS EXCLUSIVE MODE"))
            started = time.monotonic()
            result = subprocess.run(
                [sys.executable, "-m", "service.cli", "db", "prune", "--older-than-days", "1"]
                + options,
                env=env,
                capture_output=True,
                text=True,
                timeout=waits_s + 30,
            )
            took = time.monotonic() - started
    finally:
        holder.dispose()
    assert result.returncode == 2, result.stderr
    assert _said(result.stderr) == (
        "the predictions are locked: a lock another transaction holds on them was not released "
        f"within {waits_s:g} s (--lock-timeout); the database answers; try again once that "
        "transaction ends"
    )
    assert waits_s <= took < waits_s + 30
    assert result.stdout == ""


@pytest.mark.parametrize(
    "command",
    [
        ["db", "upgrade"],
        ["db", "prune", "--older-than-days", "1", "--dry-run"],
        ["models", "list"],
        ["serve", "--port", "0"],
    ],
)
def test_a_database_from_a_newer_tagflow_is_one_line(
    command: list[str], cli_env: dict[str, str], make_settings: Callable[..., Settings]
) -> None:
    """A database upgraded by a newer tagflow (the code rolled back after an upgrade, or a
    host left behind on a shared registry) ended every command in a page of Alembic traceback,
    "Can't locate revision identified by '0099'"; it is a configuration error that says so."""
    settings = make_settings()  # the data directory cli_env names: SQLite in it
    settings.data_dir.mkdir(parents=True)
    engine = make_engine(settings.resolved_database_url)
    init_db(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    engine.dispose()
    env = {**cli_env, "TAGFLOW_REDIS_URL": "redis://127.0.0.1:1/0"}  # `serve` needs one set
    result = CliRunner().invoke(app, command, env=env)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    said = _said(result.stderr)
    assert "the database is at schema revision 0099, which this tagflow does not know" in said
    assert len(result.output.strip().splitlines()) == 1, result.output


@pytest.mark.parametrize(
    ("command", "said"),
    [
        (
            ["evaluate", "--data", str(SEED_DATASET), "--version", "v9"],
            "cannot evaluate: model version 'v9' does not exist",
        ),
        (
            ["models", "compare", "v9", "--data", str(SEED_DATASET)],
            "cannot compare: model version 'v9' does not exist",
        ),
        (
            ["train", "--data", "{tmp}/bad.jsonl"],
            "cannot train: {tmp}/bad.jsonl: line 1 is not valid JSON",
        ),
        (["retrain"], "cannot retrain: no base dataset: set TAGFLOW_BASE_DATASET"),
    ],
)
def test_a_refusal_is_one_line(
    command: list[str],
    said: str,
    cli_env: dict[str, str],
    make_settings: Callable[..., Settings],
    tmp_path: Path,
) -> None:
    """README: errors are one line on stderr. evaluate, models compare, train and retrain
    printed their heading on a line of its own and the reason on the next ("cannot
    evaluate:", then "model version 'v9' does not exist"), which a script reading the last
    line, or a log keeping lines, took apart."""
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    settings = make_settings(base_dataset=None)  # the data directory cli_env names
    settings.data_dir.mkdir(parents=True)
    engine = make_engine(settings.resolved_database_url)
    init_db(engine)  # a registry with no version
    engine.dispose()
    args = [arg.format(tmp=tmp_path) for arg in command]
    result = CliRunner().invoke(app, args, env=cli_env)
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith(said.format(tmp=tmp_path)), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_validation_report_starts_on_the_line_after_its_heading(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    """A report is several lines: each of its lines starts a line, the first after the
    heading."""
    (tmp_path / "bad.csv").write_text("title,description,tag\nA,B,robotics\n")
    result = CliRunner().invoke(app, ["train", "--data", str(tmp_path / "bad.csv")], env=cli_env)
    assert result.exit_code == 1, result.output
    lines = result.stderr.splitlines()
    assert lines[0] == "cannot train:" and lines[1].startswith("validation of"), lines
    assert any(line.startswith("error: line 2: tag 'robotics'") for line in lines), lines


@pytest.mark.parametrize(
    ("command", "said"),
    [
        (
            ["models", "import", "{tmp}/none.tar.gz"],
            "cannot import: {tmp}/none.tar.gz: no such file",
        ),
        (["models", "import", "{tmp}"], "cannot import: {tmp}: a directory, not a file (BUNDLE)"),
        (
            ["models", "export", "v0001", "--out", "{tmp}/no/v1.tar.gz"],
            "cannot export: {tmp}/no/v1.tar.gz: no such directory {tmp}/no (--out)",
        ),
        (
            ["models", "export", "v0001", "--out", "{tmp}/a-file/v1.tar.gz"],
            "{tmp}/a-file/v1.tar.gz: {tmp}/a-file is not a directory (--out)",
        ),
        (["models", "export", "v0001", "--out", "{tmp}"], "{tmp}: a directory, not a file"),
        (["train", "--data", "{tmp}/none.csv"], "cannot train: {tmp}/none.csv: no such file"),
        (["evaluate", "--data", "{tmp}"], "cannot evaluate: {tmp}: a directory, not a file"),
        (
            ["models", "compare", "v0001", "--data", "{tmp}/none.csv"],
            "cannot compare: {tmp}/none.csv: no such file (--data)",
        ),
    ],
)
def test_a_path_that_cannot_be_used_is_a_one_line_usage_error(
    command: list[str],
    said: str,
    cli_env: dict[str, str],
    make_settings: Callable[..., Settings],
    seed_result: TrainResult,
    tmp_path: Path,
) -> None:
    """`models import` / `models export` with a missing or unwritable path printed the raw
    "[Errno 2] No such file or directory: ..." with exit 1, a refusal; each command naming a
    file now says which path and what is wrong, exit 2, before it does any work."""
    settings = make_settings()  # the data directory cli_env names: SQLite in it
    settings.data_dir.mkdir(parents=True)
    engine = make_engine(settings.resolved_database_url)
    init_db(engine)
    register_promoted(engine, settings, seed_result)  # v0001: export gets as far as the path
    engine.dispose()
    (tmp_path / "a-file").write_text("not a folder")
    args = [arg.format(tmp=tmp_path) for arg in command]
    result = CliRunner().invoke(app, args, env=cli_env)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert said.format(tmp=tmp_path) in _said(result.stderr)
    assert len(result.output.strip().splitlines()) == 1, result.output  # no warning first
    assert "Errno" not in result.output


@pytest.mark.parametrize(
    ("command", "action"),
    [(["train"], "train"), (["evaluate"], "evaluate"), (["models", "compare", "v1"], "compare")],
)
def test_a_fifo_as_data_is_a_one_line_usage_error(
    command: list[str], action: str, cli_env: dict[str, str], tmp_path: Path
) -> None:
    """A FIFO named as --data, with nothing writing to it, held the command forever (the check
    that the file can be read opened it, and waited for a writer). Run as a process, to be cut
    off if it waits."""
    fifo = tmp_path / "data.csv"
    os.mkfifo(fifo)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAGFLOW_")}
    ran = subprocess.run(
        [sys.executable, "-m", "service.cli", *command, "--data", str(fifo)],
        env=env | cli_env | {"HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 2, ran.stderr
    assert _said(ran.stderr).strip() == (
        f"cannot {action}: {fifo}: not a regular file (a FIFO, a device or a socket); save the "
        "data as a file (--data)"
    )


@pytest.mark.parametrize(
    "command",
    [["train", "--data", str(SEED_DATASET), "--promote"], ["retrain"]],
    ids=["train", "retrain"],
)
def test_train_stopped_by_sigterm_while_it_registers_leaves_nothing_behind(
    command: list[str], cli_env: dict[str, str], make_settings: Callable[..., Settings]
) -> None:
    """SIGTERM (`timeout`, a cancelled CI job, `docker stop` of compose's init) killed `tagflow
    train` on the spot: stopped while it wrote its version's artifacts, it left a folder with
    a half-written model that no version owns, and the next version's folder was named beside
    it (v0001-3235569c). It now stops as Ctrl-C does: the version is undone, row and folder.
    `tagflow retrain` (on the seed as its base) likewise."""
    settings = make_settings()  # the data directory cli_env names
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAGFLOW_")}
    env |= cli_env | {"HF_HUB_OFFLINE": "1", "TAGFLOW_BASE_DATASET": str(SEED_DATASET)}
    # Sent as soon as the version's folder is made: its artifacts take a good half second.
    _stop_by_sigterm(
        command,
        env=env,
        ready=lambda: settings.artifacts_dir.is_dir() and any(settings.artifacts_dir.iterdir()),
        what="a version's folder",
        every_s=0.005,
    )
    _assert_folders_are_the_versions(settings)


def test_models_import_stopped_by_sigterm_leaves_nothing_behind(
    cli_env: dict[str, str],
    make_settings: Callable[..., Settings],
    seed_result: TrainResult,
    tmp_path: Path,
) -> None:
    """`tagflow models import` stopped by SIGTERM while it wrote the imported version's
    artifacts (in a hidden staging folder, before the row is added) was killed on the spot
    (exit 143) and left the folder, with the model in it, that nothing removes. It now stops
    as Ctrl-C does, as `tagflow train` does: nothing left but the versions recorded."""
    settings = make_settings()  # the data directory cli_env names: SQLite in it
    settings.data_dir.mkdir(parents=True)
    engine = make_engine(settings.resolved_database_url)
    init_db(engine)
    with Session(engine) as session:
        row = registry.register(session, result=seed_result, artifacts_dir=settings.artifacts_dir)
        bundle = tmp_path / "v0001.tar.gz"
        bundle.write_bytes(
            export_bundle(session, version=row.version, artifacts_dir=settings.artifacts_dir)
        )
    engine.dispose()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAGFLOW_")}
    # Sent as soon as the staging folder is made: the model's load and the picture follow.
    _stop_by_sigterm(
        ["models", "import", str(bundle)],
        env=env | cli_env | {"HF_HUB_OFFLINE": "1"},
        ready=lambda: any(p.name.startswith(".staging-") for p in settings.artifacts_dir.iterdir()),
        what="the import's staging folder",
        every_s=0.002,
    )
    _assert_folders_are_the_versions(settings)


def test_the_model_libraries_are_imported_before_a_stop_can_interrupt(
    cli_env: dict[str, str],
) -> None:
    """A SIGTERM landing while scipy.stats ran the source text it exec()s at import (the model
    load of `models import`, lazily) marked the KeyboardInterrupt unhandled for CPython, which
    ended the process by SIGINT (-2 to a parent, as the SIGTERM tests above would see) instead
    of exit 130: 5 of 20 imports signalled 5-40 ms after staging. The libraries are imported
    before the block that turns stop signals into KeyboardInterrupt."""
    script = (
        "import sys\n"
        "from service.cli.common import session_stopped_as_interrupt\n"
        "from service.config import Settings\n"
        "before = 'scipy.stats' in sys.modules\n"
        "with session_stopped_as_interrupt(Settings()):\n"
        "    print(before, 'scipy.stats' in sys.modules, 'sklearn.linear_model' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAGFLOW_")} | cli_env
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True", "True"]


@pytest.mark.parametrize("command", ["train", "train --promote", "import"])
def test_a_sigterm_once_a_version_is_committed_finishes_the_command(
    command: str,
    cli_env: dict[str, str],
    make_settings: Callable[..., Settings],
    seed_result: TrainResult,
    tmp_path: Path,
) -> None:
    """SIGTERM landing just after `tagflow train` or `models import` committed its version
    (1 of 40 imports signalled 0-80 ms after the version's folder appeared, in a QA run) raised
    KeyboardInterrupt after the point of no return: exit 130, as for nothing registered,
    though the version was; later, in the interpreter's last half second, SIGTERM's default
    action ended it (143, 35 of 40). From the version's commit on, a stop is held: the command
    finishes (`--promote` too: its promotion commits after the version), says the
    version is registered and that the stop came too late, exit 0."""
    settings = make_settings()  # the data directory cli_env names: SQLite in it
    args = ["train", "--data", str(SEED_DATASET), *command.split()[1:]]
    if command == "import":
        settings.data_dir.mkdir(parents=True)
        engine = make_engine(settings.resolved_database_url)
        init_db(engine)
        with Session(engine) as session:
            row = registry.register(
                session, result=seed_result, artifacts_dir=settings.artifacts_dir
            )
            bundle = tmp_path / "v0001.tar.gz"
            bundle.write_bytes(
                export_bundle(session, version=row.version, artifacts_dir=settings.artifacts_dir)
            )
        engine.dispose()
        args = ["models", "import", str(bundle)]

    sent: list[int] = []

    def stop_once_a_version_is_committed(session: Session) -> None:
        if not sent and any(
            isinstance(each, ModelVersion) for each in session.identity_map.values()
        ):
            sent.append(signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)

    event.listen(Session, "after_commit", stop_once_a_version_is_committed)
    try:
        result = CliRunner().invoke(app, args, env=cli_env)
    finally:
        event.remove(Session, "after_commit", stop_once_a_version_is_committed)
    assert sent
    assert result.exit_code == 0, result.output
    said = _said(result.output)
    assert "too late to undo it: the version is registered, and the command finished" in said
    assert {
        "train": "v0001: candidate",
        "train --promote": "v0001: production",  # its promotion's commit follows: not cut
        "import": "v0002: candidate, imported from v0001",
    }[command] in said
    _assert_folders_are_the_versions(settings)
    engine = make_engine(settings.resolved_database_url)
    with Session(engine) as session:
        assert len(registry.list_versions(session)) == (2 if command == "import" else 1)
    engine.dispose()


def _stop_by_sigterm(
    command: list[str], *, env: dict[str, str], ready: Callable[[], bool], what: str, every_s: float
) -> None:
    """Run `tagflow COMMAND` and send it SIGTERM once `ready()`: it stops as Ctrl-C does,
    exit 130 and no traceback."""
    started = subprocess.Popen(
        [sys.executable, "-m", "service.cli", *command],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until(
        lambda: started.poll() is not None or ready(), what=what, timeout_s=120, every_s=every_s
    )
    started.send_signal(signal.SIGTERM)
    _, stderr = started.communicate(timeout=60)
    assert started.returncode == 130, stderr
    assert "Traceback" not in stderr


def _assert_folders_are_the_versions(settings: Settings) -> None:
    """Every folder under the artifacts folder is a recorded version's, and every version's
    folder is there."""
    engine = make_engine(settings.resolved_database_url)
    with Session(engine) as session:
        recorded = {row.artifact_path for row in registry.list_versions(session)}
    engine.dispose()
    assert {folder.name for folder in settings.artifacts_dir.iterdir()} == recorded


def test_retrain_warns_of_a_scarce_tag_once(
    cli_env: dict[str, str],
    make_settings: Callable[..., Settings],
    seed_result: TrainResult,
    tmp_path: Path,
) -> None:
    """`tagflow retrain` printed a newly approved tag with too few labels twice: the library's
    log line ("too few examples to learn {'graphs': 1}") and the CLI's own warning. Run as a
    process: the log line reached stderr through Python's last-resort handler, which the test
    runner's log capture replaces."""
    tags_file = tmp_path / "tags.csv"
    tags_file.write_text(DEFAULT_TAGS_FILE.read_text() + "graphs,Graph learning.\n")
    settings = make_settings()  # the data directory cli_env names: SQLite in it
    settings.data_dir.mkdir(parents=True)
    engine = make_engine(settings.resolved_database_url)
    init_db(engine)
    register_promoted(engine, settings, seed_result)
    with Session(engine) as session:
        for item in (
            Example("Graph attention networks", "Node classification.", "graphs"),
            Example("Autoscaling model servers", "Kubernetes pods for inference.", "mlops"),
        ):
            labels_crud.append_label(
                session,
                text_hash=item.text_hash,
                title=item.title,
                description=item.description,
                tag=item.tag,
                reviewer="rev",
                holdout_share=0.0,
            )
        session.commit()
    engine.dispose()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAGFLOW_")}
    env |= cli_env | {"TAGFLOW_TAGS_FILE": str(tags_file), "HF_HUB_OFFLINE": "1"}
    ran = subprocess.run(
        [sys.executable, "-m", "service.cli", "retrain"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ran.returncode == 0, ran.stderr
    said = _said(ran.stderr)
    assert said.count("graphs") == 1, ran.stderr
    assert "warning: tag 'graphs' has 1 training example(s): left out of training" in said


def test_retrain_with_nothing_new_says_so_unless_forced(
    cli_env: dict[str, str],
    make_settings: Callable[..., Settings],
    seed_result: TrainResult,
    test_redis_url: str,
    redis_conn: redis.Redis,
) -> None:
    """`tagflow retrain` right after `tagflow train --promote` on the base file (nothing new)
    trained, registered and promoted a twin of production. It says so, exit 0, and registers
    nothing; --force trains anyway, also through the worker (--enqueue --force)."""
    settings = make_settings()  # the data directory cli_env names: SQLite in it
    settings.data_dir.mkdir(parents=True)
    engine = make_engine(settings.resolved_database_url)
    init_db(engine)
    production = register_promoted(engine, settings, seed_result)
    env = {
        **cli_env,
        "TAGFLOW_BASE_DATASET": str(SEED_DATASET),
        "TAGFLOW_REDIS_URL": test_redis_url,
    }
    runner = CliRunner()
    ran = runner.invoke(app, ["retrain"], env=env)
    assert ran.exit_code == 0, ran.output
    assert f"nothing new since {production}" in _said(ran.stdout) and "--force" in ran.stdout
    with Session(engine) as session:
        assert [row.version for row in registry.list_versions(session)] == [production]
    engine.dispose()
    queued = runner.invoke(app, ["retrain", "--enqueue", "--force"], env=env)
    assert queued.exit_code == 0, queued.output
    (job,) = Queue(TRAINING_QUEUE, connection=redis_conn).jobs
    assert job.args == ("cli", True)


@pytest.mark.parametrize(("url", "reason"), MISCONFIGURED_POSTGRES)
def test_a_configuration_refusal_met_while_a_command_runs_is_named_not_try_again(
    url: str, reason: str
) -> None:
    """A command whose server starts refusing it for its configuration once it runs (the
    worker's job context, built after its check; a database dropped meanwhile) said "the
    database is unavailable: ...; try again", though no wait cures it. Now the server's
    reason, exit 2, as at start."""
    group = typer.Typer(cls=CommandGroup)

    @group.command()
    def connect() -> None:
        engine = make_engine(url)
        try:
            engine.connect().close()
        finally:
            engine.dispose()

    @group.command()
    def idle() -> None:  # a second command, so that the group is a group
        """Nothing."""

    result = CliRunner().invoke(group, ["connect"])
    assert result.exit_code == 2, result.output
    said = f"the database refused the connection: {reason} (TAGFLOW_DATABASE_URL)"
    assert said in result.output, result.output
    assert "try again" not in result.output and "s3cret-pw" not in result.output


def test_the_cli_module_imports_no_model_code() -> None:
    """Every tagflow process imports the CLI module first (`up`, and the API and the worker it
    starts), so what it imports at load is start-up time for all of them: the commands import
    scikit-learn, ONNX Runtime and the training code inside themselves. When a command's
    module imported the training code at load, `import service.cli` took 3.4-3.6 s instead
    of 1.1-1.2, and `up`'s worker was still importing when a Ctrl-C reached it."""
    heavy = ["sklearn", "onnxruntime", "torch", "matplotlib", "service.retraining"]
    code = f"import sys, service.cli; print([m for m in {heavy!r} if m in sys.modules])"
    loaded = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=60,
    )
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "[]"


def test_jobs_list_shows_the_recorded_jobs_as_get_jobs_does(
    cli_env: dict[str, str], make_settings: Callable[..., Settings], redis_conn: redis.Redis
) -> None:
    settings = make_settings()  # the data dir of `cli_env`
    settings.data_dir.mkdir()
    engine = make_engine(settings.resolved_database_url)
    init_db(engine)
    first, failed, third, fourth = ran_three_and_queued_one(
        engine, Queue("jobs-test", connection=redis_conn)
    )
    runner = CliRunner()
    as_json = runner.invoke(app, ["jobs", "list", "--json"], env=cli_env)
    assert as_json.exit_code == 0, as_json.output
    jobs = json.loads(as_json.output)["jobs"]
    with Session(engine) as session:
        assert jobs == [  # as GET /jobs answers
            j.model_dump(mode="json", exclude_none=True) for j in list_jobs(session)
        ]
    assert [j["job_id"] for j in jobs] == [fourth, third, failed, first]
    table = runner.invoke(app, ["jobs", "list", "--state", "failed"], env=cli_env)
    assert table.exit_code == 0, table.output
    assert failed in table.output  # whole, beside its error (wrapped in its column)
    assert all(word in table.output for word in ("failed", "TypeError:", "real number"))
    assert first not in table.output and third not in table.output
    newest = runner.invoke(app, ["jobs", "list", "--limit", "1", "--json"], env=cli_env)
    assert [j["job_id"] for j in json.loads(newest.output)["jobs"]] == [fourth]
    none = runner.invoke(app, ["jobs", "list", "--state", "started"], env=cli_env)
    assert none.exit_code == 0 and "no job started" in none.output
    # Narrowed by time too, as the README has GET /jobs's `since` do "as tagflow jobs list
    # does" (the option did not exist: "No such option: --since"): ISO 8601, an offset or
    # none (UTC), as the API reads it.
    at = jobs[1]["created_at"]  # the third's, "...Z"
    for since in (at, at.replace("Z", "+00:00"), at.removesuffix("Z")):
        recent = runner.invoke(app, ["jobs", "list", "--since", since, "--json"], env=cli_env)
        assert recent.exit_code == 0, recent.output
        assert [j["job_id"] for j in json.loads(recent.output)["jobs"]] == [fourth, third]
    later = datetime.fromisoformat(at) + timedelta(hours=2)
    elsewhere = later.astimezone(timezone(timedelta(hours=5))).isoformat()  # 2 h after, +05:00
    none_since = runner.invoke(app, ["jobs", "list", "--since", elsewhere], env=cli_env)
    assert none_since.exit_code == 0 and "no job queued since" in none_since.output
    for bad in (["--state", "lost"], ["--limit", "0"], ["--limit", "501"], ["--since", "soon"]):
        refused = runner.invoke(app, ["jobs", "list", *bad], env=cli_env)
        assert refused.exit_code == 2, bad
    engine.dispose()


@pytest.mark.parametrize("group", [[], ["models"], ["db"], ["keys"], ["jobs"]])
def test_the_list_of_commands_shows_each_summary_unbroken(group: list[str]) -> None:
    """`tagflow --help` listed a summary written over two source lines broken where the
    docstring's line ended, mid-sentence ("... behind the quality gate. With nothing" and "new
    since the production model" below it), however wide the terminal."""
    shown = CliRunner().invoke(app, [*group, "--help"], env={"COLUMNS": "1000"})
    assert shown.exit_code == 0, shown.output
    command = typer.main.get_command(app)
    for name in group:
        command = command.commands[name]  # type: ignore[attr-defined]
    lines = shown.output.splitlines()
    for sub in command.commands.values():  # type: ignore[attr-defined]
        summary = " ".join(inspect.cleandoc(sub.help or "").split("\n\n")[0].split())
        assert any(summary in line for line in lines), (sub.name, shown.output)
