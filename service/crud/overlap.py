"""Second opinions and adjudication: the stages of a review task (`ReviewStage`).

A share of contents, chosen by hash like the audit sample, is labelled twice by different
reviewers, the second without seeing the first. How often the two agree is the team's measure
of its labels' quality (and of how hard the tags are to tell apart). When they differ, a third
reviewer decides, and until then the content is left out of the training data.

Nothing waits on the overlap: the first label is the content's label at once, as for any task.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, func, or_
from sqlalchemy.orm import aliased
from sqlmodel import Session, col, select

from service.crud.aggregates import counts_by, rate
from service.entities import AgreementStats, Label, ReviewStage, ReviewStatus, ReviewTask
from service.entities.review import ACTIVE, EarlierLabel
from service.errors import ConflictError


def in_overlap_sample(text_hash: str, *, share: float) -> bool:
    """Whether content gets a second opinion. Drawn from another part of the hash than the
    audit sample and the holdout, so the three samples are independent of each other."""
    return share > 0.0 and int(text_hash[8:16], 16) < share * 0x1_0000_0000


def not_labelled_by(reviewer: str) -> ColumnElement[bool]:
    """Tasks `reviewer` has not already labelled at an earlier stage: a second opinion must
    come from someone else, and so must the decision between two."""
    first, second = col(ReviewTask.first_reviewer), col(ReviewTask.second_reviewer)
    return and_(or_(first.is_(None), first != reviewer), or_(second.is_(None), second != reviewer))


def disputed_contents() -> Select[tuple[str]]:
    """Contents whose two labels differ and wait for a decision: not training data yet."""
    return select(ReviewTask.text_hash).where(
        ReviewTask.stage == ReviewStage.ADJUDICATE, col(ReviewTask.status).in_(ACTIVE)
    )


@dataclass(frozen=True)
class Step:
    """What a new label does to its task: the values to write, and which of the task's label
    columns records the label (besides `final_label_id` when it closes the task)."""

    values: dict[str, Any]
    label_column: str | None
    closes: bool


def after_label(
    task: ReviewTask, *, tag: str, reviewer: str, first_tag: str | None, overlap_share: float
) -> Step:
    """The task's next state once `reviewer` labels it `tag` (`first_tag`: the first of two
    labels, at the second stage)."""
    unleased = {"leased_by": None, "lease_expires_at": None}
    closed = unleased | {"status": ReviewStatus.LABELED, "open_key": None}
    reopened = unleased | {"status": ReviewStatus.OPEN, "skipped_by": None}
    if task.stage == ReviewStage.FIRST:
        if in_overlap_sample(task.text_hash, share=overlap_share):
            step = reopened | {"stage": ReviewStage.SECOND, "first_reviewer": reviewer}
            return Step(step, "first_label_id", closes=False)
        return Step(closed, None, closes=True)
    if task.stage == ReviewStage.SECOND:
        if tag == first_tag:
            return Step(closed | {"second_reviewer": reviewer}, "second_label_id", closes=True)
        step = reopened | {"stage": ReviewStage.ADJUDICATE, "second_reviewer": reviewer}
        return Step(step, "second_label_id", closes=False)
    return Step(closed, None, closes=True)


def undo_values(task: ReviewTask, *, reviewer: str, current: Label | None) -> dict[str, Any]:
    """How to take back `reviewer`'s last label on `task` (`current`: the content's label in
    force): the values that lease the task back to them at the stage of that label.
    ConflictError when that label is not theirs or no longer the last word."""
    if task.status == ReviewStatus.LABELED:
        if current is None or current.id != task.final_label_id:
            raise ConflictError(f"task {task.id} has no current label of its own to undo")
        if current.reviewer != reviewer:
            raise ConflictError(f"task {task.id} was labelled by {current.reviewer!r}")
        values: dict[str, Any] = {"open_key": task.text_hash, "final_label_id": None}
        if task.stage == ReviewStage.SECOND:  # closed by agreement: the second label goes
            values |= {"second_label_id": None, "second_reviewer": None}
        return values
    if task.stage == ReviewStage.SECOND and task.first_reviewer == reviewer:
        return {"stage": ReviewStage.FIRST, "first_label_id": None, "first_reviewer": None}
    if task.stage == ReviewStage.ADJUDICATE and task.second_reviewer == reviewer:
        return {"stage": ReviewStage.SECOND, "second_label_id": None, "second_reviewer": None}
    raise ConflictError(f"task {task.id} has no label of {reviewer!r} to undo")


def earlier_labels(session: Session, *, task: ReviewTask) -> list[EarlierLabel]:
    """The two labels an adjudication decides between; none at any other stage (a second
    opinion must not see the first)."""
    if task.stage != ReviewStage.ADJUDICATE or task.status == ReviewStatus.LABELED:
        return []
    ids = [task.first_label_id, task.second_label_id]
    rows = session.exec(select(Label).where(col(Label.id).in_(ids)).order_by(col(Label.id)))
    return [EarlierLabel(reviewer=row.reviewer, tag=row.tag) for row in rows]


@dataclass(frozen=True)
class Pair:
    """Two independent labels of one content, and the decision if they differed."""

    first_reviewer: str
    first_tag: str
    second_reviewer: str
    second_tag: str
    decided_tag: str | None

    @property
    def agreed(self) -> bool:
        return self.first_tag == self.second_tag


def pairs(session: Session) -> list[Pair]:
    """Every content labelled twice independently, oldest first."""
    first, second, final = aliased(Label), aliased(Label), aliased(Label)
    decided = and_(
        ReviewTask.stage == ReviewStage.ADJUDICATE, ReviewTask.status == ReviewStatus.LABELED
    )
    rows = session.exec(
        select(  # type: ignore[call-overload]
            first.reviewer, first.tag, second.reviewer, second.tag, final.tag, decided
        )
        .select_from(ReviewTask)
        .join(first, col(first.id) == ReviewTask.first_label_id)
        .join(second, col(second.id) == ReviewTask.second_label_id)
        .outerjoin(final, col(final.id) == ReviewTask.final_label_id)
        .order_by(col(ReviewTask.id))
    )
    return [
        Pair(r1, t1, r2, t2, decided_tag if is_decided else None)
        for r1, t1, r2, t2, decided_tag, is_decided in rows
    ]


PairTable = Counter[tuple[str, str]]  # (first tag, second tag) -> pairs


def pair_table(session: Session) -> PairTable:
    """How many pairs gave each (first tag, second tag): all that agreement and kappa need,
    counted by the database. The index on `second_label_id` keeps the read to the pairs, so
    /metrics can ask at every scrape."""
    first, second = aliased(Label), aliased(Label)
    rows = session.exec(
        select(first.tag, second.tag, func.count())  # type: ignore[call-overload]
        .select_from(ReviewTask)
        .join(second, col(second.id) == ReviewTask.second_label_id)
        .join(first, col(first.id) == ReviewTask.first_label_id)
        # `> 0` rather than IS NOT NULL: SQLite's planner reads the index for a range only
        # (300k tasks, 3k pairs: 1.9 ms instead of a 32 ms table scan); ids start at 1.
        .where(col(ReviewTask.second_label_id) > 0)
        .group_by(first.tag, second.tag)
    )
    return Counter({(a, b): n for a, b, n in rows})


def table_of(pairs: list[Pair]) -> PairTable:
    return Counter((p.first_tag, p.second_tag) for p in pairs)


def agreed_in(table: PairTable) -> int:
    return sum(n for (a, b), n in table.items() if a == b)


def kappa(table: PairTable) -> float | None:
    """Fleiss' kappa for two ratings per item: agreement beyond what the tags' overall
    frequencies give by chance (1: always agree, 0: chance level). Reviewers differ from item
    to item, which is the case Fleiss' (not Cohen's) kappa is for."""
    total = sum(table.values())
    if not total:
        return None
    used: Counter[str] = Counter()
    for (a, b), n in table.items():
        used[a] += n
        used[b] += n
    expected = sum((n / (2 * total)) ** 2 for n in used.values())
    if expected == 1.0:
        return None  # a single tag in every label: agreement says nothing
    return (agreed_in(table) / total - expected) / (1.0 - expected)


@dataclass
class ReviewerAgreement:
    """One reviewer's share of the overlap: pairs they were in, how many agreed, and of their
    disagreements that were decided, how many the decision upheld."""

    paired: int = 0
    agreed: int = 0
    decided: int = 0
    upheld: int = 0

    @property
    def agreement(self) -> float | None:
        return rate(self.agreed, self.paired)

    @property
    def upheld_rate(self) -> float | None:
        return rate(self.upheld, self.decided)


def by_reviewer(pairs: list[Pair]) -> dict[str, ReviewerAgreement]:
    """Each reviewer's agreement figures over `pairs`."""
    out: dict[str, ReviewerAgreement] = {}
    for p in pairs:
        for reviewer, tag in ((p.first_reviewer, p.first_tag), (p.second_reviewer, p.second_tag)):
            mine = out.setdefault(reviewer, ReviewerAgreement())
            mine.paired += 1
            mine.agreed += p.agreed
            if p.decided_tag is not None:
                mine.decided += 1
                mine.upheld += p.decided_tag == tag
    return out


