"""Schema migrations on real SQLite and PostgreSQL databases.

The PostgreSQL runs use the test database the storage tests use, emptied the way conftest does
it (the public schema dropped and recreated) before each test.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from rq import Queue
from sqlalchemy import (
    JSON,
    DateTime,
    Enum,
    Insert,
    column,
    event,
    func,
    insert,
    inspect,
    select,
    table,
    text,
)
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel

from service.crud import leases, overlap, reviewers
from service.db import current_revision, head_revision, init_db, make_engine
from service.entities import (
    Label,
    LabelSource,
    ModelVersion,
    OutboxItem,
    Reviewer,
    ReviewReason,
    ReviewStage,
    ReviewStatus,
    ReviewTask,
)
from service.entities.common import as_utc
from service.migrations import BASELINE, BASELINE_TABLES, VERSION_TABLE, make_config
from service.migrations.__main__ import main as migrations_main
from service.ml import production_history
from service.outbox import LABELING_QUEUE, redeliver_lost, relay
from tests.conftest import POSTGRES_URL, ROOT

# A tagflow process starting up: makes its engine, says it is ready, waits for the go file.
_STARTING_PROCESS = """
import sys, time
from pathlib import Path
from service.db import init_db, make_engine
url, ready, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
engine = make_engine(url)
ready.touch()
while not go.exists():
    time.sleep(0.002)
init_db(engine)
"""


def _empty(url: str) -> None:
    """Remove everything from the database at `url`."""
    if url.startswith("sqlite"):
        Path(url.removeprefix("sqlite:///")).unlink(missing_ok=True)
        return
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database: an SQLite file in tmp_path, or the emptied PostgreSQL test database."""
    url = f"sqlite:///{tmp_path / 'tagflow.db'}" if request.param == "sqlite" else POSTGRES_URL
    _empty(url)
    return url


@pytest.fixture
def engines(empty_url: str) -> Iterator[Callable[[], Engine]]:
    """Makes engines on the empty database (one per simulated process); disposes them after."""
    made: list[Engine] = []

    def make() -> Engine:
        made.append(make_engine(empty_url))
        return made[-1]

    yield make
    for engine in made:
        engine.dispose()


def _model_differences(engine: Engine) -> list[Any]:
    """What autogenerate would write: the database against the models (empty when equal)."""
    with engine.connect() as conn:
        diffs: list[Any] = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    return diffs


def _enum_differences(engine: Engine) -> dict[str, tuple[list[str], list[str]]]:
    """PostgreSQL enum types whose labels differ from the models' (autogenerate ignores them)."""
    if engine.dialect.name != "postgresql":
        return {}
    expected = {
        column.type.name: list(column.type.enums)
        for table in SQLModel.metadata.tables.values()
        for column in table.columns
        if isinstance(column.type, Enum) and column.type.name
    }
    actual = {enum["name"]: list(enum["labels"]) for enum in inspect(engine).get_enums()}
    names = expected.keys() | actual.keys()
    return {
        name: (expected.get(name, []), actual.get(name, []))
        for name in names
        if expected.get(name) != actual.get(name)
    }


def _schema(engine: Engine) -> dict[str, Any]:
    """Everything reflection sees of the tables (and PostgreSQL enum types), for comparing."""
    inspector = inspect(engine)
    schema: dict[str, Any] = {}
    for name in sorted(set(inspector.get_table_names()) - {VERSION_TABLE}):
        schema[name] = {
            "columns": [
                (c["name"], str(c["type"]), c["nullable"], c.get("default"))
                for c in inspector.get_columns(name)
            ],
            "primary_key": inspector.get_pk_constraint(name)["constrained_columns"],
            "indexes": sorted(
                (i["name"], tuple(i["column_names"]), bool(i["unique"]))
                for i in inspector.get_indexes(name)
            ),
            "unique": sorted(
                tuple(u["column_names"]) for u in inspector.get_unique_constraints(name)
            ),
            "foreign_keys": sorted(
                (tuple(f["constrained_columns"]), f["referred_table"], tuple(f["referred_columns"]))
                for f in inspector.get_foreign_keys(name)
            ),
        }
    if engine.dialect.name == "postgresql":
        schema["<enums>"] = sorted((e["name"], tuple(e["labels"])) for e in inspector.get_enums())
    return schema


