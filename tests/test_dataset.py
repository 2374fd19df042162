"""Training-file validation: readable reports, never a stack trace, on broken files."""

from __future__ import annotations

import csv
import json
import os
import threading
import unicodedata
from pathlib import Path

import pytest
from typer.testing import CliRunner

from service.cli import app
from service.config import SEED_DATASET
from service.ml.dataset import (
    DatasetError,
    Example,
    check_leakage,
    check_trainable,
    item_text,
    load_dataset,
    load_training_file,
    text_hash,
)
from service.ml.pipeline import base_split
from service.tags import TagSet


def _write_csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_shared_dataset_validates(shared_dataset: Path, tags: TagSet) -> None:
    examples, report = load_dataset(shared_dataset, tags=tags)
    assert report.ok and report.rows_read == 764 and len(examples) == report.rows_kept
    assert report.tag_counts == {
        "natural-language-processing": 310,
        "computer-vision": 285,
        "other": 106,
        "mlops": 63,
    }


def test_seed_dataset_is_big_enough(tags: TagSet) -> None:
    examples, report = load_dataset(SEED_DATASET, tags=tags)
    assert len(examples) >= 240 and report.duplicates_dropped == 0
    assert all(report.tag_counts[t] >= 40 for t in tags.names)


def test_seed_is_not_copied_from_the_shared_dataset(shared_dataset: Path, tags: TagSet) -> None:
    seed, _ = load_dataset(SEED_DATASET, tags=tags)
    shared, _ = load_dataset(shared_dataset, tags=tags)
    assert not {e.title.lower() for e in seed} & {e.title.lower() for e in shared}


def test_duplicates_are_dropped_and_counted(tmp_path: Path, tags: TagSet) -> None:
    path = _write_csv(
        tmp_path / "d.csv",
        (
            "id,title,description,tag\n"
            "1,Image GANs,Faces from noise,computer-vision\n"
            "2,image gans ,  faces from   noise,computer-vision\n"
            "3,Topic models,LDA for documents,natural-language-processing\n"
        ),
    )
    examples, report = load_dataset(path, tags=tags)
    assert len(examples) == 2 and report.duplicates_dropped == 1
    assert "1 duplicate" in report.render()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("title,tag\nA,mlops\n", "missing required column(s): description"),
        ("title,description,tag\n,,mlops\n", "line 2: empty title and description"),
        ("title,description,tag\nA,B,robotics\n", "tag 'robotics' is not in the approved list"),
        ("title,description,tag\n", "the file has no rows"),
        ("title,description,tag\nA\x00B,x,mlops\n", "line 2: text must not contain a NUL"),
        (
            'title,description,tag\nA,B,mlops\nC,"open quote,mlops\nE,F,mlops\n',
            "malformed CSV in the row from line 3 (unexpected end of data)",
        ),
    ],
    ids=[
        "missing column",
        "empty text",
        "unapproved tag",
        "no rows",
        "NUL in text",
        "unterminated quote",
    ],
)
def test_broken_csv_is_a_clear_error(
    tmp_path: Path, tags: TagSet, content: str, message: str
) -> None:
    path = _write_csv(tmp_path / "bad.csv", content)
    with pytest.raises(DatasetError) as excinfo:
        load_dataset(path, tags=tags)
    assert message in str(excinfo.value)