def specific_agreement(pairs: list[Pair]) -> dict[str, float]:
    """Per tag: 2 x (pairs where both labels are the tag) / (labels of the tag in all pairs),
    the chance that one reviewer's use of a tag is matched by the other's."""
    both = Counter(p.first_tag for p in pairs if p.agreed)
    used = Counter(t for p in pairs for t in (p.first_tag, p.second_tag))
    return {tag: round(2 * both[tag] / n, 6) for tag, n in sorted(used.items())}


def agreement_stats(session: Session) -> AgreementStats:
    """The overlap sample as a whole: pairs, agreement, kappa, per-tag agreement, and how
    many tasks wait for a second opinion or a decision."""
    found = pairs(session)
    agreed = sum(p.agreed for p in found)
    waiting = counts_by(session, ReviewTask.stage, ReviewStage, col(ReviewTask.status).in_(ACTIVE))
    k = kappa(table_of(found))
    return AgreementStats(
        pairs=len(found),
        agreed=agreed,
        agreement=rate(agreed, len(found)),
        kappa=None if k is None else round(k, 6),
        by_tag=specific_agreement(found),
        waiting_second=waiting[ReviewStage.SECOND],
        waiting_decision=waiting[ReviewStage.ADJUDICATE],
        decided=sum(p.decided_tag is not None for p in found),
    )