def _version_rows(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars())


def _make_pre_migration_database(engine: Engine) -> None:
    """A database as tagflow made it before migrations: the baseline tables, no alembic_version.

    While the models are still at the baseline that is literally `create_all`. Once a revision
    changes them, create_all would make the new schema, so the baseline revision is run instead
    and its version table dropped: the same tables the old create_all made.
    """
    if head_revision() == BASELINE:
        SQLModel.metadata.create_all(engine)
        return
    with engine.begin() as conn:
        command.upgrade(make_config(conn), BASELINE)
    with engine.begin() as conn:
        conn.execute(text(f"DROP TABLE {VERSION_TABLE}"))


def _add_rows(engine: Engine, *, version: str = "v0001") -> None:
    """One row in a few tables, written through the models as the service writes them."""
    with Session(engine) as session:
        session.add(
            Label(
                text_hash="h" * 64,
                title="BERT for NER",
                description="",
                tag="natural-language-processing",
                reviewer="ann",
            )
        )
        # Through the table and the columns of 0001, which a pre-migration database has.
        session.execute(_model_version_row(version, promoted_at=datetime.now(UTC)))
        session.execute(_outbox_row({"prediction_id": "p1"}, sent_at=None))
        session.commit()


# The outbox table as the baseline made it: an insert through the model's table would also
# write the columns later revisions added (their defaults), which an older database lacks.
_BASELINE_OUTBOX = table(
    "outboxitem",
    column("kind"),
    column("payload", JSON),
    column("attempts"),
    column("sent_at", DateTime(timezone=True)),
)


def _add_as_of_revision(session: Session, rows: list[SQLModel]) -> list[int]:
    """`rows` added as the database's revision holds their table: without the columns later
    revisions add (0016's `review_task.shed_at`, say), which the ORM would write. Their ids."""
    ids = []
    for row in rows:
        table_ = type(row).__table__  # type: ignore[attr-defined]
        present = {c["name"] for c in inspect(session.connection()).get_columns(table_.name)}
        values = {
            c.name: getattr(row, c.name)
            for c in table_.columns
            if c.name in present and not (c.primary_key and getattr(row, c.name) is None)
        }
        ids.append(session.execute(insert(table_).values(values)).inserted_primary_key[0])
    return ids


def _outbox_row(payload: dict[str, str], *, sent_at: datetime | None) -> Insert:
    """An insert of an outbox row with the columns of the baseline schema only."""
    return insert(_BASELINE_OUTBOX).values(
        kind="review", payload=payload, attempts=0, sent_at=sent_at
    )


def _model_version_row(
    version: str, *, promoted_at: datetime | None, status: str = "CANDIDATE"
) -> Insert:
    """An insert of a model version with the columns of the baseline schema only."""
    return insert(ModelVersion.__table__).values(  # type: ignore[arg-type]
        version=version,
        status=status,
        data_hash="d",
        data_rows=3,
        params={},
        metrics={},
        thresholds={},
        artifact_path="a",
        checksum="c",
        note="",
        created_at=datetime.now(UTC),
        promoted_at=promoted_at,
    )


def _row_counts(engine: Engine) -> dict[str, int]:
    with Session(engine) as session:
        return {
            model.__name__: session.execute(select(func.count()).select_from(model)).scalar_one()
            for model in (Label, ModelVersion, OutboxItem)
        }


def test_migrations_have_one_head_and_a_known_baseline() -> None:
    assert head_revision()  # raises on a forked history
    assert set(SQLModel.metadata.tables) >= BASELINE_TABLES


