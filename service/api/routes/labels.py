"""GET /labels/export: the current reviewer labels as a training file (CSV or JSON Lines)."""

from __future__ import annotations

import csv
import io
import json
from enum import StrEnum
from typing import Annotated

from fastapi import APIRouter, Query, Response

from service.api.deps import ReviewerKey, SessionDep, SettingsDep, TagsDep
from service.crud import labels as labels_crud
from service.csv_rows import escape_cell
from service.training_sets import held_out_label_ids

router = APIRouter(prefix="/labels", tags=["labels"])


class ExportFormat(StrEnum):
    CSV = "csv"
    JSONL = "jsonl"


MEDIA_TYPES = {ExportFormat.CSV: "text/csv", ExportFormat.JSONL: "application/x-ndjson"}


def render(rows: list[dict[str, object]], fmt: ExportFormat) -> str:
    """Rows in the training schema (`load_dataset` reads both formats). In CSV, a text that
    a spreadsheet would run as a formula (a title of "=HYPERLINK(...)", sent by anyone with a
    client key) is written with a leading apostrophe, which `load_dataset` takes off."""
    if fmt is ExportFormat.JSONL:
        return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=labels_crud.EXPORT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        cells = {k: escape_cell(v) if isinstance(v, str) else v for k, v in row.items()}
        writer.writerow({**cells, "holdout": str(row["holdout"]).lower()})
    return out.getvalue()


@router.get("/export", response_class=Response)
def export_labels(
    session: SessionDep,
    settings: SettingsDep,
    tags: TagsDep,
    _caller: ReviewerKey,
    fmt: Annotated[ExportFormat, Query(alias="format")] = ExportFormat.CSV,
) -> Response:
    """Current (not superseded) labels: `id,created_on,title,description,tag` plus
    `reviewer,source,holdout` (`holdout`: the next retraining evaluates on it, not trains)."""
    held_out = held_out_label_ids(session, settings=settings, tags=tags)
    body = render(labels_crud.export_rows(session, held_out=held_out, tags=tags), fmt)
    return Response(
        body,
        media_type=MEDIA_TYPES[fmt],
        headers={"Content-Disposition": f'attachment; filename="labels.{fmt.value}"'},
    )
