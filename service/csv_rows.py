"""Reading the CSV files people write by hand (the tag list, training data): strictly, with
the line each row starts on, so an error can say where to look."""

from __future__ import annotations

import csv
from typing import TextIO


class MalformedCsvError(ValueError):
    """A row the CSV parser refuses (an unterminated quote, junk after a closing quote)."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"the row from line {line}: {reason}")
        self.line = line
        self.reason = reason


def read_rows(fh: TextIO) -> list[tuple[int, list[str]]]:
    """The non-blank rows of `fh`, each with the line it starts on (a quoted field can span
    lines, and blank lines are skipped, so the two differ). Strict: an unterminated quote is
    MalformedCsvError, not one field swallowing the rest of the file."""
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
