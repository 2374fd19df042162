"""Settings refuse unsafe defaults outside development mode."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from service.cli.main import app
from service.config import (
    Caller,
    Role,
    Settings,
    describe_errors,
    generate_dev_keys,
    parse_api_keys,
)
from service.tags import TagFileError, load_tags


def test_no_keys_is_refused_outside_dev() -> None:
    with pytest.raises(ValidationError, match="TAGFLOW_API_KEYS is empty"):
        Settings(_env_file=None, api_keys="")  # type: ignore[call-arg]
    dev = Settings(_env_file=None, dev=True, api_keys="")  # type: ignore[call-arg]
    assert dev.keys == {}


def test_keys_parse_into_roles_and_holders() -> None:
    keys = parse_api_keys("client:abc, admin:xyz ,reviewer:r-1, reviewer/Ann Lee:a:1")
    assert keys == {
        "abc": Caller(Role.CLIENT),
        "xyz": Caller(Role.ADMIN),
        "r-1": Caller(Role.REVIEWER),
        "a:1": Caller(Role.REVIEWER, "Ann Lee"),  # a key may hold a colon: the first one splits
    }
    generated = parse_api_keys(generate_dev_keys())
    assert sorted(c.role for c in generated.values()) == sorted(Role)


@pytest.mark.parametrize(
    "raw",
    [
        "client",
        "boss:key",
        "client:",
        "reviewer/:key",
        "boss/ann:key",
        f"reviewer/{'a' * 201}:k",
        "client:two words",  # a key holds no space: this is a typo, not a key
        "client:sha256:abc",  # a hash too short is not taken as a plain key
        f"client:sha256:{'g' * 64}",
        f"client:SHA256:{'a' * 63}",
    ],
)
def test_malformed_keys_are_errors(raw: str) -> None:
    with pytest.raises(ValidationError):
        Settings(_env_file=None, api_keys=raw)  # type: ignore[call-arg]


def test_a_comment_may_follow_an_entry_on_its_line() -> None:
    """As the README's key file example shows; `#` inside a key is part of it."""
    keys = parse_api_keys("client/search:k-1        # the search service\nadmin:a#b # ops\n")
    assert keys == {"k-1": Caller(Role.CLIENT, "search"), "a#b": Caller(Role.ADMIN)}


def test_a_hash_in_capitals_is_the_same_hash() -> None:
    digest = hashlib.sha256(b"secret-key").hexdigest()
    keys = parse_api_keys(f"client:SHA256:{digest.upper()}")
    assert keys == {f"sha256:{digest}": Caller(Role.CLIENT)}


def test_a_key_listed_twice_is_refused() -> None:
    # Otherwise the last entry would win, and a typo could hand a client key admin rights.
    with pytest.raises(ValidationError, match="listed twice") as excinfo:
        Settings(_env_file=None, api_keys="client:s3cret,admin:s3cret")  # type: ignore[call-arg]
    # Named by position and holder, never with the key: the message reaches logs.
    said = describe_errors(excinfo.value)  # as the CLI and the API's log show it
    assert "again at entry 2 ('admin')" in said and "s3cret" not in said
    for malformed in ("s3cret", "client/:s3cret", "client:s3 cret"):
        with pytest.raises(ValidationError, match="is not of the form") as excinfo:
            Settings(_env_file=None, api_keys=malformed)  # type: ignore[call-arg]
        assert "s3cret" not in describe_errors(excinfo.value)


@pytest.mark.parametrize("key", ["clé-0123456789abcdefghij", "tab\x01-0123456789abcdefghij"])
def test_a_key_no_header_can_carry_is_refused(key: str) -> None:
    """A key with "é" (or a control character) was taken at start, and every request with it
    got 401: clients send the header as UTF-8, the server reads it as Latin-1, so the key no
    request could present locked out its holder with no word of why."""
    with pytest.raises(ValidationError, match="other than printable ASCII") as excinfo:
        Settings(_env_file=None, api_keys=f"client:{key}")  # type: ignore[call-arg]
    assert "entry 1 ('client')" in describe_errors(excinfo.value)
    assert key not in describe_errors(excinfo.value)


