"""Second opinions, simulated: does the overlap sample find the careless reviewer, and what does
adjudication do to label accuracy?

    python loadtests/simulate_overlap.py [--dataset ../shared/data/madewithml/dataset.csv]
        [--share 0.3] [--seeds 3] [--out results/overlap.json]

In-process, with the service's own queue code on a scratch SQLite database (no model, no
Redis): every dataset item becomes a review task; three simulated reviewers take turns to
claim and label through `crud.review` (the claim and label calls the API makes), each
mislabelling a fixed share of what they see (a uniformly chosen other tag). The dataset's tag
stands for the truth. Reported per seed: the agreement figures `GET /review/agreement` and
`GET /review/reviewers` would show, each reviewer's true error rate beside them, and the
accuracy of the labels in force on the overlap contents after adjudication, compared with
their first labels alone.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sqlmodel import Session, select

from service.config import DEFAULT_TAGS_FILE
from service.crud import labels as labels_crud
from service.crud import leases, overlap, review_intake
from service.crud import review as review_crud
from service.db import init_db, make_engine
from service.entities import Label, ReviewReason, ReviewTask
from service.ml.dataset import Example, load_dataset
from service.tags import TagSet, load_tags

REVIEWERS = {"ann": 0.03, "bob": 0.08, "cat": 0.25}  # share of labels each gets wrong


@dataclass
class Reviewer:
    name: str
    error: float
    rng: random.Random
    labels: int = 0
    wrong: int = 0

    def answer(self, truth: str, tags: list[str]) -> str:
        self.labels += 1
        if self.rng.random() >= self.error:
            return truth
        self.wrong += 1
        return self.rng.choice([t for t in tags if t != truth])


def run(examples: list[Example], tags: TagSet, *, share: float, seed: int) -> dict[str, object]:
    workdir = Path(tempfile.mkdtemp(prefix="tagflow-overlap-"))
    engine = make_engine(f"sqlite:///{workdir / 'sim.db'}")
    init_db(engine)
    truth = {e.text_hash: e.tag for e in examples}
    with Session(engine) as session:
        for e in examples:
            review_intake.create_task(
                session,
                task=ReviewTask(
                    text_hash=e.text_hash,
                    title=e.title,
                    description=e.description,
                    reason=ReviewReason.LOW_CONFIDENCE,
                ),
            )
    rng = random.Random(seed)
    people = [Reviewer(n, err, random.Random(rng.random())) for n, err in REVIEWERS.items()]
    idle = 0
    while idle < len(people):  # until no reviewer finds anything to claim
        idle = 0
        for person in rng.sample(people, len(people)):
            with Session(engine, expire_on_commit=False) as session:
                task = leases.claim(session, reviewer=person.name, lease_s=600)
                if task is None:
                    idle += 1
                    continue
                assert task.id is not None
                review_crud.label(
                    session,
                    task_id=task.id,
                    tag=person.answer(truth[task.text_hash], tags.names),
                    reviewer=person.name,
                    tags=tags,
                    holdout_share=0.0,
                    overlap_share=share,
                )
    return report(engine, people, truth, seed=seed)


def report(
    engine: object, people: list[Reviewer], truth: dict[str, str], *, seed: int
) -> dict[str, object]:
    with Session(engine) as session:  # type: ignore[arg-type]
        stats = overlap.agreement_stats(session)
        per_reviewer = overlap.by_reviewer(overlap.pairs(session))
        paired = session.exec(
            select(ReviewTask).where(ReviewTask.first_label_id.is_not(None))  # type: ignore[union-attr]
        ).all()
        first = {
            t.text_hash: session.get(Label, t.first_label_id).tag  # type: ignore[union-attr]
            for t in paired
        }
        final = {
            h: labels_crud.current_label(session, text_hash=h).tag  # type: ignore[union-attr]
            for h in first
        }
    n = len(first)
    return {
        "seed": seed,
        "agreement": stats.model_dump(),
        "reviewers": {
            p.name: {
                "true_error": round(p.wrong / p.labels, 4) if p.labels else None,
                "labels": p.labels,
                "paired": per_reviewer[p.name].paired,
                "agreed_with_peer": per_reviewer[p.name].agreement,
                "disputes_decided": per_reviewer[p.name].decided,
                "upheld": per_reviewer[p.name].upheld_rate,
            }
            for p in people
            if p.name in per_reviewer
        },
        "overlap_contents": n,
        "first_label_accuracy": round(sum(first[h] == truth[h] for h in first) / n, 4),
        "final_label_accuracy": round(sum(final[h] == truth[h] for h in final) / n, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dataset", type=Path, default=Path("../shared/data/madewithml/dataset.csv")
    )
    parser.add_argument("--share", type=float, default=0.3)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    tags = load_tags(DEFAULT_TAGS_FILE)
    examples, _ = load_dataset(args.dataset, tags=tags)
    runs = [run(examples, tags, share=args.share, seed=s) for s in range(args.seeds)]
    text = json.dumps({"share": args.share, "error_rates": REVIEWERS, "runs": runs}, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
