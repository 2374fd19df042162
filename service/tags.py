"""The approved tag list: the only tags tagflow ever returns or accepts as labels."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


class TagFileError(ValueError):
    """The tag file is missing, empty or malformed."""


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
    """Read a `tag,description` CSV. A missing file or duplicate tag is an explicit error."""
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except FileNotFoundError:
        raise TagFileError(f"tag file {path} does not exist") from None
    tags: list[Tag] = []
    for row in rows:
        name = (row.get("tag") or "").strip()
        if not name:
            raise TagFileError(f"{path}: every row needs a non-empty 'tag' column")
        tags.append(Tag(name=name, description=(row.get("description") or "").strip()))
    names = [t.name for t in tags]
    if not tags:
        raise TagFileError(f"{path}: no tags")
    if len(set(names)) != len(names):
        raise TagFileError(f"{path}: duplicate tags")
    return TagSet(tags=tuple(tags))