def test_a_key_listed_plain_and_again_by_its_hash_is_listed_twice(tmp_path: Path) -> None:
    """`k` and `sha256:<SHA-256 of k>` accept the same key. Before, only two identical entries
    counted as one key listed twice: `reviewer:k,admin:sha256:<hash of k>` started, `k` acted
    as a reviewer and the admin entry meant to hold it did nothing, whichever was meant."""
    digest = hashlib.sha256(b"s3cret").hexdigest()
    hashed = f"sha256:{digest}"
    for keys in (f"reviewer:s3cret,admin:{hashed}", f"admin:sha256:{digest.upper()},client:s3cret"):
        with pytest.raises(ValidationError, match="listed twice") as excinfo:
            Settings(_env_file=None, api_keys=keys)  # type: ignore[call-arg]
        assert "again at entry 2" in describe_errors(excinfo.value)
    # And across the environment and the key file: one key, one holder.
    path = tmp_path / "keys"
    path.write_text(f"admin:{hashed}\n")
    with pytest.raises(ValidationError, match="also in TAGFLOW_API_KEYS"):
        Settings(_env_file=None, api_keys="client:s3cret", api_keys_file=path)  # type: ignore[call-arg]
    path.write_text("admin:s3cret\n")
    with pytest.raises(ValidationError, match="also in TAGFLOW_API_KEYS"):
        Settings(_env_file=None, api_keys=f"client:{hashed}", api_keys_file=path)  # type: ignore[call-arg]