def test_errors_name_the_line_a_row_starts_on(tmp_path: Path, tags: TagSet) -> None:
    """Not its position: a quoted description spanning lines, and blank lines, come between."""
    path = _write_csv(
        tmp_path / "lines.csv",
        "\ntitle,description,tag\n"  # lines 1-2
        'A,"two\nlines",mlops\n'  # lines 3-4
        "\n"  # line 5
        "B,x,robotics\n"  # line 6
        ",,mlops\n",  # line 7
    )
    with pytest.raises(DatasetError) as excinfo:
        load_dataset(path, tags=tags)
    message = str(excinfo.value)
    assert "line 6: tag 'robotics' is not in the approved list" in message
    assert "line 7: empty title and description" in message
    jsonl = tmp_path / "lines.jsonl"
    jsonl.write_text('{"title": "a", "description": "b", "tag": "other"}\n\n{"tag": "x"}\n')
    with pytest.raises(DatasetError, match="line 3: missing field.s.: title, description"):
        load_dataset(jsonl, tags=tags)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"title": 123, "description": "b", "tag": "mlops"}', "title must be text, not a number"),
        (
            '{"title": "a", "description": ["b"], "tag": "mlops"}',
            "description must be text, not a list",
        ),
        ('{"title": "a", "description": "b", "tag": true}', "tag must be text, not true/false"),
        ('{"title": "\u200b", "description": " ", "tag": "mlops"}', "empty title and description"),
        ('{"title": "a", "description": ' + "1" * 5000 + ', "tag": "mlops"}', "is not valid JSON"),
        (
            '{"title": ' + "[" * 100_000 + "]" * 100_000 + "}",
            "is not valid JSON (nested too deeply)",
        ),
    ],
    ids=["number", "list", "boolean", "invisible text", "5000 digits", "deep nesting"],
)
def test_json_lines_values_are_text_or_a_clear_error(
    tmp_path: Path, tags: TagSet, line: str, message: str
) -> None:
    """Not str() of whatever came: a number or a list used to train as "123" or "['b']", and
    deep nesting or a huge number escaped as a RecursionError or ValueError traceback."""
    path = tmp_path / "types.jsonl"
    path.write_text('{"title": "ok", "description": null, "tag": "mlops"}\n' + line + "\n")
    with pytest.raises(DatasetError) as excinfo:
        load_dataset(path, tags=tags)
    assert "line 2" in str(excinfo.value) and message in str(excinfo.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("title,description,tag,tag\nA,B,mlops,other\n", "line 1: the header names 'tag' more"),
        ("title,description,tag\nA,B,mlops\nC,D,E,mlops\n", "line 3: 4 fields, the header has 3"),
        (b"title,description,tag\nA,B,mlops\ncaf\xe9,x,other\n", "line 3 has the byte 0xe9"),
        # A spreadsheet in a locale whose decimal mark is the comma saves with semicolons:
        # once said as "line 4: 2 fields, the header has 1; quote a field that holds commas".
        ("title;description;tag\nA;B;mlops\nC, D;E;mlops\n", "line 1: .* separated by semicolons"),
        ("title\tdescription\ttag\nA\tB\tmlops\n", "line 1: .* separated by tabs, not commas"),
        # Headings in capitals, as the columns are read: was "missing required column(s)".
        ("Title;Description;Tag\nA;B;mlops\n", "line 1: .* separated by semicolons"),
    ],
    ids=["column twice", "unquoted comma", "latin-1", "semicolons", "tabs", "capitals"],
)
def test_csv_file_problems_name_their_line(
    tmp_path: Path, tags: TagSet, content: str | bytes, message: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DatasetError, match=message):
        load_dataset(path, tags=tags)


def test_a_field_of_any_length_is_read_and_an_open_quote_still_named(
    tmp_path: Path, tags: TagSet
) -> None:
    """A description over 131,072 characters (csv's default bound on a field) was refused as
    "malformed CSV ... field larger than field limit", where JSON Lines took it; a quote left
    open in a file that long is still an error naming the line its row starts on."""
    long = "word " * 40_000  # 200,000 characters
    rows = [("Long one", long, "mlops"), ("Short one", "A line.", "other")]
    path = tmp_path / "long.csv"
    with path.open("w", newline="") as out:
        csv.writer(out).writerows([("title", "description", "tag"), *rows])
    examples, _ = load_dataset(path, tags=tags)
    assert [len(e.description) for e in examples] == [len(long.strip()), 7]
    path.write_text(f'title,description,tag\nA,B,mlops\nOpen,"{long},other\nC,D,mlops\n')
    with pytest.raises(DatasetError, match="malformed CSV in the row from line 3 .*end of data"):
        load_dataset(path, tags=tags)


