"""Comparing two registered versions on the frozen evaluation set, as a background job.

The evaluation set is the one retraining's gate uses: the base dataset's fixed held-out split
plus the reviewer labels kept out of training. Scoring it encodes a few hundred items, so the
work runs on the training queue's worker, not in the API process; the result is read at
GET /jobs/{job_id}.
"""

from __future__ import annotations

from typing import Any

from rq import Queue
from sqlmodel import Session

from service.config import Settings
from service.jobs import enqueue_job
from service.ml import registry
from service.ml.compare import Contender, compare_versions
from service.ml.encoder import Encoder
from service.tags import TagSet
from service.training_sets import build_training_sets

COMPARE_JOB = "workers.training_jobs.compare"


def enqueue_compare(session: Session, *, queue: Queue, a: str, b: str) -> str:
    """Record and queue the comparison of version `a` with version `b`."""
    return enqueue_job(
        session, queue=queue, func=COMPARE_JOB, args=(a, b), description=f"compare {a} with {b}"
    )


def compare_registered(
    session: Session, *, a: str, b: str, settings: Settings, tags: TagSet, encoder: Encoder
) -> dict[str, Any]:
    """`a` against `b`, each as it serves, on the frozen evaluation set (see
    `service.ml.compare.compare_versions`), with where that set came from."""
    sets = build_training_sets(session, settings=settings, tags=tags)
    contenders = [
        Contender.registered(
            registry.get_version(session, version=v), artifacts_dir=settings.artifacts_dir
        )
        for v in (a, b)
    ]
    outcome = compare_versions(
        *contenders,
        encoder=encoder,
        examples=sets.evaluation,
        target_precision=settings.target_precision,
    )
    outcome["evaluation"] = {
        "rows": len(sets.evaluation),
        "source": str(sets.source),
        "base_hash": sets.base_hash,
        "holdout_labels": len(sets.holdout_label_ids),
    }
    return outcome
