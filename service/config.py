"""Service configuration: one `Settings` object, read from `TAGFLOW_*` environment variables."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

PACKAGE_DATA = Path(__file__).parent / "data"
DEFAULT_TAGS_FILE = PACKAGE_DATA / "tags.csv"
SEED_DATASET = PACKAGE_DATA / "seed.csv"
MAX_NAME_CHARS = 200  # a reviewer's name, on a key or in a request
# The longest span in days a setting may give (`tagflow db prune` takes as many): a cut that
# far back is still a date; 1,000,000 days was an OverflowError in every job that used it.
MAX_DAYS = 36_500


class Role(StrEnum):
    """What an API key may do. `admin` implies every other role; `reviewer` implies nothing
    about `client`. `metrics` reads /metrics and nothing else: the scrape shows every key's
    fingerprint, which a holder of any other key must not see."""

    CLIENT = "client"
    REVIEWER = "reviewer"
    ADMIN = "admin"
    METRICS = "metrics"


class EncoderKind(StrEnum):
    """How sentence embeddings are computed in the serving path."""

    ONNX_FP32 = "onnx-fp32"
    ONNX_INT8 = "onnx-int8"


class LogFormat(StrEnum):
    """How the processes write their logs."""

    TEXT = "text"
    JSON = "json"  # one object per line, for a log pipeline


class UnsafeSettingsError(ValueError):
    """Raised when a setting is only acceptable in development mode."""


@dataclass(frozen=True, slots=True)
class Caller:
    """Who holds an API key: its role, and the person or service it was issued to, if any.

    A key issued to a name (`reviewer/ann:KEY`) is that person's: review actions are recorded
    under the name, and a request may not act as anyone else. A role-only key (`reviewer:KEY`)
    is shared, and each review request names who acts.
    """

    role: Role
    name: str | None = None

    def describe(self) -> str:
        """The caller as records of who did what name it."""
        return (
            f"{self.role.value} key {self.name}" if self.name else f"shared {self.role.value} key"
        )


_COMMENT = re.compile(r"(^|\s)#.*$")
_HEX_DIGEST = re.compile(r"[0-9a-fA-F]{64}")
_HEADER_SAFE = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no space


def parse_api_keys(raw: str, *, source: str = "TAGFLOW_API_KEYS") -> dict[str, Caller]:
    """Parse `role:key` and `role/name:key` entries into `{key: Caller}`.

    Entries are separated by commas or line breaks; a line starting with `#` is a comment (for
    the key file). A malformed entry, an unknown role or a key listed twice is an error, never
    skipped: a key given two roles by mistake must not silently get the last one.
    """
    # A comment runs from `#` at the start of a line, or after a space, to the end of the line.
    lines = (_COMMENT.sub("", line) for line in raw.splitlines())
    keys: dict[str, Caller] = {}
    # By digest: a key listed plain and again by its hash is one key listed twice.
    digests: set[str] = set()
    entries = filter(None, (p.strip() for line in lines for p in line.split(",")))
    for n, entry in enumerate(entries, start=1):
        holder, sep, key = entry.partition(":")
        role, slash, name = (part.strip() for part in holder.partition("/"))
        key = key.strip()
        # Messages name an entry without its key: they reach logs and terminals.
        shown = f"entry {n} ({holder.strip()!r})" if sep else f"entry {n}"
        if not sep or not key or (slash and not name) or any(c.isspace() for c in key):
            raise ValueError(
                f"API key {shown} in {source} is not of the form role:key or role/name:key"
            )
        if not _HEADER_SAFE.fullmatch(key):
            # Starlette reads header bytes as Latin-1 and clients send UTF-8 (or refuse): a key
            # with "é" or a control character in it was taken, and no request could present it.
            raise ValueError(
                f"API key {shown} in {source} has a character other than printable ASCII, "
                "which no Authorization header carries as written"
            )
        key = _hashed_form(key, shown=shown, source=source)
        if len(name) > MAX_NAME_CHARS:
            raise ValueError(f"the name in {shown} is over {MAX_NAME_CHARS} characters")
        try:
            # A byte that is not UTF-8 (a Latin-1 "é" in the environment) is a lone surrogate
            # to Python: no database stores it, and a promotion by the key was a 500.
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"the name in {shown} is not UTF-8 text") from None
        if (digest := _digest(key)) in digests:
            raise ValueError(f"an API key is listed twice in {source} (again at {shown})")
        try:
            keys[key] = Caller(Role(role), name or None)
            digests.add(digest)
        except ValueError:
            roles = ", ".join(r.value for r in Role)
            raise ValueError(f"unknown role {role!r} in {source} (roles: {roles})") from None
    return keys


def _hashed_form(key: str, *, shown: str, source: str) -> str:
    """`key` as given, or a `sha256:` entry with its digest in lower case. A malformed digest is
    an error: taken as a plain key, the text of the hash itself would open the API."""
    if key[:7].lower() != "sha256:":
        return key
    digest = key[7:]
    if not _HEX_DIGEST.fullmatch(digest):
        raise ValueError(
            f"API key {shown} in {source}: sha256: must be followed by the 64 hex "
            "digits of the key's SHA-256 (tagflow keys new prints the line)"
        )
    return "sha256:" + digest.lower()


def _digest(key: str) -> str:
    """The SHA-256 of the key an entry accepts, whether the entry gives it plain or hashed:
    `k` and `sha256:<SHA-256 of k>` are one key."""
    if key.startswith("sha256:"):  # `_hashed_form` made it `sha256:` and 64 hex digits
        return key[7:]
    return hashlib.sha256(key.encode()).hexdigest()


def read_key_file_content(path: Path) -> bytes:
    """The API key file's bytes; an unreadable file is a ValueError that says which."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read the API key file {path}: {exc}") from None