def test_upgrade_of_an_empty_database_gives_the_models_schema(
    engines: Callable[[], Engine],
) -> None:
    """The guard against a model change without a revision: it fails until one is written."""
    engine = engines()
    assert current_revision(engine) is None
    init_db(engine)
    assert current_revision(engine) == head_revision()
    assert _model_differences(engine) == [], "models changed: python -m service.migrations revision"
    assert _enum_differences(engine) == {}, "enum labels changed: write a revision for them"


def test_check_command_agrees() -> None:
    assert migrations_main(["check"]) == 0


def test_pre_migration_database_is_stamped_upgraded_and_keeps_its_rows(
    empty_url: str, engines: Callable[[], Engine]
) -> None:
    legacy = engines()
    _make_pre_migration_database(legacy)
    _add_rows(legacy)

    init_db(legacy)

    assert current_revision(legacy) == head_revision()
    assert _version_rows(legacy) == [head_revision()]
    assert _row_counts(legacy) == {"Label": 1, "ModelVersion": 1, "OutboxItem": 1}
    assert _model_differences(legacy) == []
    _add_rows(legacy, version="v0002")  # and it takes new rows as before
    assert _row_counts(legacy) == {"Label": 2, "ModelVersion": 2, "OutboxItem": 2}
    upgraded = _schema(legacy)
    legacy.dispose()

    _empty(empty_url)
    fresh = engines()
    init_db(fresh)
    assert upgraded == _schema(fresh)


def test_model_versions_get_their_rollback_order_from_their_promotions(
    engines: Callable[[], Engine],
) -> None:
    """0008: each promoted version remembers the one promoted before it, so a rollback after
    the upgrade goes where it went before (to the last production before the current one)."""
    engine = engines()
    with engine.begin() as conn:
        command.upgrade(make_config(conn), "0007")
    start = datetime(2026, 12, 1, tzinfo=UTC)
    with Session(engine) as session:
        for version, day in (("v0001", 1), ("v0002", None), ("v0003", 3), ("v0004", 2)):
            at = None if day is None else start.replace(day=day)
            session.execute(_model_version_row(version, promoted_at=at))
        session.commit()
    init_db(engine)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT version, previous_version FROM modelversion")).all()
    previous = {version: before for version, before in rows}
    assert previous == {"v0001": None, "v0002": None, "v0003": "v0004", "v0004": "v0001"}


def test_outbox_rows_sent_before_0011_are_not_sent_again(
    engines: Callable[[], Engine], redis_conn: redis.Redis
) -> None:
    """0011: a row sent before it went in a job that names no row, which no worker marks
    done; the check for jobs Redis lost leaves it alone (or it would send the whole history
    again), and the upgrade rewrites no row. A row not sent yet is sent as any other."""
    engine = engines()
    with engine.begin() as conn:
        command.upgrade(make_config(conn), "0010")
    sent_at = datetime(2026, 12, 1, tzinfo=UTC)
    with Session(engine) as session:
        session.execute(_outbox_row({"prediction_id": "sent"}, sent_at=sent_at))
        session.execute(_outbox_row({"prediction_id": "waiting"}, sent_at=None))
        session.commit()
    init_db(engine)
    queue = Queue(LABELING_QUEUE, connection=redis_conn)
    with Session(engine) as session:
        assert redeliver_lost(session, queue=queue) == 0
        rows = {r.payload["prediction_id"]: r for r in session.scalars(select(OutboxItem))}
    assert as_utc(rows["sent"].sent_at) == sent_at
    assert rows["sent"].job_id is None and rows["sent"].done_at is None
    with Session(engine) as session:
        assert relay(session, queue=queue) == 1
    assert [p["prediction_id"] for job in queue.get_jobs() for p in job.args[0]] == ["waiting"]


