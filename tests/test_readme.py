"""The README's "Using it" examples, sent to the real app: each curl line names a route the app
has, with a key whose role that route lets through (a wrong key is a 401 or 403 whatever else
the example gets right), held in a variable the block says how to set."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from starlette.routing import Match

from service.api.limits import max_body_bytes
from service.api_keys import new_key
from service.cli import app as cli_app
from service.config import SUPPORTED_DATABASES, Role, Settings
from service.crud.audit import summarize
from tests.conftest import KEYS, ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")
# The key each variable of the examples holds, by its role.
ROLE_OF_VARIABLE = {
    "KEY": "client",
    "REVIEWER_KEY": "reviewer",
    "ADMIN_KEY": "admin",
    "OTHER_ADMIN_KEY": "admin",
    "METRICS_KEY": "metrics",
}


@dataclass(frozen=True)
class Example:
    """One curl command of the README: what it sends, and with which key variable."""

    command: str
    method: str
    path: str
    key_variable: str | None


def using_it_block() -> str:
    """The shell block of the "Using it" section."""
    section = README.split("\n## Using it\n", 1)[1]
    return section.split("```bash\n", 1)[1].split("\n```", 1)[0]


def curl_examples(block: str) -> list[Example]:
    """Every curl command in `block`, its continuation lines joined."""
    lines = block.replace("\\\n", " ").splitlines()
    examples = []
    for command in (line for line in lines if line.startswith("curl ")):
        method = re.search(r"-X (\w+)", command)
        sends = re.search(r" (-d|--data-binary) ", command)
        url = re.search(r"localhost:8000(/[^\"'\s?]*)", command)
        key = re.search(r"Bearer \$(\w+)", command)
        assert url, command
        examples.append(
            Example(
                command=command,
                method=method.group(1) if method else "POST" if sends else "GET",
                path=url.group(1),
                key_variable=key.group(1) if key else None,
            )
        )
    return examples


def has_route(client: TestClient, method: str, path: str) -> bool:
    """Whether the app has an operation for `method` on `path`."""
    scope = {"type": "http", "method": method, "path": path}
    return any(route.matches(scope)[0] is Match.FULL for route in client.app.routes)  # type: ignore[attr-defined]


def test_every_example_sends_a_key_its_route_accepts(sqlite_client: TestClient) -> None:
    examples = curl_examples(using_it_block())
    assert len(examples) > 20
    for example in examples:
        assert has_route(sqlite_client, example.method, example.path), example.command
        headers = {}
        if example.key_variable is not None:
            headers["Authorization"] = f"Bearer {KEYS[ROLE_OF_VARIABLE[example.key_variable]]}"
        response = sqlite_client.request(example.method, example.path, headers=headers)
        assert response.status_code not in (401, 403), (example.command, response.text)


def test_the_review_examples_name_the_reviewer_the_printed_keys_need(
    sqlite_client: TestClient,
) -> None:
    """The keys `make run` prints are shared by their role, so a review call must name its
    reviewer. The claim and label examples sent none, and a reader copying them got a 422."""
    sent = [e for e in curl_examples(using_it_block()) if e.path.startswith("/review/")]
    sent = [e for e in sent if e.method == "POST"]
    assert sent
    for example in sent:
        body = re.search(r" -d '([^']*)'", example.command)
        response = sqlite_client.post(
            example.path,
            headers={
                "Authorization": f"Bearer {KEYS['reviewer']}",
                "content-type": "application/json",
            },
            content=body.group(1) if body else None,
        )
        assert "name the reviewer" not in response.text, (example.command, response.text)


def test_every_key_variable_is_set_before_its_first_use() -> None:
    """A reader copying the block sets each key first: `VAR=role-...` (the form `make run`
    prints), before the first example that sends it."""
    block = using_it_block()
    for variable, role in ROLE_OF_VARIABLE.items():
        used = block.find(f'Bearer ${variable}"')
        if used < 0:
            continue
        assigned = re.search(rf"(?<![A-Z_]){variable}={role}-\.\.\.", block)
        assert assigned and assigned.start() < used, f"{variable} is used before it is set"


def roles_the_readme_lets_send_feedback() -> set[str]:
    """The roles the configuration table's TAGFLOW_API_KEYS row says may send feedback."""
    row = re.search(r"^\| `TAGFLOW_API_KEYS` \|.*$", README, flags=re.M)
    assert row, "no TAGFLOW_API_KEYS row"
    said = re.search(r"; ([^;]*?) may send feedback", row.group(0))
    assert said, row.group(0)
    if said.group(1) == "any role's key":
        return set(KEYS)
    return {role for role in KEYS if re.search(rf"`?{role}`?", said.group(1).split("(")[0])}