def parse_key_file(content: bytes, *, path: Path, fixed: dict[str, Caller]) -> dict[str, Caller]:
    """The keys in the API key file's `content` (entries as in `parse_api_keys`), refused if
    one of them is also among the `fixed` keys of TAGFLOW_API_KEYS: one key, one holder."""
    try:
        raw = content.decode("utf-8-sig")  # an editor's byte-order mark is not part of a role
    except UnicodeDecodeError as exc:
        raise ValueError(f"cannot read the API key file {path}: {exc}") from None
    keys = parse_api_keys(raw, source=str(path))
    fixed_digests = {_digest(key) for key in fixed}
    if clash := [key for key in keys if _digest(key) in fixed_digests]:
        holder = keys[clash[0]]
        raise ValueError(
            f"{len(clash)} key(s) in {path} are also in TAGFLOW_API_KEYS (one held by "
            f"{holder.name or 'a shared ' + holder.role.value + ' key'})"
        )
    return keys


MIN_BUNDLE_KEY_CHARS = 32  # 192 bits or more as random URL-safe text


def generate_dev_keys() -> str:
    """Random keys for development mode, one per role, printed by `tagflow up`."""
    return ",".join(f"{role.value}:{role.value}-{secrets.token_urlsafe(12)}" for role in Role)


# The databases the schema, its migrations and the tests cover (plain `postgresql` is
# SQLAlchemy's default driver for it, psycopg 3).
SUPPORTED_DATABASES = frozenset({"sqlite", "sqlite+pysqlite", "postgresql", "postgresql+psycopg"})