def test_outbox_rows_from_before_0013_count_their_sends_from_0(
    engines: Callable[[], Engine], redis_conn: redis.Redis
) -> None:
    """0013: rows written before it get `sends` 0 (the column is NOT NULL) and no stop; a row
    waiting is sent as any other, and counted."""
    engine = engines()
    with engine.begin() as conn:
        command.upgrade(make_config(conn), "0012")
    with Session(engine) as session:
        session.execute(_outbox_row({"prediction_id": "waiting"}, sent_at=None))
        session.commit()
    init_db(engine)
    with engine.connect() as conn:
        before = conn.execute(text("SELECT sends, stopped_at FROM outboxitem")).one()
    assert tuple(before) == (0, None)
    with Session(engine) as session:
        assert relay(session, queue=Queue(LABELING_QUEUE, connection=redis_conn)) == 1
        [row] = session.scalars(select(OutboxItem)).all()
    assert row.sends == 1 and row.stopped_at is None


def test_reviewers_are_recorded_under_their_oldest_spelling(
    engines: Callable[[], Engine],
) -> None:
    """0014: each name the labels and tasks hold, as a person reads it, gets its oldest
    spelling (a reporter's name on a user's report is no reviewer's); the rows keep theirs,
    and a request under any spelling is recorded under that one from then on."""
    engine = engines()
    with engine.begin() as conn:
        command.upgrade(make_config(conn), "0013")
    start = datetime(2026, 12, 1, tzinfo=UTC)
    with Session(engine) as session:
        for reviewer, day, source in (
            ("ann", 3, LabelSource.REVIEW),
            ("Ann", 2, LabelSource.REVIEW),
            ("\uff21\uff2e\uff2e", 4, LabelSource.REVIEW),
            ("Bob", 1, LabelSource.FEEDBACK),  # a reporter
            ("bob", 5, LabelSource.REVIEW),
        ):
            session.add(
                Label(
                    text_hash=f"{day}" * 64,
                    title="t",
                    description="",
                    tag="mlops",
                    reviewer=reviewer,
                    source=source,
                    created_at=start.replace(day=day),
                )
            )
        # Cat has skipped a task and labelled nothing yet.
        skipped = ReviewTask(
            text_hash="c" * 64,
            title="t",
            description="",
            reason=ReviewReason.LOW_CONFIDENCE,
            skipped_by="Cat",
            created_at=start,
            updated_at=start,
        )
        _add_as_of_revision(session, [skipped])
        session.commit()
    init_db(engine)
    with Session(engine) as session:
        rows = session.scalars(select(Reviewer).order_by(Reviewer.name_key)).all()
        found = [(r.name_key, r.name) for r in rows]
        assert found == [("ann", "Ann"), ("bob", "bob"), ("cat", "Cat")]
        assert as_utc(rows[0].first_seen) == start.replace(day=2)
        assert sorted(session.scalars(select(Label.reviewer)).all()) == sorted(
            ["ann", "Ann", "\uff21\uff2e\uff2e", "Bob", "bob"]
        )
        assert reviewers.recorded_name(session, name="ANN") == "Ann"
        assert reviewers.recorded_name(session, name="CAT") == "Cat"


def test_open_tasks_name_their_reviewers_as_recorded_after_0014(
    engines: Callable[[], Engine],
) -> None:
    """0015: a task still in the queue at the upgrade to 0014 kept the spelling its reviewers
    had used, and every check of who may act on it compares names as written. Ann, who had
    labelled as "Ann" first and then, as "ann", claimed one task and gave another its first
    opinion, is recorded as "Ann" from then on: her lease was not hers to resume and the
    second opinion on her own first label was hers to give. Labelled tasks and labels keep
    the spelling they were written with (the figures over them, as 0014 says)."""
    engine = engines()
    with engine.begin() as conn:
        command.upgrade(make_config(conn), "0013")
    start = datetime(2026, 12, 1, tzinfo=UTC)
    lease_ends = datetime.now(UTC) + timedelta(minutes=10)

    def task(content: str, **fields: Any) -> ReviewTask:
        return ReviewTask(
            text_hash=content * 64,
            title=content,
            description="",
            reason=ReviewReason.LOW_CONFIDENCE,
            created_at=start,
            updated_at=start,
            **fields,
        )

    with Session(engine) as session:
        for content, reviewer, day in (("a", "Ann", 1), ("b", "ann", 2)):
            session.add(
                Label(
                    text_hash=content * 64,
                    title=content,
                    description="",
                    tag="mlops",
                    reviewer=reviewer,
                    source=LabelSource.REVIEW,
                    created_at=start.replace(day=day),
                )
            )
        second = task("b", stage=ReviewStage.SECOND, first_reviewer="ann")
        leased = task("c", status=ReviewStatus.LEASED, leased_by="ann", lease_expires_at=lease_ends)
        done = task("d", status=ReviewStatus.LABELED, first_reviewer="ann")
        ids = _add_as_of_revision(session, [second, leased, done])
        session.commit()
    init_db(engine)
    with Session(engine) as session:
        ann = reviewers.recorded_name(session, name="ann")
        assert ann == "Ann"
        held = leases.claim(session, reviewer=ann, lease_s=600)
        assert held is not None and held.id == ids[1]  # her lease, resumed
        open_to_ann = session.scalars(
            select(ReviewTask.id).where(overlap.not_labelled_by(ann), ReviewTask.id == ids[0])
        ).first()
        assert open_to_ann is None  # her own first opinion: not hers to second
        assert session.get(ReviewTask, ids[2]).first_reviewer == "ann"
        assert sorted(session.scalars(select(Label.reviewer)).all()) == ["Ann", "ann"]