def test_the_roles_said_to_send_feedback_are_those_it_accepts(sqlite_client: TestClient) -> None:
    accepted = {
        role
        for role, key in KEYS.items()
        if sqlite_client.post("/feedback", headers={"Authorization": f"Bearer {key}"}).status_code
        != 403
    }
    assert accepted == {"client", "reviewer", "admin"}
    assert roles_the_readme_lets_send_feedback() == accepted


def cli_commands() -> dict[str, list[str]]:
    """Every `tagflow` command (`tagflow models list`, ...) with the options its --help shows."""
    found: dict[str, list[str]] = {}

    def walk(command: Any, path: list[str]) -> None:
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                walk(sub, [*path, name])
            return
        options = [
            name
            for param in command.params
            if param.param_type_name == "option"
            for name in param.opts
            if name != "--help"
        ]
        found[" ".join(["tagflow", *path])] = options

    walk(typer.main.get_command(cli_app), [])
    return found


def test_the_command_table_shows_every_command_and_option() -> None:
    """Each command has a row in "Command line" whose first cell names it with its options, as
    `--help` lists them."""
    cells = re.findall(r"^\| (`tagflow [^|]*) \|", README, flags=re.M)
    commands = cli_commands()
    assert len(commands) > 20
    for command, options in commands.items():
        rows = [cell for cell in cells if re.search(rf"`{re.escape(command)}[ `]", cell)]
        assert rows, f"{command} has no row"
        missing = [o for o in options if not any(re.search(rf"{o}\b", cell) for cell in rows)]
        assert not missing, f"{command}: {missing} not in the table"


def test_the_migration_example_names_the_file_a_revision_writes() -> None:
    """`python -m service.migrations revision` numbers a revision after the newest one."""
    named = re.search(r"# writes versions/(\w+?)_add_x_to_label\.py", README)
    assert named, "the migration example names no file"
    versions = ROOT / "service" / "migrations" / "versions"
    head = max(int(path.name[:4]) for path in versions.glob("[0-9][0-9][0-9][0-9]_*.py"))
    assert named.group(1) in ("NNNN", f"{head + 1:04d}"), named.group(0)


def mentioned(path: str, text: str) -> bool:
    """Whether `text` names `path` (a route template), as itself or with example values."""
    pattern = re.sub(r"\\\{[^}]*\\\}", r"[^/\\s\"'?`]+", re.escape(path))
    return (
        re.search(rf"(?<![\w/]){pattern}(?![\w/])|localhost:8000{pattern}(?![\w/])", text)
        is not None
    )


def test_every_operation_is_in_the_readme(sqlite_client: TestClient) -> None:
    """An endpoint the README never names is one a reader cannot find. Sibling actions may be
    listed after one named in full ("POST /review/536/skip, /release and /reopen")."""
    text = re.sub(r"\n#\s*", " ", README)  # a comment's continuation lines read as one
    paths = list(sqlite_client.get("/openapi.json").json()["paths"])
    assert len(paths) > 25
    missing = []
    for path in paths:
        parent, _, last = path.rpartition("/")
        siblings = [p for p in paths if p.rpartition("/")[0] == parent and p != path]
        listed = re.search(rf"(, | and )/{re.escape(last)}(?![\w/])", text) is not None
        as_sibling = listed and any(mentioned(p, text) for p in siblings)
        if not (mentioned(path, text) or (parent and as_sibling)):
            missing.append(path)
    assert missing == []


def metrics_section() -> str:
    """The "Metrics" section, alerts included."""
    return README.split("\n### Metrics\n", 1)[1].split("\n## ", 1)[0]


