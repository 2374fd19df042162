"""Reading the CSV files people write by hand (the tag list, training data): strictly, with
the line each row starts on, so an error can say where to look. And the cells of the CSV the
service writes (the label export), kept from running as formulas when a spreadsheet opens it."""

from __future__ import annotations

import csv
from collections.abc import Collection
from typing import TextIO

# What makes a spreadsheet read a cell as a formula: = + - @, and a tab or carriage return,
# which some skip before one. The titles and comments in an export come from end users.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
TEXT_MARK = "'"  # a leading apostrophe: spreadsheets show the rest as text, never run it


def escape_cell(value: str) -> str:
    """`value` as a cell a spreadsheet shows and does not run: one that would start a formula
    gets a leading apostrophe, as does one already starting with an apostrophe, so that
    `unescape_cell` gives every value back as it was."""
    return TEXT_MARK + value if value.startswith((*FORMULA_START, TEXT_MARK)) else value


def unescape_cell(value: str) -> str:
    """A cell as `escape_cell` was given it."""
    if value.startswith(TEXT_MARK) and value[1:].startswith((*FORMULA_START, TEXT_MARK)):
        return value[1:]
    return value


def column_name(name: str, *, known: Collection[str]) -> str:
    """A header's column name as rows key it: stripped, and one of the `known` columns in lower
    case, as a spreadsheet's heading "Title" or "TAG" names it (under a header that showed them,
    the training file was "missing required column(s)", the tag file "has no 'tag' column").
    Other columns keep their names."""
    name = name.strip()
    return name.lower() if name.lower() in known else name


# As large as any platform's C long takes: a file read here is never near it.
FIELD_LIMIT = 2**31 - 1


class MalformedCsvError(ValueError):
    """A row the CSV parser refuses (an unterminated quote, junk after a closing quote)."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"the row from line {line}: {reason}")
        self.line = line
        self.reason = reason


def read_rows(fh: TextIO) -> list[tuple[int, list[str]]]:
    """The non-blank rows of `fh`, each with the line it starts on (a quoted field can span
    lines, and blank lines are skipped, so the two differ). Strict: an unterminated quote is
    MalformedCsvError, not one field swallowing the rest of the file (which strictness catches
    at the end of the file, so no bound on a field's size is needed for it)."""
    # A field over csv's default bound, 131,072 characters (a long description), was refused
    # as "malformed CSV ... field larger than field limit", though JSON Lines took it. A training
    # file is in memory whole already, a tag file a few lines; the bound is the module's.
    csv.field_size_limit(FIELD_LIMIT)
    reader = csv.reader(fh, strict=True)
    rows: list[tuple[int, list[str]]] = []
    start = 1
    try:
        for row in reader:
            if row:
                rows.append((start, row))
            start = reader.line_num + 1
    except csv.Error as exc:
        raise MalformedCsvError(start, str(exc)) from None
    return rows
