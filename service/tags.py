"""The approved tag list: the only tags tagflow ever returns or accepts as labels."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from service.csv_rows import MalformedCsvError, column_name, read_rows
from service.errors import TagflowError

# The signs metric criteria compare with (`per_class.mlops.precision>=0.95`, ml.registry): no
# tag may hold one, or a criterion could not name it.
CRITERION_OPERATORS = "<>="


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


_COLUMNS = ("tag", "description")


def load_tags(path: Path) -> TagSet:
    """Read a `tag,description` CSV (a byte-order mark and blank lines are allowed). A missing
    or unreadable file, a malformed row, or tags that differ only in case are explicit errors;
    errors in a row name the line it starts on."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            rows = read_rows(fh)
    except MalformedCsvError as exc:
        raise TagFileError(f"tag file {path} cannot be read: {exc}") from None
    except FileNotFoundError:
        raise TagFileError(f"tag file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TagFileError(f"tag file {path} cannot be read: {exc}") from None
    if not rows:
        raise TagFileError(f"{path}: no tags")
    header, *body = rows
    columns = [column_name(name, known=_COLUMNS) for name in header[1]]
    if "tag" not in columns:
        raise TagFileError(f"{path}, line {header[0]}: the header has no 'tag' column")
    tags = [
        _tag(dict(zip(columns, row, strict=False)), row, columns, f"{path}, line {line}")
        for line, row in body
    ]
    if not tags:
        raise TagFileError(f"{path}: no tags")
    _check_distinct(path, [t.name for t in tags])
    return TagSet(tags=tuple(tags))


def _tag(fields: dict[str, str], row: list[str], columns: list[str], where: str) -> Tag:
    if len(row) > len(columns):
        raise TagFileError(
            f"{where}: more fields than the header's; quote a description that holds commas"
        )
    name = fields.get("tag", "").strip()
    if not name:
        raise TagFileError(f"{where}: every row needs a non-empty 'tag' column")
    if found := sorted(set(name) & set(CRITERION_OPERATORS)):
        # A version is found by criteria such as `per_class.TAG.precision>=0.95`, whose
        # operators these are: a tag holding one could not be named in a criterion.
        raise TagFileError(
            f"{where}: tag {name!r} holds {' '.join(found)}, which metric criteria use as "
            "operators (per_class.TAG.precision>=0.95): rename it"
        )
    return Tag(name=name, description=fields.get("description", "").strip())


def _check_distinct(path: Path, names: list[str]) -> None:
    """Refuse duplicates, also ones that differ only in case: `MLOps` beside `mlops` would be
    two approved tags a reviewer cannot tell apart, and training data would split between them."""
    seen: dict[str, str] = {}
    for name in names:
        other = seen.get(name.casefold())
        if other is not None:
            raise TagFileError(f"{path}: duplicate tags ({other!r} and {name!r})")
        seen[name.casefold()] = name