def metrics_named(text: str) -> tuple[set[str], dict[str, set[str]]]:
    """The metric names `text` gives in full, and each name it shortens after a full one
    (`tagflow_prediction_log_buffered`, `…_written_total`) with what it may stand for."""
    full = set(re.findall(r"tagflow_\w+", text))
    prefixes = {name[: m.start()] for name in full for m in re.finditer("_", name)}
    short = {suffix: {p + suffix for p in prefixes} for suffix in re.findall(r"…(_\w+)", text)}
    return full, short


# Served once there is something to measure: labelled audit items, overlap pairs.
SERVED_WHEN_MEASURED = {
    "tagflow_audit_precision",
    "tagflow_audit_meets_target",
    "tagflow_review_kappa",
}


def test_the_metrics_section_names_every_metric_served(sqlite_client: TestClient) -> None:
    """A metric the README does not name is one an operator does not know to graph or alert on;
    a name it gives that the API does not serve is a panel that stays empty."""
    item = {"title": "YOLOv8 object detection", "description": "Real-time detection."}
    headers = {"Authorization": f"Bearer {KEYS['client']}"}
    assert sqlite_client.post("/predict", json=item, headers=headers).status_code == 200
    response = sqlite_client.get("/metrics", headers={"Authorization": f"Bearer {KEYS['metrics']}"})
    assert response.status_code == 200, response.text
    families = list(text_string_to_metric_families(response.text))
    # prometheus-client adds a `_created` series (a start time) to each counter and histogram.
    served = {f.name for f in families if f.name.startswith("tagflow_")} - {
        f"{f.name}_created" for f in families
    }
    samples = {s.name for f in families for s in f.samples} | SERVED_WHEN_MEASURED
    full, short = metrics_named(metrics_section())
    assert len(served) > 30 and short
    named = full.union(*short.values())
    assert {name for name in served if not {name, f"{name}_total"} & named} == set()
    assert full - served - samples == set()
    assert [suffix for suffix, names in short.items() if not names & samples] == []


def configuration_rows() -> dict[str, str]:
    """The "Configuration" table: each variable's setting name and the default its row shows
    (a row naming two variables, `A` / `B`, shows two defaults the same way)."""
    rows: dict[str, str] = {}
    for names, default in re.findall(r"^\| (`TAGFLOW_[^|]*?) \| ([^|]*?) \|", README, flags=re.M):
        variables = re.findall(r"`TAGFLOW_(\w+)`", names)
        defaults = default.split(" / ") if len(variables) > 1 else [default]
        assert len(defaults) == len(variables), names
        rows.update((v.lower(), d.strip()) for v, d in zip(variables, defaults, strict=True))
    return rows


def option_defaults(command: Any = None) -> dict[str, object]:
    """The command line's options that a TAGFLOW_ variable sets too (`--port`, TAGFLOW_PORT),
    by the variable's name as configuration_rows writes it, with their defaults: not settings,
    but set the same way, so the table has them."""
    command = command or typer.main.get_command(cli_app)
    found: dict[str, object] = {}
    for sub in getattr(command, "commands", {}).values():
        found |= option_defaults(sub)
    for param in command.params:
        if isinstance(param.envvar, str):
            found[param.envvar.removeprefix("TAGFLOW_").lower()] = param.default
    return found