class Settings(BaseSettings):
    """Everything tagflow reads from its environment. Unsafe values are refused unless `dev`."""

    # An empty variable is an unset one: compose files pass `${VAR:-}` through as "", and an
    # empty TAGFLOW_API_KEYS_FILE must not become the path "." (nor TAGFLOW_ENCODER_DIR).
    # No `inf` or `nan`: TAGFLOW_WATCH_INTERVAL_S=inf was taken, and the API never looked for
    # a new model, relayed the outbox or queued a prune again; TAGFLOW_MICROBATCH_WAIT_MS=inf
    # held a request until others came; TAGFLOW_LOG_FLUSH_INTERVAL_S=inf wrote no prediction
    # before the stop, and GET /predictions/{id} of an unknown id waited for ever.
    model_config = SettingsConfigDict(
        env_prefix="TAGFLOW_",
        env_file=".env",
        extra="ignore",
        env_ignore_empty=True,
        allow_inf_nan=False,
    )

    dev: bool = False
    data_dir: Path = Path("./var")
    database_url: str | None = None
    redis_url: str | None = None
    api_keys: Annotated[str, NoDecode] = ""
    # More keys, one entry per line, re-read while the API runs (service/api_keys.py): keys in
    # it can be issued, rotated and revoked without a restart.
    api_keys_file: Path | None = None
    tags_file: Path = DEFAULT_TAGS_FILE

    max_title_chars: int = Field(300, ge=1)
    max_description_chars: int = Field(5000, ge=1)
    max_batch_items: int = Field(256, ge=1)
    # Larger request bodies are refused with 413 before they are read; unset: the largest
    # valid batch (service/api/limits.py), 8,207,360 bytes with the defaults above.
    max_body_bytes: int | None = Field(None, ge=1)
    target_precision: float = Field(0.99, gt=0.0, le=1.0)
    # Share of predictions (chosen by content hash, accepted or not) reviewed as the audit
    # sample: the only unbiased measure of how precise automatic acceptance is on live traffic.
    audit_share: float = Field(0.05, ge=0.0, le=1.0)
    # When the audit shows live precision below target (95% interval), the served cut is
    # raised (service/calibration.py): checked this often, once this many audit labels exist.
    # 0 s turns the automatic check off; POST /models/{version}/recalibrate still works.
    recalibrate_interval_s: float = Field(300.0, ge=0.0)
    recalibrate_min_audited: int = Field(100, ge=1)
    # Also lower the cut when the audit shows, with 95% confidence, that a lower one reaches
    # the target: more items accepted, on evidence from live traffic.
    recalibrate_lower: bool = True
    # Send the training rows whose label the out-of-fold model doubts to review (label_check).
    review_suspects: bool = True

    encoder: EncoderKind = EncoderKind.ONNX_INT8
    encoder_dir: Path | None = None
    # One ONNX Runtime thread per item and two items at a time: the cheapest CPU per item, and
    # two cores busy (measured against 2 x 1 in loadtests/: 412 vs 278 req/s at concurrency 8).
    encoder_threads: int = Field(1, ge=1)
    score_threads: int = Field(2, ge=1)
    embedding_cache_size: int = Field(10_000, ge=0)
    # The worker's jobs (retraining, comparison, reprioritisation, labelling) run at this
    # niceness and on this many threads (ONNX Runtime, BLAS, OpenMP; workers/cpu_share.py).
    # Niceness 0 by default: on the shared 2-core test machine, 10 did not clearly lower
    # /predict's latency during a retraining, and the retraining took longer and the labelling
    # fell behind (loadtests/RESULTS.md, "A retraining beside /predict").
    worker_nice: int = Field(0, ge=0, le=19)
    worker_threads: int = Field(2, ge=1)
    # Answer from the TF-IDF head alone where training found it as sure as the full model.
    fast_path: bool = True
    microbatch_max: int = Field(16, ge=1)
    # Up to 2 ms to gather concurrent requests into one fast-path triage: fewer thread hand-offs
    # under load (p99 at concurrency 8: 44 ms in two full benchmark runs, 48 and 54 without),
    # for about 2.5 ms more at concurrency 1 (p50 ~4 ms). See loadtests/.
    microbatch_wait_ms: float = Field(2.0, ge=0.0)
    # Admission control: a request that would wait behind more than this many items is refused
    # with 503 and Retry-After (0: no bound). At 300-700 fresh items/s on two cores, 1,024
    # items are 1.5-3.5 s of work; beyond that a retry serves the client better than a queue.
    max_waiting_items: int = Field(1024, ge=0)

    log_format: LogFormat = LogFormat.TEXT
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    log_flush_interval_s: float = Field(0.25, gt=0.0)
    # Predictions older than this are deleted once a day by a worker (service/retention.py);
    # those a user report points at stay. 0 keeps them all (or prune from cron: tagflow db prune).
    retention_days: float = Field(0.0, ge=0.0, le=MAX_DAYS)
    log_batch_size: int = Field(500, ge=1)
    # Predictions the write-behind log keeps in memory while the database is away (about 1.8 KB
    # each); past this, the oldest go to the spill file and are written from there later.
    log_max_buffered: int = Field(20_000, ge=1)

    review_lease_s: int = Field(600, ge=1, le=MAX_DAYS * 86_400)
    # The queue's bound: past this many open low-confidence tasks, the lowest-priority ones are
    # shed (kept as `shed`, out of the queue), and so are those open longer than the age limit.
    # User reports, audit items and label checks are never shed. 0 turns either bound off.
    review_queue_limit: int = Field(20_000, ge=0)
    review_max_age_days: float = Field(30.0, ge=0.0, le=MAX_DAYS)
    # Share of contents (by hash) labelled twice, by different reviewers, the second blind to
    # the first; a third decides when they differ (crud/overlap.py). Their agreement measures
    # the labels. Off by default: it needs two reviewers, three for the decisions.
    review_overlap_share: float = Field(0.0, ge=0.0, le=1.0)
    duplicate_cosine: float = Field(0.95, gt=0.0, le=1.0)
    trust_feedback: bool = False
    # Reports one key may send a minute (across API processes, counted in Redis); more get 429
    # with Retry-After. 0: no quota. A report is review work, and one client key can send
    # them under any number of reporter names.
    feedback_per_key_per_minute: int = Field(600, ge=0)
    # The loop closes itself by default: a retrain (behind the quality gate) after this many new
    # labels; 0 turns it off. In the loop simulation, retraining is what lifted automatic
    # acceptance from the seed model's 0.95 live precision to 0.99+.
    retrain_after_labels: int = Field(50, ge=0)
    auto_promote: bool = True
    label_holdout_share: float = Field(0.2, ge=0.0, lt=1.0)
    base_dataset: Path | None = None
    shadow: bool = True
    watch_interval_s: float = Field(2.0, gt=0.0)
    # A secret shared by deployments that exchange model versions (service/ml/bundle.py): set,
    # exports are signed with it and imports must be. At least 32 characters (a random one:
    # `python -c "import secrets; print(secrets.token_urlsafe(32))"`).
    bundle_key: SecretStr | None = None

    @field_validator("api_keys")
    @classmethod
    def _check_keys(cls, value: str) -> str:
        parse_api_keys(value)
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        url = _parsed_url(value)
        if url is None or url.drivername not in SUPPORTED_DATABASES:
            raise ValueError(
                "is not a database tagflow runs on: use sqlite:///PATH or "
                "postgresql+psycopg://USER@HOST:PORT/DB"
            )
        if url.get_backend_name() == "sqlite" and (
            url.database in (None, "", ":memory:") or url.query.get("mode") == "memory"
        ):
            # Each connection would get an empty database of its own: no table the migrations
            # made, and nothing shared between the API, its threads and the workers.
            raise ValueError("is an in-memory SQLite database: use sqlite:///PATH to a file")
        if url.get_backend_name() == "postgresql" and not url.database:
            # libpq then connects to the database named after the user (the OS user's, without
            # one): `postgresql+psycopg://` made tagflow's tables in a database called "root".
            raise ValueError(
                "names no database: use postgresql+psycopg://USER@HOST:PORT/DB (libpq would "
                "pick one named after the user)"
            )
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        # Read by redis-py only once a process connects: a wrong scheme was a traceback at the
        # API's start-up (exit 3) and the worker's, and a database that is not a number (".../
        # seven") was database 0 without a word, where other deployments may keep their queues.
        if value is None:
            return value
        from redis.connection import parse_url

        try:
            parse_url(value)
        except ValueError as exc:
            raise ValueError(
                f"is not a Redis URL ({exc}): use redis://[:PASSWORD@]HOST:PORT/DB"
            ) from None
        parts = urlsplit(value)
        database = parts.path.lstrip("/") if parts.scheme != "unix" else ""
        if database and not database.isdigit():
            raise ValueError(f"names the database {database!r}: a Redis database is a number")
        return value

    @field_validator("base_dataset")
    @classmethod
    def _check_base_dataset(cls, value: Path | None) -> Path | None:
        # A retraining records the file as its candidate's `params.source`: a byte that is not
        # UTF-8 in its name (a lone surrogate to Python) was recorded, after which every
        # GET /models answered 500.
        try:
            if value is not None:
                str(value.resolve()).encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("its name is not UTF-8 text, which the registry records") from None
        return value

    @field_validator("bundle_key")
    @classmethod
    def _check_bundle_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_BUNDLE_KEY_CHARS:
            raise ValueError(f"a bundle key has at least {MIN_BUNDLE_KEY_CHARS} characters")
        return value

    @field_validator("retention_days")
    @classmethod
    def _check_retention(cls, value: float) -> float:
        # As `tagflow db prune`: under a day would delete what the audit and review still read.
        if 0.0 < value < 1.0:
            raise ValueError("retention_days is 0 (keep everything) or at least 1")
        return value

    @model_validator(mode="after")
    def _refuse_unsafe(self) -> Settings:
        file_keys = self.file_keys  # read at start, so a bad key file stops the service
        if not self.dev and not self.keys and not file_keys:
            where = f" and {self.api_keys_file} holds none" if self.api_keys_file else ""
            raise UnsafeSettingsError(
                f"TAGFLOW_API_KEYS is empty{where}: set role:key pairs (or a key file, "
                "TAGFLOW_API_KEYS_FILE), or TAGFLOW_DEV=1 for development"
            )
        return self

    @cached_property
    def keys(self) -> dict[str, Caller]:
        """API key -> who holds it."""
        return parse_api_keys(self.api_keys)

    @cached_property
    def key_file_content(self) -> bytes | None:
        """TAGFLOW_API_KEYS_FILE's bytes as read when these settings were made (None if it is
        not set). Read once: the API's `KeyRing` starts from them, and follows later edits."""
        if self.api_keys_file is None:
            return None
        return read_key_file_content(self.api_keys_file)

    @cached_property
    def file_keys(self) -> dict[str, Caller]:
        """The keys in `key_file_content` (none if no key file is set)."""
        content, path = self.key_file_content, self.api_keys_file
        if content is None or path is None:
            return {}
        return parse_key_file(content, path=path, fixed=self.keys)

    @property
    def resolved_database_url(self) -> str:
        """The configured database, or SQLite inside the data directory."""
        return self.database_url or f"sqlite:///{(self.data_dir / 'tagflow.db').resolve()}"

    @property
    def bundle_secret(self) -> str | None:
        """TAGFLOW_BUNDLE_KEY's value, or None when bundles are not signed."""
        return self.bundle_key.get_secret_value() if self.bundle_key else None

    @property
    def artifacts_dir(self) -> Path:
        """Where model versions are written, one folder each."""
        return self.data_dir / "models"

    @property
    def resolved_encoder_dir(self) -> Path:
        """Where the ONNX export of the encoder lives (shared between data dirs if set)."""
        return self.encoder_dir or self.data_dir / "encoder"

    @property
    def dead_letter_path(self) -> Path:
        """JSON Lines of predictions the database refused (`tagflow db replay-dead-letters`)."""
        return self.data_dir / "dead-letter" / "predictions.jsonl"

    @property
    def spill_path(self) -> Path:
        """JSON Lines of predictions kept through an outage at shutdown, written at next start."""
        return self.data_dir / "spill" / "predictions.jsonl"

    @property
    def redis_dir(self) -> Path:
        """Working directory of the embedded Redis."""
        return self.data_dir / "redis"


def get_settings() -> Settings:
    """Read settings from the environment (a fresh object each call; the app keeps its own)."""
    return Settings()


def _parsed_url(url: str) -> URL | None:
    """`url` as SQLAlchemy reads it; None if it is not a database URL."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url)
    except ArgumentError:
        return None


def describe_errors(exc: ValidationError) -> str:
    """A refused configuration as a person reads it: one line per fault, each naming the
    variable to change (pydantic's own text adds its type names and a documentation link)."""
    lines = []
    for error in exc.errors():
        message = str(error["msg"]).removeprefix("Value error, ")
        field = ".".join(str(part) for part in error["loc"])
        lines.append(f"TAGFLOW_{field.upper()}: {message}" if field else message)
    return "\n".join(lines)
