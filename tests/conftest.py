"""Shared fixtures. Everything here is real: Redis, SQLite / PostgreSQL, the ONNX encoder and
models trained on the bundled seed and the shared dataset.

Environment:
- TAGFLOW_REDIS_URL: a Redis to use (CI: redis://127.0.0.1:6379); unset -> an embedded one.
- TAGFLOW_TEST_POSTGRES_URL: PostgreSQL for the storage tests
  (default postgresql+psycopg://postgres@127.0.0.1:5432/test).
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from sqlalchemy import text
from sqlalchemy.engine import Engine, make_url
from sqlmodel import Session

from service.api.head_limit import HeadLimitedHttpTools
from service.api.main import create_app
from service.config import DEFAULT_TAGS_FILE, SEED_DATASET, EncoderKind, Settings
from service.db import init_db, make_engine
from service.entities import PredictionCreate, PredictionStatus
from service.entities.common import new_id
from service.ml import registry
from service.ml.dataset import Example, load_dataset, text_hash
from service.ml.encoder import Encoder, load_encoder
from service.ml.pipeline import base_split
from service.ml.training import TrainResult, train
from service.redis_server import EmbeddedRedis
from service.tags import TagSet, load_tags
from tests.lossy_proxy import LossyProxy, lossy_proxy

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASET = ROOT.parent / "shared" / "data" / "madewithml" / "dataset.csv"
POSTGRES_URL = os.environ.get(
    "TAGFLOW_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
# The test PostgreSQL server, asked for what it refuses for good (a configuration error, not an
# outage): a database, then a role, that does not exist; each URL with a password that must
# never be shown. Parameters (URL, the server's reason) of the tests that start a command on it.
MISCONFIGURED_POSTGRES = [
    pytest.param(
        make_url(POSTGRES_URL)
        .set(database="tagflow_no_such_database", password="s3cret-pw")
        .render_as_string(hide_password=False),
        'database "tagflow_no_such_database" does not exist',
        id="no-such-database",
    ),
    pytest.param(
        make_url(POSTGRES_URL)
        .set(username="tagflow_no_such_role", password="s3cret-pw")
        .render_as_string(hide_password=False),
        'role "tagflow_no_such_role" does not exist',
        id="no-such-role",
    ),
]
DEFAULT_ENCODER: EncoderKind = Settings.model_fields["encoder"].default
KEYS = {
    "client": "test-client-key",
    "reviewer": "test-reviewer-key",
    "admin": "test-admin-key",
    "metrics": "test-metrics-key",
}
# Keys issued to a person (`role/name:key`): review actions are recorded under the name.
# Holders of personal keys; the shared reviewer key acts under other names (ann, bob, ...):
# a shared key may not act as the holder of a personal one.
PERSONAL_KEYS = {"pia": "test-pia-key", "quin": "test-quin-key"}


def auth(role: str) -> dict[str, str]:
    """Authorization header for a role's shared test key."""
    return {"Authorization": f"Bearer {KEYS[role]}"}


def auth_as(name: str) -> dict[str, str]:
    """Authorization header for a reviewer's personal test key."""
    return {"Authorization": f"Bearer {PERSONAL_KEYS[name]}"}


@pytest.fixture(autouse=True)
def stop_signals_restored() -> Iterator[None]:
    """SIGTERM and SIGINT handled after each test as before it: `stop_signal_as_interrupt`
    leaves them ignored once it has taken one, or once a version's commit is under way (the
    process it stops is ending), and a test runs `tagflow train` or `models import` here."""
    saved = {each: signal.getsignal(each) for each in (signal.SIGTERM, signal.SIGINT)}
    yield
    for each, handler in saved.items():
        signal.signal(each, handler)


@pytest.fixture(scope="session")
def shared_dataset() -> Path:
    assert SHARED_DATASET.exists(), f"the shared dataset is expected at {SHARED_DATASET}"
    return SHARED_DATASET


@pytest.fixture(scope="session")
def tags() -> TagSet:
    return load_tags(DEFAULT_TAGS_FILE)


@pytest.fixture(scope="session")
def new_items(shared_dataset: Path, tags: TagSet) -> list[Example]:
    """Correctly tagged items the seed does not contain: what reviewers would add."""
    examples, _ = load_dataset(shared_dataset, tags=tags)
    seed, _ = load_dataset(SEED_DATASET, tags=tags)
    known = {e.text_hash for e in seed}
    return [e for e in examples if e.text_hash not in known][:40]


