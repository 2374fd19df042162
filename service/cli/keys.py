"""`tagflow keys`: issue API keys for the key file, stored by their hash."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from service.api_keys import HASHED, fingerprint, new_key
from service.cli.common import (
    CommandGroup,
    console,
    print_error,
    settings_or_exit,
)
from service.config import MAX_NAME_CHARS, Role

keys_app = typer.Typer(
    help="API keys for TAGFLOW_API_KEYS_FILE.", no_args_is_help=True, cls=CommandGroup
)


@keys_app.command("new")
def keys_new(
    role: Annotated[Role, typer.Argument(help="client, reviewer, admin or metrics")],
    name: Annotated[
        str | None, typer.Option(help="whose key it is (a reviewer's name: a personal key)")
    ] = None,
) -> None:
    """A new random key, and the line that accepts it: add the line to the key file (only the
    key's SHA-256 is in it), and give the key to its holder; it is not shown again."""
    if name is not None and not (name := name.strip()):
        print_error("error:", "--name is empty")
        raise typer.Exit(2)
    if name and (len(name) > MAX_NAME_CHARS or any(c in name for c in ",:/#\n")):
        print_error("error:", f"a name has up to {MAX_NAME_CHARS} characters, none of , : / #")
        raise typer.Exit(2)
    key, line = new_key(role, name)
    console.print(f"key  (give it to its holder): {key}", highlight=False, soft_wrap=True)
    console.print(f"line (add it to the key file): {line}", highlight=False, soft_wrap=True)


@keys_app.command("list")
def keys_list() -> None:
    """The keys the service would accept now (TAGFLOW_API_KEYS, and the key file as it reads
    now), each by its fingerprint: the `key` label of
    tagflow_api_key_last_used_timestamp_seconds. No key is shown. A key file the service would
    refuse is an error here too (exit 2, with the reason), so run this after an edit."""
    settings = settings_or_exit()
    sources = [("TAGFLOW_API_KEYS", settings.keys)]
    if settings.api_keys_file is not None:
        sources.append((str(settings.api_keys_file), settings.file_keys))
    table = Table("fingerprint", "role", "name", "kept as", "from")
    for source, keys in sources:
        for key, caller in keys.items():
            kept = "sha256" if HASHED.fullmatch(key) else "key"
            table.add_row(fingerprint(key), caller.role.value, caller.name or "", kept, source)
    if not table.row_count:
        console.print(
            "no API keys configured (`tagflow up` then runs in development mode with keys it "
            "generates at each start and prints; they are not stored anywhere)"
        )
        return
    console.print(table)
