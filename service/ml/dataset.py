"""Training data: reading CSV / JSON Lines files and validating them before any training."""

from __future__ import annotations

import hashlib
import io
import json
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from service.csv_rows import MalformedCsvError, column_name, read_rows, unescape_cell
from service.entities.common import has_visible, storable
from service.tags import TagSet

REQUIRED_COLUMNS = ("title", "description", "tag")


class DatasetError(ValueError):
    """A training file that cannot be used; the message is meant for a person."""


@dataclass(frozen=True)
class Example:
    """One labelled item."""

    title: str
    description: str
    tag: str

    @property
    def text(self) -> str:
        return item_text(self.title, self.description)

    @property
    def text_hash(self) -> str:
        return text_hash(self.title, self.description)


@dataclass
class ValidationReport:
    """What validation found; `ok` is False when training must not go ahead."""

    source: str
    rows_read: int = 0
    rows_kept: int = 0
    duplicates_dropped: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    tag_counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, object]:
        return {
            "source": self.source,
            "rows_read": self.rows_read,
            "rows_kept": self.rows_kept,
            "duplicates_dropped": self.duplicates_dropped,
            "tag_counts": self.tag_counts,
            "errors": self.errors,
            "warnings": self.warnings,
        }

    def render(self) -> str:
        lines = [
            f"validation of {self.source}: {self.rows_read} rows read, {self.rows_kept} kept, "
            f"{self.duplicates_dropped} duplicate (title, description) pairs dropped",
            "tags: " + ", ".join(f"{t}={n}" for t, n in sorted(self.tag_counts.items())),
        ]
        lines += [f"error: {e}" for e in self.errors[:20]]
        if len(self.errors) > 20:
            lines.append(f"... and {len(self.errors) - 20} more errors")
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def composed(text: str) -> str:
    """`text` in Unicode's composed form (NFC). An accent typed as one character ("\u00e9") or
    as a letter and a combining mark ("e\u0301", as macOS and some text pipelines send it) is
    the same text by Unicode's definition, and looks the same on the page; without this, the two
    were two contents (two review tasks, a label given to one missing the other, a duplicate
    across the training and evaluation split unseen) and scored differently (the TF-IDF head
    read other words). Canonical only (not NFKC): compatibility characters such as "\ufb01"
    or superscripts are kept as written."""
    return unicodedata.normalize("NFC", text)


def item_text(title: str, description: str) -> str:
    """The single string the models see."""
    title, description = composed(title).strip(), composed(description).strip()
    return f"{title}. {description}" if description else title


def normalise(text: str) -> str:
    return " ".join(composed(text).lower().split())


def text_hash(title: str, description: str) -> str:
    """Content identity: SHA-256 of title and description, insensitive to case, whitespace and
    Unicode's two forms of one text (`composed`)."""
    key = normalise(title) + "\x1f" + normalise(description)
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def examples_hash(examples: list[Example]) -> str:
    """Identity of a whole training set, independent of row order."""
    digest = hashlib.sha256()
    for h in sorted(f"{e.text_hash}:{e.tag}" for e in examples):
        digest.update(h.encode())
    return digest.hexdigest()


# A record of a training file with the line it starts on, which is what an error names.
Row = tuple[int, dict[str, object]]


def _read_rows(path: Path) -> list[Row]:
    """The records of a CSV or JSON Lines file. A file that cannot be read as one (not there,
    not text, not UTF-8, malformed) is a DatasetError naming the line where it can."""
    suffix = path.suffix.lower()
    if path.is_dir():
        raise DatasetError(f"{path}: a directory, not a training file")
    if not path.exists():
        raise DatasetError(f"{path}: no such file")
    if not path.is_file():  # read more than once (validation, then training): a FIFO blocked
        raise DatasetError(f"{path}: not a regular file (a FIFO, a device or a socket)")
    if suffix not in {".csv", ".jsonl", ".ndjson"}:
        raise DatasetError(f"{path}: unsupported file type {suffix!r} (use .csv or .jsonl)")
    try:
        text = _decoded(path.read_bytes())
        if suffix == ".csv":
            return _records(read_rows(io.StringIO(text, newline="")))
        return _json_records(text)
    except MalformedCsvError as exc:
        raise DatasetError(
            f"{path}: malformed CSV in the row from line {exc.line} ({exc.reason})"
        ) from None
    except DatasetError as exc:
        raise DatasetError(f"{path}: {exc}") from None
    except OSError as exc:  # no permission, a read error
        raise DatasetError(f"{path}: cannot read it ({exc.strerror or exc})") from None