@pytest.fixture(scope="session")
def encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ONNX export for the whole run (TAGFLOW_TEST_ENCODER_DIR reuses one across runs)."""
    configured = os.environ.get("TAGFLOW_TEST_ENCODER_DIR")
    return Path(configured) if configured else tmp_path_factory.mktemp("encoder")


@pytest.fixture(scope="session")
def encoder(encoder_dir: Path) -> Encoder:
    return load_encoder(encoder_dir, DEFAULT_ENCODER, threads=2, cache_size=50_000)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    configured = os.environ.get("TAGFLOW_REDIS_URL")
    if configured:
        yield configured
        return
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    yield server.start()
    server.stop()


def _with_db(url: str, db: int) -> str:
    """`url` pointed at Redis database `db` (replacing any database already in it)."""
    base, _, last = url.rstrip("/").rpartition("/")
    return f"{base}/{db}" if last.isdigit() and base.count("/") >= 2 else f"{url.rstrip('/')}/{db}"


@pytest.fixture
def test_redis_url(redis_url: str) -> str:
    """The Redis URL of the database this test run owns (TAGFLOW_TEST_REDIS_DB, default 9)."""
    return _with_db(redis_url, int(os.environ.get("TAGFLOW_TEST_REDIS_DB", "9")))


@pytest.fixture
def redis_conn(test_redis_url: str) -> Iterator[redis.Redis]:
    """A connection to the test database, emptied before each test."""
    conn = redis.Redis.from_url(test_redis_url)
    conn.flushdb()
    yield conn
    conn.close()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A Redis of this test's own, on its own port, that the test may stop or restart (never
    the shared one)."""
    server = EmbeddedRedis(tmp_path / "own-redis")
    server.start()
    yield server
    server.stop()


def _reset_postgres(url: str) -> Engine:
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    init_db(engine)
    return engine


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each storage test runs twice: on SQLite and on PostgreSQL (emptied first)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'tagflow.db'}"
    _reset_postgres(POSTGRES_URL).dispose()
    return POSTGRES_URL


