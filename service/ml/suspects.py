"""Suspect labels: training rows whose label the model, not having seen them, confidently denies.

On the shared dataset most of the errors the model makes with confidence are labels a reader
would dispute, not model mistakes (README, Quality). No model change fixes those; a person
reading the rows does. Training therefore lists them: each row's out-of-fold probabilities
(from cross-validation, so the row did not train the model that judged it) are compared with
its label, and the rows whose label it gives at most 10% are reported, most doubtful first, in
`report.json` and at the end of `tagflow train`. With `TAGFLOW_REVIEW_SUSPECTS` they also go to
the review queue as `label_check` tasks; a reviewer's label then replaces the row's in the next
retraining (labels override base rows by content).

Measured on the shared data's 611 training rows: 8 suspects. Some are labels a reader would
change ("Model Serving using FastAPI and streamlit" labelled computer-vision), some are
ambiguous ("Sinext", sign language to text with OpenCV), some are the model's own errors ("AI
Basketball Analysis"). With 20 labels there flipped at random, 12-14 of the 20 were among 16-17
suspects (three seeds); on the bundled seed, none before planting, 7-9 of 10 planted after.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel

from service.ml.dataset import Example

# A row is suspect when out of fold the model gives its label at most this probability.
MAX_P_LABEL = 0.1
REPORTED = 50  # rows kept in the report; the count covers all of them


class SuspectLabel(BaseModel):
    """One training row whose label the out-of-fold model confidently denies."""

    text_hash: str
    title: str
    description: str
    tag: str  # the label in the file
    predicted: str
    confidence: float  # out-of-fold probability of `predicted`
    p_label: float  # out-of-fold probability of the label
    scores: dict[str, float]  # every tag's out-of-fold probability


class SuspectReport(BaseModel):
    """The suspect rows of one training set."""

    max_p_label: float
    count: int
    share: float
    items: list[SuspectLabel]


def find_suspects(
    examples: Sequence[Example],
    proba: np.ndarray,
    *,
    classes: Sequence[str],
    max_p_label: float = MAX_P_LABEL,
    limit: int = REPORTED,
) -> SuspectReport:
    """Rows of `examples` whose out-of-fold `proba` (columns `classes`) give their own label at
    most `max_p_label` (so another tag is on top), the least likely label first."""
    index = {c: i for i, c in enumerate(classes)}
    best = proba.argmax(axis=1)
    found: list[SuspectLabel] = []
    for example, row, top in zip(examples, proba, best, strict=True):
        if classes[top] == example.tag or row[index[example.tag]] > max_p_label:
            continue
        found.append(
            SuspectLabel(
                text_hash=example.text_hash,
                title=example.title,
                description=example.description,
                tag=example.tag,
                predicted=classes[top],
                confidence=round(float(row[top]), 4),
                p_label=round(float(row[index[example.tag]]), 4),
                scores={c: round(float(p), 4) for c, p in zip(classes, row, strict=True)},
            )
        )
    found.sort(key=lambda s: (s.p_label, -s.confidence))
    return SuspectReport(
        max_p_label=max_p_label,
        count=len(found),
        share=round(len(found) / len(examples), 4) if len(examples) else 0.0,
        items=found[:limit],
    )