def test_tasks_shed_before_0016_count_as_shed(engines: Callable[[], Engine]) -> None:
    """0016: the count of tasks ever shed reads `shed_at`, which the bound sets from then on;
    a task already shed at the upgrade gets its last change as its time shed, others none."""
    engine = engines()
    with engine.begin() as conn:
        command.upgrade(make_config(conn), "0015")
    when = datetime(2026, 12, 1, tzinfo=UTC)
    rows = [
        ReviewTask(
            text_hash=content * 64,
            title=content,
            description="",
            reason=ReviewReason.LOW_CONFIDENCE,
            status=status_,
            created_at=when - timedelta(days=40),
            updated_at=when,
        )
        for content, status_ in (("a", ReviewStatus.SHED), ("b", ReviewStatus.OPEN))
    ]
    with Session(engine) as session:
        shed_id, open_id = _add_as_of_revision(session, rows)
        session.commit()
    init_db(engine)
    with Session(engine) as session:
        shed_at = session.get(ReviewTask, shed_id).shed_at
        assert shed_at is not None and as_utc(shed_at) == when
        assert session.get(ReviewTask, open_id).shed_at is None


def test_a_registry_with_two_production_versions_keeps_the_one_promoted_last(
    engines: Callable[[], Engine],
) -> None:
    """0009: what a promotion race left behind before the one-production index existed is
    settled as the later promotion would have: the others are archived, nothing is deleted."""
    engine = engines()
    with engine.begin() as conn:
        command.upgrade(make_config(conn), "0008")
    start = datetime(2026, 12, 1, tzinfo=UTC)
    with Session(engine) as session:
        for version, day in (("v0001", 1), ("v0002", 3), ("v0003", 2), ("v0004", None)):
            at = None if day is None else start.replace(day=day)
            status = "CANDIDATE" if day is None else "PRODUCTION"
            session.execute(_model_version_row(version, promoted_at=at, status=status))
        session.commit()
    init_db(engine)
    with engine.connect() as conn:
        rows = dict(conn.execute(text("SELECT version, status FROM modelversion")).all())
    assert rows == {
        "v0001": "ARCHIVED",
        "v0002": "PRODUCTION",
        "v0003": "ARCHIVED",
        "v0004": "CANDIDATE",
    }