def shown(value: object) -> str:
    """A default as the table writes it: `true`, `onnx-int8`, `300`, `./var`."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, Path):
        return value.relative_to(ROOT).as_posix() if value.is_absolute() else f"./{value}"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def test_the_configuration_table_has_every_setting_with_its_default() -> None:
    """Every setting of `Settings` has a row and every row names a setting, and a row that shows
    its default as a value (`300`, not "unset") shows the one the code has."""
    rows = configuration_rows()
    defaults = {name: field.default for name, field in Settings.model_fields.items()}
    options = option_defaults()
    assert set(options) == {"host", "port"}
    assert set(rows) == set(defaults) | set(options)
    defaults |= options
    literal = {name: cell for name, cell in rows.items() if re.fullmatch(r"`[^`<]*`", cell)}
    assert len(literal) > 30
    for name, cell in literal.items():
        assert cell.strip("`") in (shown(defaults[name]), str(defaults[name])), name
    body_bound = re.search(r"([\d,]+) bytes", rows["max_body_bytes"])
    assert body_bound, rows["max_body_bytes"]
    assert int(body_bound.group(1).replace(",", "")) == max_body_bytes(Settings.model_construct())


# Variables the README names that are not settings: compose's (a secret, and the passwords it
# gives Redis and PostgreSQL and puts in the URLs) and the test suite's.
NOT_SETTINGS = {
    "TAGFLOW_METRICS_KEY",
    "TAGFLOW_REDIS_PASSWORD",
    "TAGFLOW_POSTGRES_PASSWORD",
    "TAGFLOW_TEST_POSTGRES_URL",
    "TAGFLOW_TEST_REDIS_DB",
}


def test_every_variable_the_readme_names_is_read() -> None:
    """A variable renamed or dropped in the code, still named in a paragraph, would be set by a
    reader and silently ignored (Settings ignores unknown TAGFLOW_ variables)."""
    named = set(re.findall(r"\bTAGFLOW_[A-Z0-9_]*[A-Z0-9]", README))
    settings = {f"TAGFLOW_{name.upper()}" for name in [*Settings.model_fields, *option_defaults()]}
    assert named - settings - NOT_SETTINGS == set()
    assert named >= NOT_SETTINGS


def test_the_audit_example_adds_up_and_moves_the_cut_it_shows() -> None:
    """The audit example's figures are what GET /models/{version}/audit computes from its
    counts, and the recalibration after it, a raise, is what those counts give at the default
    TAGFLOW_RECALIBRATE_MIN_AUDITED: with 40 audited (100 needed) it was "wait"."""
    audit = re.search(
        r'"audited":(\d+),"agreed":(\d+),"precision":([\d.]+),"precision_lower_95":([\d.]+),'
        r'\s*#\s*"target":([\d.]+),"threshold":[\d.]+,"meets_target":(\w+)\}',
        README,
    )
    assert audit, "the audit example"
    audited, agreed = int(audit.group(1)), int(audit.group(2))
    stats = summarize(
        [(1.0, i < agreed) for i in range(audited)],
        version="v0001",
        target=float(audit.group(5)),
        threshold=None,
    )
    assert float(audit.group(3)) == stats.precision
    assert float(audit.group(4)) == round(stats.precision_lower_95 or 0.0, 3)
    assert audit.group(6) == str(stats.meets_target).lower() == "false"
    assert '"action":"raise","current"' in README
    assert audited >= Settings.model_fields["recalibrate_min_audited"].default


def test_the_database_urls_the_table_names_are_those_taken() -> None:
    """The TAGFLOW_DATABASE_URL row says which URLs are taken and that anything else is refused:
    a scheme the settings take and the row does not name (`postgresql://`, the form most
    PostgreSQL documentation gives) read as one to rewrite, and one it names must be taken."""
    row = re.search(r"^\| `TAGFLOW_DATABASE_URL` \|[^|]*\|([^|]*)\|", README, flags=re.M)
    assert row, "no TAGFLOW_DATABASE_URL row"
    named = set(re.findall(r"`([a-z+]+)://", row.group(1).split("anything else")[0]))
    assert named == SUPPORTED_DATABASES
    for scheme in named:
        where = "/var/tagflow.db" if scheme.startswith("sqlite") else "u@h:5432/db"
        Settings(dev=True, database_url=f"{scheme}://{where}")  # taken, not refused


def test_the_strength_said_of_a_new_key_is_its_own() -> None:
    """The "Keep hashes, not keys" advice rests one SHA-256 on how random a `tagflow keys new`
    key is: the bits it states are those of the key's random part (URL-safe base64, 6 bits a
    character). It said 144 bits of keys that hold 192."""
    said = re.search(r"random keys\s+like these \((\d+) bits\)", README)
    assert said, "the API keys section states no key strength"
    key, _ = new_key(Role.REVIEWER, "ann")
    random_part = key.removeprefix(f"{Role.REVIEWER.value}-")
    assert re.fullmatch(r"[\w-]+", random_part), key
    assert int(said.group(1)) == 6 * len(random_part)