def test_unnamed_columns_are_not_read_and_old_mac_lines_counted(
    tmp_path: Path, tags: TagSet
) -> None:
    """A spreadsheet saves empty trailing columns ("tag,,"); a file may end lines with \r."""
    path = _write_csv(tmp_path / "sheet.csv", "title,description,tag,,\nA,x,mlops,,\n")
    examples, _ = load_dataset(path, tags=tags)
    assert examples == [Example("A", "x", "mlops")]
    old = tmp_path / "old.csv"
    old.write_bytes(b"title,description,tag\rA,x,mlops\rcaf\xe9,x,other\r")
    with pytest.raises(DatasetError, match="line 3 has the byte 0xe9"):
        load_dataset(old, tags=tags)


def test_header_names_are_stripped_and_conflicting_duplicates_warned(
    tmp_path: Path, tags: TagSet
) -> None:
    path = _write_csv(
        tmp_path / "d.csv",
        "title, description ,tag\nA,x,mlops\nB,y,other\na ,X,computer-vision\n",
    )
    examples, report = load_dataset(path, tags=tags)
    assert [e.tag for e in examples] == ["mlops", "other"] and report.duplicates_dropped == 1
    assert "line 4 (computer-vision) repeats line 2 (mlops)" in report.render()


def test_training_column_names_are_read_in_any_case(tmp_path: Path, tags: TagSet) -> None:
    """A spreadsheet's headings are often capitalised: "Title, Description, TAG" names the
    three columns (it was refused as missing all three), and "Tag" beside "tag" names one
    twice. Other columns keep their names."""
    path = _write_csv(tmp_path / "d.csv", "Id,Title, Description ,TAG\n1,A,x,mlops\n2,B,,other\n")
    examples, report = load_dataset(path, tags=tags)
    assert examples == [Example("A", "x", "mlops"), Example("B", "", "other")], report.render()
    twice = _write_csv(tmp_path / "twice.csv", "title,description,Tag,tag\nA,x,mlops,other\n")
    with pytest.raises(DatasetError, match="line 1: the header names 'tag' more than once"):
        load_dataset(twice, tags=tags)


def test_a_csv_row_short_of_fields_is_named_as_missing_them(tmp_path: Path, tags: TagSet) -> None:
    """ "A,B" under three columns was "tag '' is not in the approved list": the row's own
    problem, fields it does not have, is said, with its line."""
    path = _write_csv(tmp_path / "d.csv", "title,description,tag\nA,B\nC\nD,,mlops\n")
    with pytest.raises(DatasetError) as excinfo:
        load_dataset(path, tags=tags)
    message = str(excinfo.value)
    assert "line 2: missing field(s): tag" in message
    assert "line 3: missing field(s): description, tag" in message
    assert "not in the approved list" not in message
    assert "line 4" not in message  # an empty field is there: an empty description is allowed


def test_json_lines_field_names_are_read_in_any_case(tmp_path: Path, tags: TagSet) -> None:
    """{"Title": ...} was "missing field(s): title" on every row, though a CSV's header is
    read in any case (8a70adc); the same field named twice so is an error naming it."""
    path = tmp_path / "d.jsonl"
    path.write_text(
        '{"Title": "A", " DESCRIPTION ": "x", "TAG": "mlops", "Id": 1}\n'
        '{"title": "B", "description": "", "tag": "other"}\n'
    )
    examples, report = load_dataset(path, tags=tags)
    assert examples == [Example("A", "x", "mlops"), Example("B", "", "other")], report.render()
    path.write_text(
        '{"title": "A", "description": "x", "tag": "mlops"}\n{"Tag": "x", "tag": "y"}\n'
    )
    with pytest.raises(DatasetError, match="line 2: the record names 'tag' more than once"):
        load_dataset(path, tags=tags)