def test_a_registry_gets_the_promotions_its_versions_remember(
    engines: Callable[[], Engine],
) -> None:
    """0010: the promotions `previous_version` still shows become the production history,
    oldest first, cut where the chain comes back round (v1 replaced v3, v3 replaced v2, v2
    replaced v1: the loop rollback went round before the history was kept)."""
    engine = engines()
    with engine.begin() as conn:
        command.upgrade(make_config(conn), "0009")
    start = datetime(2026, 12, 1, tzinfo=UTC)
    remembered = {"v0001": "v0003", "v0002": "v0001", "v0003": "v0002", "v0004": None}
    with Session(engine) as session:
        for version, day, status in (
            ("v0001", None, "PRODUCTION"),  # promoted before promoted_at was recorded
            ("v0002", 2, "ARCHIVED"),
            ("v0003", 3, "ARCHIVED"),
            ("v0004", None, "CANDIDATE"),
        ):
            at = None if day is None else start.replace(day=day)
            session.execute(_model_version_row(version, promoted_at=at, status=status))
            session.execute(
                text("UPDATE modelversion SET previous_version = :p WHERE version = :v"),
                {"p": remembered[version], "v": version},
            )
        session.commit()
    init_db(engine)
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT action, version, replaced, undone_by FROM productionchange ORDER BY id")
        ).all()
    assert [tuple(r) for r in rows] == [
        ("PROMOTE", "v0002", None, None),
        ("PROMOTE", "v0003", "v0002", None),
        ("PROMOTE", "v0001", "v0003", None),
    ]
    with Session(engine) as session:
        history = production_history.history(session)
        assert [c.version for c in history] == ["v0001", "v0003", "v0002"]
        assert all("migration 0010" in c.actor for c in history)
        assert all(c.at is not None for c in history)  # v0001's is its creation time
        assert production_history.undoable(session).version == "v0001"  # type: ignore[union-attr]


def test_init_db_twice_is_a_no_op(
    engines: Callable[[], Engine], caplog: pytest.LogCaptureFixture
) -> None:
    engine = engines()
    init_db(engine)
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement.strip().split(None, 1)[0].upper())

    event.listen(engine, "before_cursor_execute", record)
    with caplog.at_level(logging.DEBUG, logger="alembic"):
        init_db(engine)
    event.remove(engine, "before_cursor_execute", record)

    assert statements, "the second call still checks the version"
    assert set(statements) <= {"SELECT", "PRAGMA"}, statements
    assert _version_rows(engine) == [head_revision()]
    # Every start of the API, the worker and the CLI calls it: nothing to say when up to date.
    assert [r.getMessage() for r in caplog.records if r.name.startswith("alembic")] == []


def test_concurrent_init_db_on_a_fresh_database(engines: Callable[[], Engine]) -> None:
    """Processes starting together (API, workers): each its own engine, all at once."""
    workers = 4
    barrier = threading.Barrier(workers)
    errors: list[BaseException] = []
    starters = [engines() for _ in range(workers)]

    def start(engine: Engine) -> None:
        try:
            barrier.wait(timeout=10)
            init_db(engine)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(engine,)) for engine in starters]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    assert _version_rows(starters[0]) == [head_revision()]
    assert _model_differences(starters[0]) == []


def test_concurrent_init_db_in_separate_processes(
    empty_url: str, engines: Callable[[], Engine], tmp_path: Path
) -> None:
    """The same across processes, where only the database's own lock keeps them apart."""
    go = tmp_path / "go"
    ready = [tmp_path / f"ready-{i}" for i in range(4)]
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _STARTING_PROCESS, empty_url, str(flag), str(go)],
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        for flag in ready
    ]
    deadline = time.monotonic() + 60
    while not all(flag.exists() for flag in ready) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()
    results = [(process.wait(timeout=60), process.stderr.read()) for process in processes]

    assert [code for code, _ in results] == [0] * len(processes), [err for _, err in results]
    engine = engines()
    assert _version_rows(engine) == [head_revision()]
    assert _model_differences(engine) == []


def test_downgrade_to_base_and_back(engines: Callable[[], Engine]) -> None:
    """Every revision's downgrade runs, and leaves nothing behind (PostgreSQL enum types too)."""
    engine = engines()
    init_db(engine)
    with engine.begin() as conn:
        command.downgrade(make_config(conn), "base")
    assert set(inspect(engine).get_table_names()) <= {VERSION_TABLE}
    if engine.dialect.name == "postgresql":
        assert inspect(engine).get_enums() == []
    init_db(engine)
    assert _model_differences(engine) == []
