"""The approved tag list: the only tags tagflow ever returns or accepts as labels."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.errors import TagflowError


class TagFileError(TagflowError, ValueError):
    """The tag file is missing, unreadable, empty or malformed."""


@dataclass(frozen=True)
class Tag:
    """An approved tag and the one-line description reviewers see."""

    name: str
    description: str


@dataclass(frozen=True)
class TagSet:
    """The ordered approved tags; order defines keyboard shortcuts on the review page."""

    tags: tuple[Tag, ...]

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tags]

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def __len__(self) -> int:
        return len(self.tags)

    def unapproved(self, names: Iterable[str]) -> list[str]:
        """The names among `names` that are not approved tags, sorted: what a model that could
        answer with them is refused for."""
        return sorted(set(names) - set(self.names))


def load_tags(path: Path) -> TagSet:
    """Read a `tag,description` CSV (a byte-order mark is allowed). A missing or unreadable
    file, a malformed row, or tags that differ only in case are explicit errors; errors in a
    row name its line."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            tags = _read_rows(path, csv.DictReader(fh, strict=True))
    except FileNotFoundError:
        raise TagFileError(f"tag file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TagFileError(f"tag file {path} cannot be read: {exc}") from None
    if not tags:
        raise TagFileError(f"{path}: no tags")
    _check_distinct(path, [t.name for t in tags])
    return TagSet(tags=tuple(tags))


def _read_rows(path: Path, reader: csv.DictReader[str]) -> list[Tag]:
    rows: list[tuple[int, dict[str | None, Any]]] = []
    start = 1  # the line a row starts on: a quoted description can span lines
    try:
        if reader.fieldnames is not None:  # reads the header
            start = reader.line_num + 1
        for row in reader:
            rows.append((start, row))
            start = reader.line_num + 1
    except csv.Error as exc:
        # strict: an unterminated quote is an error, not one tag swallowing the rest.
        raise TagFileError(
            f"tag file {path} cannot be read: the row from line {start}: {exc}"
        ) from None
    return [_tag(row, where=f"{path}, line {line}") for line, row in rows]


def _tag(row: dict[str | None, Any], *, where: str) -> Tag:
    if None in row:  # DictReader's key for fields beyond the header's
        raise TagFileError(
            f"{where}: more fields than the header's; quote a description that holds commas"
        )
    name = (row.get("tag") or "").strip()
    if not name:
        raise TagFileError(f"{where}: every row needs a non-empty 'tag' column")
    return Tag(name=name, description=(row.get("description") or "").strip())


def _check_distinct(path: Path, names: list[str]) -> None:
    """Refuse duplicates, also ones that differ only in case: `MLOps` beside `mlops` would be
    two approved tags a reviewer cannot tell apart, and training data would split between them."""
    seen: dict[str, str] = {}
    for name in names:
        other = seen.get(name.casefold())
        if other is not None:
            raise TagFileError(f"{path}: duplicate tags ({other!r} and {name!r})")
        seen[name.casefold()] = name