def test_jsonl_is_read_and_bad_lines_are_named(tmp_path: Path, tags: TagSet) -> None:
    good = tmp_path / "d.jsonl"
    rows = [{"title": "Speech to text", "description": "ASR transcripts", "tag": "other", "id": 1}]
    good.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    examples, _ = load_dataset(good, tags=tags)
    assert examples == [Example("Speech to text", "ASR transcripts", "other")]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"title": "a", "description": "b", "tag": "other"}\n{oops\n')
    with pytest.raises(DatasetError, match="line 2 is not valid JSON"):
        load_dataset(bad, tags=tags)
    # Valid JSON, but no UTF-8 (so no hash, no database) can hold a lone surrogate.
    bad.write_text('{"title": "a \\ud800", "description": "b", "tag": "other"}\n')
    with pytest.raises(DatasetError, match="line 1: text must not contain a lone UTF-16"):
        load_dataset(bad, tags=tags)


def test_unsupported_and_missing_files(tmp_path: Path, tags: TagSet) -> None:
    with pytest.raises(DatasetError, match="unsupported file type"):
        load_dataset(_write_csv(tmp_path / "d.xlsx", "x"), tags=tags)
    with pytest.raises(DatasetError, match="no such file"):
        load_dataset(tmp_path / "absent.csv", tags=tags)
    latin = tmp_path / "latin.csv"
    latin.write_bytes("title,description,tag\ncaf\xe9,x,other\n".encode("latin-1"))
    with pytest.raises(DatasetError, match="not UTF-8"):
        load_dataset(latin, tags=tags)
    (tmp_path / "folder.csv").mkdir()
    with pytest.raises(DatasetError, match="folder.csv: a directory, not a training file"):
        load_dataset(tmp_path / "folder.csv", tags=tags)


def test_a_fifo_is_refused_not_read(tmp_path: Path, tags: TagSet) -> None:
    """A training file is read more than once (validated, then split and trained on): a FIFO
    gave its data to the first read and held the second forever. It is refused unread."""
    fifo = tmp_path / "piped.csv"
    os.mkfifo(fifo)

    def write() -> None:
        with fifo.open("w") as out:
            out.write(SEED_DATASET.read_text())

    threading.Thread(target=write, daemon=True).start()  # read whole, without the check
    with pytest.raises(DatasetError, match="piped.csv: not a regular file"):
        load_training_file(fifo, tags=tags)
    with fifo.open() as drain:  # lets the writer finish
        drain.read()


def test_a_byte_order_mark_is_not_part_of_the_first_column(
    tmp_path: Path, shared_dataset: Path, tags: TagSet
) -> None:
    """Spreadsheets save CSV with one; the file must read as without it."""
    plain, _ = load_dataset(shared_dataset, tags=tags)
    marked = tmp_path / "excel.csv"
    marked.write_bytes(b"\xef\xbb\xbf" + shared_dataset.read_bytes())
    assert load_dataset(marked, tags=tags)[0] == plain


def test_split_is_frozen_and_leak_free(shared_dataset: Path, tags: TagSet) -> None:
    train_a, eval_a, _ = base_split(shared_dataset, tags=tags)
    train_b, eval_b, _ = base_split(shared_dataset, tags=tags)
    assert eval_a == eval_b and train_a == train_b
    assert check_leakage(train_a, eval_a) == 0
    assert check_leakage(train_a, eval_a[:3] + train_a[:2]) == 2


def test_text_hash_ignores_case_and_spacing() -> None:
    assert text_hash("A  Title", "Some text ") == text_hash("a title", "some   text")
    assert text_hash("A", "B") != text_hash("A B", "")


# The same texts in Unicode's two canonical forms: composed (NFC, what most keyboards send) and
# decomposed (NFD: macOS file names, some editors and text pipelines), which differ in every
# byte that carries an accent, or, in Korean, in every syllable.
COMPOSED = ("Caf\u00e9 r\u00e9sum\u00e9 parser", "한국어 형태소 분석")
DECOMPOSED = ("Cafe\u0301 re\u0301sume\u0301 parser", unicodedata.normalize("NFD", COMPOSED[1]))


def test_canonically_equal_texts_are_one_content_and_one_model_input() -> None:
    assert COMPOSED != DECOMPOSED
    # one content: one review task, one label in force, duplicates and leakage found
    assert text_hash(*COMPOSED) == text_hash(*DECOMPOSED)
    train, evaluation = [Example(*COMPOSED, tag="other")], [Example(*DECOMPOSED, tag="other")]
    assert check_leakage(train, evaluation) == 1
    # one model input: the TF-IDF head sees the same words, the embedding cache the same key
    assert item_text(*COMPOSED) == item_text(*DECOMPOSED)


def test_cli_train_on_broken_file_reports_without_traceback(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "bad.csv", "title,description,tag\nA,B,robotics\n,,mlops\n")
    env = {"TAGFLOW_DEV": "1", "TAGFLOW_DATA_DIR": str(tmp_path / "var"), "TAGFLOW_API_KEYS": ""}
    result = CliRunner().invoke(app, ["train", "--data", str(path)], env=env)
    assert result.exit_code == 1
    assert "not in the approved list" in result.output and "empty title" in result.output
    assert "Traceback" not in result.output


def test_texts_without_a_word_are_a_clear_error(tmp_path: Path, cli_env: dict[str, str]) -> None:
    """Titles of emoji or single characters alone pass validation, and `tagflow train` ended in
    scikit-learn's "ValueError: empty vocabulary" traceback from model selection."""
    rows = [
        (emoji, "", "mlops" if i % 2 else "other")
        for i, emoji in enumerate("😀😁😂🤣😃😄😅😆😉😊😋😎😍😘🥰😗😙😚🙂🤗")
    ]
    path = tmp_path / "emoji.csv"
    with path.open("w", newline="") as out:
        csv.writer(out).writerows([("title", "description", "tag"), *rows])
    result = CliRunner().invoke(app, ["train", "--data", str(path)], env=cli_env)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert " ".join(result.stderr.split()) == (
        "cannot train: the TF-IDF head finds no word in the training texts (a word is two "
        "letters or digits or more): titles and descriptions of emoji or single characters "
        "alone cannot be learned"
    )


def test_too_little_to_train_on_is_a_clear_error(
    tmp_path: Path, shared_dataset: Path, tags: TagSet, encoder_dir: Path
) -> None:
    """Fewer than 10 of a tag used to fail deep in scikit-learn's split, with a traceback."""
    examples, _ = load_dataset(shared_dataset, tags=tags)
    few = [e for tag in tags.names for e in [x for x in examples if x.tag == tag][:8]]
    path = tmp_path / "few.csv"
    _write_examples(path, few)
    env = {
        "TAGFLOW_DEV": "1",
        "TAGFLOW_DATA_DIR": str(tmp_path / "var"),
        "TAGFLOW_API_KEYS": "",
        "TAGFLOW_ENCODER_DIR": str(encoder_dir),
    }
    result = CliRunner().invoke(app, ["train", "--data", str(path)], env=env)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "too little to train on" in " ".join(result.output.split())
    # With other errors in the file, in the same report: one pass shows everything.
    robotics = Example(title="A robot arm", description="Grasping.", tag="robotics")
    _write_examples(path, [*few, robotics])
    both = " ".join(CliRunner().invoke(app, ["train", "--data", str(path)], env=env).output.split())
    assert "'robotics' is not in the approved list" in both and "too little to train on" in both
    two_tags = [e for e in examples if e.tag in ("mlops", "computer-vision")]
    check_trainable(two_tags, source="two tags")  # a tag may be absent
    with pytest.raises(DatasetError, match="'other' has 9 example"):
        check_trainable(two_tags + [e for e in examples if e.tag == "other"][:9], source="x")


def test_a_scarce_tag_is_reported_once(tmp_path: Path, shared_dataset: Path, tags: TagSet) -> None:
    """A tag with 1 to 4 examples was reported twice, as the too-little-to-train-on error and
    as a "has only N examples" warning; an absent tag (a model never answers it) is a warning."""
    examples, _ = load_dataset(shared_dataset, tags=tags)
    enough = [
        e
        for tag in tags.names
        if tag != "other"
        for e in [x for x in examples if x.tag == tag][:15]
    ]
    path = tmp_path / "scarce.csv"
    _write_examples(path, enough + [e for e in examples if e.tag == "other"][:3])
    with pytest.raises(DatasetError) as refused:
        load_training_file(path, tags=tags)
    assert str(refused.value).count("'other'") == 1, str(refused.value)
    assert "tag 'other' has 3 example(s)" in str(refused.value)
    _write_examples(path, enough)
    _, report = load_training_file(path, tags=tags)
    assert report.warnings == [
        "tag 'other' has no examples: a model trained on this file never answers it, "
        "and one evaluated on it gets no figures for it"
    ]


def _write_examples(path: Path, examples: list[Example]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["title", "description", "tag"])
        writer.writerows([e.title, e.description, e.tag] for e in examples)