def _decoded(data: bytes) -> str:
    """`data` as text; utf-8-sig: a byte-order mark (as spreadsheets save CSV) is not part of
    the first column's name."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        before = data[: exc.start]  # lines as the readers count them: \n, \r\n or \r
        line = before.count(b"\n") + before.count(b"\r") - before.count(b"\r\n") + 1
        raise DatasetError(
            f"not UTF-8 text: line {line} has the byte {data[exc.start]:#04x} "
            "(save the file as UTF-8)"
        ) from None


def _json_records(text: str) -> list[Row]:
    rows: list[Row] = []
    # Universal newlines (\n, \r\n, \r), not str.splitlines: JSON strings may hold U+2028.
    for n, line in enumerate(io.StringIO(text, newline=None), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"line {n} is not valid JSON ({exc.msg})") from None
        except (ValueError, RecursionError) as exc:  # a 5,000-digit number, deep nesting
            reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            raise DatasetError(f"line {n} is not valid JSON ({reason})") from None
        if not isinstance(row, dict):
            raise DatasetError(f"line {n} is not a JSON object")
        rows.append((n, _json_fields(row, line=n)))
    return rows


def _json_fields(row: dict[str, object], *, line: int) -> dict[str, object]:
    """A JSON record with its training fields named as a CSV header's (`_column_name`): in
    any case ({"Title": ...} was "missing field(s): title" on every row). A field named twice
    so is an error naming it."""
    fields: dict[str, object] = {}
    keys: dict[str, str] = {}  # a training field's name -> the key that gave it
    for key, value in row.items():
        name = _column_name(key)
        if name not in REQUIRED_COLUMNS:
            fields[key] = value
            continue
        if name in keys:
            raise DatasetError(
                f"line {line}: the record names {name!r} more than once ({keys[name]!r}, {key!r})"
            )
        keys[name] = key
        fields[name] = value
    return fields


# What a spreadsheet in another locale writes instead of commas, by how the error names it.
OTHER_SEPARATORS = {";": "semicolons", "\t": "tabs", "|": "vertical bars"}


def _other_separator(header: str) -> str | None:
    """How a one-column header is separated, when it is the training columns joined by
    something other than a comma (a semicolon CSV from a spreadsheet in another locale)."""
    for separator, name in OTHER_SEPARATORS.items():
        if any(_column_name(part) in REQUIRED_COLUMNS for part in header.split(separator)[1:]):
            return name
    return None


def _column_name(name: str) -> str:
    """A header's (or a JSON record's) name for a column, the training columns in any case."""
    return column_name(name, known=REQUIRED_COLUMNS)


# The value of a field a CSV row stops short of (None is JSON's null, an empty text).
SHORT = object()


def _records(rows: list[tuple[int, list[str]]]) -> list[Row]:
    """CSV rows as records keyed by the header's names (`_column_name`), each with the line it
    starts on. A header naming a column twice is an error, as is a row with more fields than
    the header (an unquoted comma would cut a description short); a field a row stops short
    of is `SHORT`, which `_example` counts as missing.
    A cell the label export kept from running as a formula ('=...) reads as it was (=...)."""
    if not rows:
        return []
    (header_line, header), *body = rows
    names = [_column_name(name) for name in header]
    if len(names) == 1 and (separator := _other_separator(names[0])):
        raise DatasetError(
            f"line {header_line}: the header is one column, {names[0]!r}: the file is "
            f"separated by {separator}, not commas; save it as CSV (comma-separated) or JSON Lines"
        )
    # Unnamed columns (a spreadsheet's empty trailing ones: "title,description,tag,,") are
    # not read; only a name given twice is an error.
    if twice := sorted({name for name in names if name and names.count(name) > 1}):
        raise DatasetError(
            f"line {header_line}: the header names {', '.join(map(repr, twice))} more than once"
        )
    records: list[Row] = []
    for line, row in body:
        if len(row) > len(names):
            raise DatasetError(
                f"line {line}: {len(row)} fields, the header has {len(names)}; "
                "quote a field that holds commas"
            )
        # A field the row stops short of is missing, not empty: "A,B" under three columns
        # was "tag '' is not in the approved list". Still keyed, as the header names it.
        fields = {n: unescape_cell(row[i]) if i < len(row) else SHORT for i, n in enumerate(names)}
        records.append((line, {name: value for name, value in fields.items() if name}))
    return records


class _RowProblem(ValueError):
    """Why one record cannot be a training example."""


JSON_TYPES = {
    bool: "true/false",
    int: "a number",
    float: "a number",
    list: "a list",
    dict: "an object",
}


def _text_field(row: dict[str, object], name: str) -> str:
    """A text field, stripped; null is empty (as "description": null is to the API)."""
    value = row.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _RowProblem(
            f"{name} must be text, not {JSON_TYPES.get(type(value), type(value).__name__)}"
        )
    return value.strip()


def _example(row: dict[str, object], *, tags: TagSet) -> Example:
    """`row` as an example, or _RowProblem saying why it cannot be one."""
    if missing := [c for c in REQUIRED_COLUMNS if row.get(c, SHORT) is SHORT]:
        raise _RowProblem(f"missing field(s): {', '.join(missing)}")
    title, description, tag = (_text_field(row, name) for name in REQUIRED_COLUMNS)
    if not has_visible(title) and not has_visible(description):
        raise _RowProblem("empty title and description")
    if problem := _unstorable(title, description):
        raise _RowProblem(problem)
    if tag not in tags:
        raise _RowProblem(f"tag {tag!r} is not in the approved list")
    return Example(title=title, description=description, tag=tag)


def validate_rows(
    rows: list[Row], *, tags: TagSet, source: str
) -> tuple[list[Example], ValidationReport]:
    """Check columns, text, tags and duplicates; return the usable examples and the report.
    Errors name the line a record starts on (a quoted CSV field can span lines)."""
    report = ValidationReport(source=source, rows_read=len(rows))
    if not rows:
        report.errors.append("the file has no rows")
        return [], report
    if source.lower().endswith(".csv") and (
        missing := [c for c in REQUIRED_COLUMNS if c not in rows[0][1]]
    ):  # a header's problem, said once, not on every row
        report.errors.append(f"missing required column(s): {', '.join(missing)}")
        return [], report
    first: dict[str, tuple[int, str]] = {}  # text hash -> the line and tag it was kept from
    conflicts: list[str] = []
    examples: list[Example] = []
    for n, row in rows:
        try:
            example = _example(row, tags=tags)
        except _RowProblem as exc:
            report.errors.append(f"line {n}: {exc}")
            continue
        kept = first.setdefault(example.text_hash, (n, example.tag))
        if kept[0] != n:
            report.duplicates_dropped += 1
            if kept[1] != example.tag:
                conflicts.append(f"line {n} ({example.tag}) repeats line {kept[0]} ({kept[1]})")
            continue
        examples.append(example)
    report.rows_kept = len(examples)
    report.tag_counts = dict(Counter(e.tag for e in examples))
    _warn(report, tags=tags, conflicts=conflicts)
    return examples, report


def _warn(report: ValidationReport, *, tags: TagSet, conflicts: list[str]) -> None:
    # A tag present with too few examples is trainability's error, said there once; an absent
    # one is allowed, and worth a word.
    for name in tags.names:
        if name not in report.tag_counts:
            report.warnings.append(
                f"tag {name!r} has no examples: a model trained on this file never answers it, "
                "and one evaluated on it gets no figures for it"
            )
    if conflicts:
        shown = "; ".join(conflicts[:5]) + (
            f"; and {len(conflicts) - 5} more" if len(conflicts) > 5 else ""
        )
        report.warnings.append(
            f"{len(conflicts)} duplicate(s) with another tag than the first row's, which is "
            f"kept: {shown}"
        )


def _unstorable(*texts: str) -> str | None:
    """Why a text cannot be hashed or stored (a NUL, a lone surrogate from JSON), if it cannot."""
    for text in texts:
        try:
            storable(text)
        except ValueError as exc:
            return f"text {exc}"
    return None


# What `tagflow train` asks of each tag of a file (its stratified split then leaves 8 or more
# in training), and how many such tags; a file with too few failed deep inside scikit-learn.
MIN_PER_TAG = 10
MIN_TAGS = 2
# The fewest training examples of a tag model selection runs with: its stratified folds spread
# a tag's examples over their test parts, so with one, the fold testing it trained without the
# tag and its out-of-fold probabilities had a column too few ("shape mismatch"). Two run
# (under five, scikit-learn warns that some folds test none of them).
MIN_TO_FIT = 2


def scarce_tags(examples: list[Example]) -> dict[str, int]:
    """The tags present with fewer than `MIN_PER_TAG` examples, and how many each has."""
    counts = Counter(e.tag for e in examples)
    return {tag: n for tag, n in sorted(counts.items()) if n < MIN_PER_TAG}


def trainability(examples: list[Example]) -> str | None:
    """Why `examples` are too little to train on, if they are: at least `MIN_TAGS` tags need
    `MIN_PER_TAG` examples each, and no tag fewer (a tag may be absent: the model then never
    answers it)."""
    counts = Counter(e.tag for e in examples)
    scarce = scarce_tags(examples)
    problems = [f"tag {tag!r} has {n} example(s)" for tag, n in scarce.items()]
    if len(counts) - len(scarce) < MIN_TAGS:
        problems.append(f"{len(counts) - len(scarce)} tag(s) with enough examples")
    if not problems:
        return None
    return (
        f"too little to train on: {'; '.join(problems)}. Training needs at least "
        f"{MIN_PER_TAG} examples of each tag it learns, and at least {MIN_TAGS} such tags."
    )


def check_trainable(examples: list[Example], *, source: str) -> None:
    """DatasetError if `examples` are too little to train on (see `trainability`)."""
    if problem := trainability(examples):
        raise DatasetError(f"{source}: {problem}")


def load_training_file(path: Path, *, tags: TagSet) -> tuple[list[Example], ValidationReport]:
    """`load_dataset`, and enough of each tag to train on, reported together: one pass shows
    everything wrong with the file."""
    rows = _read_rows(path)
    examples, report = validate_rows(rows, tags=tags, source=str(path))
    read = report.rows_kept or any(e.startswith("line ") for e in report.errors)
    if read and (problem := trainability(examples)):  # not for a file without the columns
        report.errors.append(problem)
    if not report.ok:
        raise DatasetError(report.render())
    return examples, report


def load_dataset(path: Path, *, tags: TagSet) -> tuple[list[Example], ValidationReport]:
    """Read and validate a training file. Raises DatasetError with the report when unusable."""
    rows = _read_rows(path)
    examples, report = validate_rows(rows, tags=tags, source=str(path))
    if not report.ok:
        raise DatasetError(report.render())
    return examples, report


def check_leakage(train: list[Example], evaluation: list[Example]) -> int:
    """Number of evaluation items whose content also appears in training (should be 0)."""
    train_hashes = {e.text_hash for e in train}
    return sum(e.text_hash in train_hashes for e in evaluation)