@pytest.fixture
def empty_postgres_url() -> str:
    """The test PostgreSQL database, emptied first, for a test about PostgreSQL alone."""
    _reset_postgres(POSTGRES_URL).dispose()
    return POSTGRES_URL


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    init_db(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    """SQLite only, for tests that are not about storage. Made by the migrations, as the
    service makes its database (`create_all` would look like a database from before them)."""
    engine = make_engine(f"sqlite:///{tmp_path / 'tagflow.db'}")
    init_db(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def cli_env(tmp_path: Path, encoder_dir: Path) -> dict[str, str]:
    """The environment of a `tagflow` command run by a test: its own data dir, an admin key."""
    return {
        "TAGFLOW_API_KEYS": "admin:k",
        "TAGFLOW_DATA_DIR": str(tmp_path / "var"),
        "TAGFLOW_ENCODER_DIR": str(encoder_dir),
    }


@pytest.fixture(scope="session")
def seed_result(encoder: Encoder, tags: TagSet) -> TrainResult:
    """A model trained on the bundled seed's train split (the `tagflow up` model)."""
    train_set, eval_set, _ = base_split(SEED_DATASET, tags=tags)
    result = train(train_set, eval_set, encoder=encoder, target_precision=0.99)
    result.params["source"] = str(SEED_DATASET)
    return result


@pytest.fixture(scope="session")
def shared_result(encoder: Encoder, tags: TagSet, shared_dataset: Path) -> TrainResult:
    """A model trained on the shared dataset's train split."""
    train_set, eval_set, _ = base_split(shared_dataset, tags=tags)
    result = train(train_set, eval_set, encoder=encoder, target_precision=0.99)
    result.params["source"] = str(shared_dataset)
    return result


@pytest.fixture
def make_settings(
    tmp_path: Path, encoder_dir: Path, test_redis_url: str, redis_conn: redis.Redis
) -> Callable[..., Settings]:
    """Explicit Settings for a test (never the process environment's)."""

    def build(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "dev": False,
            "api_keys": ",".join(
                [f"{role}:{key}" for role, key in KEYS.items()]
                + [f"reviewer/{name}:{key}" for name, key in PERSONAL_KEYS.items()]
            ),
            "data_dir": tmp_path / "var",
            "encoder_dir": encoder_dir,
            "redis_url": test_redis_url,
            "log_flush_interval_s": 0.05,
            "watch_interval_s": 0.2,
            "base_dataset": SEED_DATASET,
            # No audit sample, no label checks and no automatic retraining unless a test asks
            # for them: they would add review work and training jobs to tests that count rows,
            # tasks or jobs.
            "audit_share": 0.0,
            "review_suspects": False,
            "retrain_after_labels": 0,
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    return build


def make_prediction(
    title: str,
    *,
    status: PredictionStatus = PredictionStatus.AUTO,
    tag: str = "natural-language-processing",
    confidence: float = 0.4,
) -> PredictionCreate:
    """A prediction as the API logs it, for tests that write the log or the outbox directly."""
    return PredictionCreate(
        id=new_id(),
        text_hash=text_hash(title, ""),
        title=title,
        description="",
        tag=tag,
        confidence=confidence,
        scores={tag: confidence},
        status=status,
        model_version="v-test",
        latency_ms=1.0,
    )


def register_promoted(engine: Engine, settings: Settings, result: TrainResult) -> str:
    """Register `result` in this test's registry and make it production; returns the version."""
    with Session(engine, expire_on_commit=False) as session:
        row = registry.register(session, result=result, artifacts_dir=settings.artifacts_dir)
        tags = load_tags(settings.tags_file)
        return registry.promote(
            session,
            actor="test",
            version=row.version,
            tags=tags,
            artifacts_dir=settings.artifacts_dir,
        ).version


@pytest.fixture
def app_settings(make_settings: Callable[..., Settings], database_url: str) -> Settings:
    return make_settings(database_url=database_url)


@pytest.fixture
def client(
    app_settings: Settings, engine: Engine, shared_result: TrainResult
) -> Iterator[TestClient]:
    """The real app (lifespan and all) on SQLite and PostgreSQL, serving a shared-data model."""
    register_promoted(engine, app_settings, shared_result)
    with TestClient(create_app(app_settings)) as test_client:
        yield test_client


@contextmanager
def sqlite_app(
    make_settings: Callable[..., Settings], tmp_path: Path, result: TrainResult, **overrides: object
) -> Iterator[TestClient]:
    """The real app on a SQLite file of its own, serving `result`, with settings `overrides`."""
    settings = make_settings(database_url=f"sqlite:///{tmp_path / 'api.db'}", **overrides)
    engine = make_engine(settings.resolved_database_url)
    init_db(engine)
    register_promoted(engine, settings, result)
    engine.dispose()
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def sqlite_client(
    make_settings: Callable[..., Settings], tmp_path: Path, shared_result: TrainResult
) -> Iterator[TestClient]:
    """The real app on SQLite only, for API tests that are not about storage."""
    with sqlite_app(make_settings, tmp_path, shared_result) as test_client:
        yield test_client


@contextmanager
def live_server(app: FastAPI) -> Iterator[str]:
    """`app` served by uvicorn on a free local port, in a thread; yields its base URL once
    /healthz answers, and stops it on exit."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    # The HTTP protocol `tagflow serve` runs (service/cli/main.py's run_api).
    config = uvicorn.Config(app, http=HeadLimitedHttpTools, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        _wait_healthy(url, thread)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def _wait_healthy(url: str, thread: threading.Thread) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert thread.is_alive(), "the server thread died during start-up"
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url}/healthz did not answer within 60 s")


# ---------- the review and docs pages in a real browser ----------

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


@dataclass
class LiveApp:
    """The real app served on a local port, and the engine of its database."""

    url: str
    engine: Engine


@contextmanager
def serve_live(settings: Settings, result: TrainResult) -> Iterator[LiveApp]:
    """The real app served by uvicorn on a free local port, with `result` in production."""
    engine = make_engine(settings.resolved_database_url)
    init_db(engine)
    register_promoted(engine, settings, result)
    with live_server(create_app(settings)) as url:
        yield LiveApp(url=url, engine=engine)
    engine.dispose()


@pytest.fixture
def live_app(
    make_settings: Callable[..., Settings], tmp_path: Path, shared_result: TrainResult
) -> Iterator[LiveApp]:
    with serve_live(
        make_settings(database_url=f"sqlite:///{tmp_path / 'review.db'}"), shared_result
    ) as app:
        yield app


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    """Headless Chromium from the Debian packages (CI installs them)."""
    assert CHROMIUM.exists() and CHROMEDRIVER.exists(), "apt-get install chromium chromium-driver"
    options = Options()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--window-size=1280,860",
        f"--user-data-dir={tmp_path / 'chromium'}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


@pytest.fixture
def proxy(live_app: LiveApp) -> Iterator[LossyProxy]:
    """The live app behind a proxy that can lose requests or answers; the page goes through
    it (every request a new connection, so Chromium resends nothing by itself)."""
    with lossy_proxy(live_app.url) as lossy:
        yield lossy