def test_a_key_file_is_checked_at_start(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    with pytest.raises(ValidationError, match="cannot read the API key file"):
        Settings(_env_file=None, api_keys_file=path)  # type: ignore[call-arg]
    path.write_text("client:app\nreviewer ann\n")
    with pytest.raises(ValidationError, match=f"entry 2 in {path} is not of the form"):
        Settings(_env_file=None, api_keys_file=path)  # type: ignore[call-arg]
    path.write_text("\ufeffclient:app\n", encoding="utf-8")  # a byte-order mark, as editors save
    settings = Settings(_env_file=None, api_keys_file=path)  # type: ignore[call-arg]
    assert settings.file_keys == {"app": Caller(Role.CLIENT)}
    path.write_text("admin:root\n")
    with pytest.raises(ValidationError, match="also in TAGFLOW_API_KEYS"):
        Settings(_env_file=None, api_keys="admin:root", api_keys_file=path)  # type: ignore[call-arg]


def test_keys_in_the_file_alone_are_enough_outside_dev(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("# no keys yet\n")
    with pytest.raises(ValidationError, match=f"{path} holds none"):
        Settings(_env_file=None, api_keys_file=path)  # type: ignore[call-arg]
    path.write_text("client:app\n")
    settings = Settings(_env_file=None, api_keys_file=path)  # type: ignore[call-arg]
    assert settings.keys == {}
    assert settings.file_keys == {"app": Caller(Role.CLIENT)}
    # Read once, when the settings were made (a second read could see another file).
    path.unlink()
    assert settings.file_keys == {"app": Caller(Role.CLIENT)}


def test_environment_is_read_with_prefix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TAGFLOW_API_KEYS", "client:k")
    monkeypatch.setenv("TAGFLOW_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("TAGFLOW_MAX_TITLE_CHARS", "50")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.max_title_chars == 50
    assert settings.resolved_database_url == f"sqlite:///{(tmp_path / 'tagflow.db').resolve()}"


def test_an_empty_variable_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    # As compose passes `${TAGFLOW_API_KEYS_FILE:-}`: not the path ".", which is no key file.
    monkeypatch.setenv("TAGFLOW_API_KEYS", "client:k")
    for name in ("API_KEYS_FILE", "ENCODER_DIR", "DATABASE_URL", "MAX_TITLE_CHARS"):
        monkeypatch.setenv(f"TAGFLOW_{name}", "")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.api_keys_file is None and settings.encoder_dir is None
    assert settings.database_url is None and settings.max_title_chars == 300


def test_tag_file_errors(tmp_path: Path) -> None:
    with pytest.raises(TagFileError, match="does not exist"):
        load_tags(tmp_path / "none.csv")
    dup = tmp_path / "dup.csv"
    dup.write_text("tag,description\na,x\na,y\n")
    with pytest.raises(TagFileError, match="duplicate"):
        load_tags(dup)


@pytest.mark.parametrize(
    ("content", "error"),
    [
        # Two tags a reviewer cannot tell apart, and training data split between them.
        ("tag,description\nmlops,x\nMLOps,y\n", "duplicate tags \\('mlops' and 'MLOps'\\)"),
        # Not one tag whose description swallows every row after it.
        ('tag,description\nmlops,"unterminated\nother,x\n', "the row from line 2: unexpected"),
        ('"tag,description\nmlops,x\n', "cannot be read: the row from line 1: unexpected"),
        # A description over two lines is one row; the next row's line is still its own.
        ('tag,description\nmlops,"two\nlines"\n,x\n', "line 4: every row needs a non-empty"),
        # Not a description cut at its first comma.
        ("tag,description\nmlops,x\nother,a, b\n", "line 3: more fields than the header's"),
        ("tag,description\n", "no tags"),
        ("description\nx\n", "line 1: the header has no 'tag' column"),
        ("tag,description\nmlops,x\n ,y\n", "line 3: every row needs a non-empty 'tag' column"),
        # Blank lines are skipped, and not miscounted (found by a QA pass).
        ("tag,description\nmlops,ops\n\n\nbad,a,b\n", "line 5: more fields than"),
        ('tag,description\nmlops,ops\n\n\nbad,"unterminated\n', "the row from line 5: "),
        ("\n\ntag,description\nmlops,ops\nbad,a,b\n", "line 5: more fields than"),
        # A criterion (per_class.TAG.precision>=0.95) could not name it.
        ("tag,description\nmlops,x\na>=b,y\n", "line 3: tag 'a>=b' holds = >, which metric"),
    ],
)
def test_malformed_tag_files_are_refused(tmp_path: Path, content: str, error: str) -> None:
    path = tmp_path / "tags.csv"
    path.write_text(content)
    with pytest.raises(TagFileError, match=error):
        load_tags(path)


def test_a_tag_file_that_cannot_be_read_is_a_tag_file_error(tmp_path: Path) -> None:
    """A directory or a file that is not UTF-8: the same one-line error, not an OSError."""
    with pytest.raises(TagFileError, match="cannot be read"):
        load_tags(tmp_path)
    latin = tmp_path / "latin.csv"
    latin.write_bytes("tag,description\nnaïve,x\n".encode("latin-1"))
    with pytest.raises(TagFileError, match="cannot be read"):
        load_tags(latin)


def test_a_tag_file_saved_with_a_byte_order_mark_reads_the_same(tmp_path: Path) -> None:
    """Spreadsheet programs write one; it must not hide the 'tag' column."""
    path = tmp_path / "tags.csv"
    path.write_bytes("tag,description\nmlops,x\nother,y\n".encode("utf-8-sig"))
    assert load_tags(path).names == ["mlops", "other"]


def test_a_tag_file_headed_in_capitals_reads_the_same(tmp_path: Path) -> None:
    """A spreadsheet's headings ("Tag,Description") name the columns, as a training file's
    headings do in any case (8a70adc): the tag file was refused, "the header has no 'tag'
    column", and the API and the worker did not start."""
    path = tmp_path / "tags.csv"
    path.write_text("Tag, DESCRIPTION\nmlops,ops\nother,the rest\n")
    tags = load_tags(path)
    assert tags.names == ["mlops", "other"]
    assert [t.description for t in tags.tags] == ["ops", "the rest"]


def test_a_tag_file_with_blank_lines_crlf_and_quoted_commas_reads_as_meant(
    tmp_path: Path,
) -> None:
    path = tmp_path / "tags.csv"
    path.write_bytes(
        b'\r\ntag,description\r\nmlops,"ops, pipelines"\r\n\r\nother,"two\r\nlines"\r\nx\r\n'
    )
    tags = load_tags(path)
    assert tags.names == ["mlops", "other", "x"]
    assert [t.description for t in tags.tags] == ["ops, pipelines", "two\r\nlines", ""]


def test_a_refused_configuration_reads_one_line_per_variable() -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(api_keys="admin:k", target_precision=2, max_title_chars="many")  # type: ignore[arg-type]
    assert describe_errors(refused.value).splitlines() == [
        "TAGFLOW_MAX_TITLE_CHARS: Input should be a valid integer, unable to parse string as an "
        "integer",
        "TAGFLOW_TARGET_PRECISION: Input should be less than or equal to 1",
    ]
    with pytest.raises(ValidationError) as unsafe:
        Settings(api_keys="", dev=False)
    assert describe_errors(unsafe.value).startswith("TAGFLOW_API_KEYS is empty: set role:key")


def test_a_bundle_key_is_long_or_unset() -> None:
    with pytest.raises(ValidationError) as short:
        Settings(api_keys="admin:k", bundle_key="hunter2")  # type: ignore[arg-type]
    assert describe_errors(short.value) == (
        "TAGFLOW_BUNDLE_KEY: a bundle key has at least 32 characters"
    )
    assert Settings(api_keys="admin:k").bundle_secret is None
    key = "k" * 32
    assert Settings(api_keys="admin:k", bundle_key=key).bundle_secret == key  # type: ignore[arg-type]


def test_every_setting_has_a_row_in_the_readme_configuration_table() -> None:
    """A setting added without a line in the README is a setting nobody can find."""
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    # The first cell of each table row names one variable or several (`A` / `B`).
    first_cells = re.findall(r"^\| ([^|]*TAGFLOW_[^|]*) \|", readme, flags=re.MULTILINE)
    rows = {v for cell in first_cells for v in re.findall(r"`(TAGFLOW_[A-Z0-9_]+)`", cell)}
    variables = {f"TAGFLOW_{name.upper()}" for name in Settings.model_fields}
    assert len(variables) > 40 and variables - rows == set()


def test_a_base_dataset_whose_name_is_not_utf8_is_refused() -> None:
    """A retraining recorded TAGFLOW_BASE_DATASET as its candidate's `params.source`: with a
    byte that is not UTF-8 in its name (a lone surrogate to Python), every GET /models then
    answered 500. Refused as a setting now, naming it."""
    with pytest.raises(ValidationError, match="(?s)base_dataset.*its name is not UTF-8 text"):
        Settings(_env_file=None, dev=True, base_dataset=Path("caf\udce9.csv"))  # type: ignore[call-arg]
    fine = Settings(_env_file=None, dev=True, base_dataset=Path("café.csv"))  # type: ignore[call-arg]
    assert fine.base_dataset == Path("café.csv")


def test_a_key_holder_whose_name_is_not_utf8_is_refused() -> None:
    """A name with a byte that is not UTF-8 in TAGFLOW_API_KEYS (a lone surrogate to Python)
    was taken: each promotion by that key failed in the database, a 500, and so did GET
    /whoami. A malformed entry now, refused at start."""
    with pytest.raises(ValueError, match="the name in entry 2 .* is not UTF-8 text"):
        parse_api_keys("admin:adminkey-aaaaaaaaaaaaaaaaaaa,admin/caf\udce9:adminkey-bbbbbbbbbbbb")
    assert parse_api_keys("admin/café:adminkey-bbbbbbbbbbbb")["adminkey-bbbbbbbbbbbb"].name == (
        "café"
    )


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("foo://x", "is not a Redis URL (Redis URL must specify one of the following schemes"),
        ("redis://127.0.0.1:abc/7", "is not a Redis URL (Port could not be cast"),
        ("redis://127.0.0.1:6379/seven", "names the database 'seven': a Redis database is a"),
    ],
)
def test_a_redis_url_that_redis_cannot_read_is_refused_at_start(url: str, error: str) -> None:
    """redis-py reads the URL only when a process connects: a wrong scheme was a traceback at
    the API's start-up (exit 3) and the worker's, and a database that is not a number was
    database 0, silently."""
    with pytest.raises(ValidationError) as refused:
        Settings(_env_file=None, dev=True, redis_url=url)  # type: ignore[call-arg]
    assert describe_errors(refused.value).startswith(f"TAGFLOW_REDIS_URL: {error}")
    for fine in ("redis://:pw@127.0.0.1:6379/7", "rediss://h", "unix:///tmp/redis.sock?db=2"):
        assert Settings(_env_file=None, dev=True, redis_url=fine).redis_url == fine  # type: ignore[call-arg]


def test_a_bad_redis_url_stops_serve_and_worker_in_one_line(cli_env: dict[str, str]) -> None:
    for command in (["serve", "--port", "0"], ["worker"]):
        result = CliRunner().invoke(app, command, env=cli_env | {"TAGFLOW_REDIS_URL": "foo://x"})
        assert result.exit_code == 2, result.output
        assert result.output.startswith("configuration error: TAGFLOW_REDIS_URL: is not a Redis")


@pytest.mark.parametrize(
    "name", ["watch_interval_s", "microbatch_wait_ms", "log_flush_interval_s", "target_precision"]
)
@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_a_number_that_is_not_finite_is_refused_at_start(name: str, value: str) -> None:
    """TAGFLOW_WATCH_INTERVAL_S=inf was taken: the API then never looked for a new production
    model, relayed the outbox or queued a prune again; TAGFLOW_MICROBATCH_WAIT_MS=inf held a
    request until another came; TAGFLOW_LOG_FLUSH_INTERVAL_S=inf wrote nothing before the
    stop."""
    with pytest.raises(ValidationError) as refused:
        Settings(_env_file=None, dev=True, **{name: value})  # type: ignore[call-arg]
    assert (
        describe_errors(refused.value) == f"TAGFLOW_{name.upper()}: Input should be a finite number"
    )
    assert getattr(Settings(_env_file=None, dev=True, **{name: "0.5"}), name) == 0.5  # type: ignore[call-arg]


@pytest.mark.parametrize(
    "url", ["postgresql+psycopg://", "postgresql+psycopg://tagflow:pw@db:5432/", "postgresql://h"]
)
def test_a_postgresql_url_naming_no_database_is_refused(url: str) -> None:
    """libpq then picks the database named after the user: `postgresql+psycopg://` (an empty
    variable in a template, say) made tagflow's tables in a database called "root", and
    `tagflow models list` answered "no version yet" there, exit 0."""
    with pytest.raises(ValidationError) as refused:
        Settings(_env_file=None, dev=True, database_url=url)  # type: ignore[call-arg]
    assert describe_errors(refused.value).startswith("TAGFLOW_DATABASE_URL: names no database")
    named = "postgresql+psycopg://tagflow:pw@db:5432/tagflow"
    assert Settings(_env_file=None, dev=True, database_url=named).database_url == named  # type: ignore[call-arg]
