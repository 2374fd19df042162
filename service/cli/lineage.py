"""`tagflow models lineage` and `tagflow models eval-set`: the data a version was made from,
and the items it was judged on, for the ML team at a terminal (the API has the lineage at
GET /models/{version}/lineage)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Annotated

import typer

from service.cli.common import (
    cli_tags,
    console,
    open_session,
    output_file_or_exit,
    print_error,
    settings_or_exit,
)
from service.crud.lineage import lineage
from service.csv_rows import escape_cell
from service.entities.snapshot import ModelLineage
from service.errors import TagflowError
from service.ml import registry
from service.ml.dataset import DatasetError


def models_lineage(
    version: str,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print it as JSON, as GET /models/{version}/lineage"),
    ] = False,
) -> None:
    """The data a version was made from: the base file (hash, rows), the reviewer labels it
    trained on and those held out to judge it, by id, and the user reports behind them."""
    settings = settings_or_exit()
    try:
        with open_session(settings) as session:
            made_from = lineage(session, version=registry.get_version(session, version=version))
    except TagflowError as exc:  # an unknown version
        print_error(str(exc))
        raise typer.Exit(1) from None
    if as_json:
        print(json.dumps(made_from.model_dump(mode="json"), indent=2))
    else:
        console.print(describe(made_from), highlight=False)


def describe(made_from: ModelLineage) -> str:
    """A version's lineage in a few lines of text."""
    evaluated = f", evaluated on {made_from.eval_rows}" if made_from.eval_rows is not None else ""
    lines = [f"{made_from.version}: trained on {made_from.train_rows} rows{evaluated}"]
    if made_from.imported_from is not None:  # its labels, if any, are the exporter's
        lines.append(
            f"  imported: it was {made_from.imported_from} of the deployment that exported it, "
            "whose data lineage it has (params.imported); no reviewer labels here"
        )
        return "\n".join(lines)
    if made_from.snapshot_id is None:
        lines.append("  trained from a file alone (tagflow train): no reviewer labels")
        return "\n".join(lines)
    read_at = f"{made_from.read_at:%Y-%m-%d %H:%M} UTC" if made_from.read_at else "?"
    lines += [
        f"  base file: sha256 {made_from.base_hash}, {made_from.base_rows} rows",
        f"  data snapshot {made_from.snapshot_id}, read {read_at}",
        f"  labels trained on: {made_from.train_labels} ({id_ranges(made_from.train_label_ids)})",
        f"  labels held out: {made_from.holdout_labels} ({id_ranges(made_from.holdout_label_ids)})",
    ]
    held = sum(r.held_out for r in made_from.reports)
    reports = id_ranges([r.feedback_id for r in made_from.reports])
    lines.append(
        f"  user reports behind them: {len(made_from.reports)} "
        f"({len(made_from.reports) - held} trained, {held} held out; {reports})"
    )
    return "\n".join(lines)


def id_ranges(ids: list[int]) -> str:
    """Ids as runs: [1, 2, 3, 7, 9, 10] -> "ids 1-3, 7, 9-10"; "none" when empty."""
    if not ids:
        return "none"
    runs: list[list[int]] = []
    for i in sorted(ids):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return "ids " + ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in runs)


def models_eval_set(
    version: str,
    out: Annotated[Path, typer.Option(help="CSV file to write (title, description, tag)")],
) -> None:
    """Write the items a version was evaluated on when trained (its base file's held-out split
    and its held-out labels), for `tagflow evaluate --data` to reproduce its recorded metrics."""
    # Imported here, not with the module: it brings in the training code, and every tagflow
    # command (`up` and its worker among them) imports this module to build its CLI.
    from service.ml.eval_set import evaluation_set

    settings = settings_or_exit()
    tags = cli_tags(settings)
    output_file_or_exit(out, action="write", name="--out")
    try:
        with open_session(settings) as session:
            row = registry.get_version(session, version=version)
            examples = evaluation_set(session, version=row, tags=tags)
    except (DatasetError, TagflowError) as exc:
        print_error("cannot rebuild the evaluation set:", exc)
        raise typer.Exit(1) from None
    with out.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["title", "description", "tag"])
        for e in examples:  # cells as the label export writes them: never run as formulas
            writer.writerow([escape_cell(e.title), escape_cell(e.description), e.tag])
    console.print(f"{len(examples)} items {version} was evaluated on written to {out}")
