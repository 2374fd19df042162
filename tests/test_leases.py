"""Leasing review tasks (service.crud.leases): claims in priority order with a lease, a
reviewer's own lease handed back, expired leases returned, concurrent claims never sharing a
task, skipped tasks going round, and a lease given back unchanged."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from service.crud import leases, review_intake
from service.crud import review as review_crud
from service.entities.common import utcnow
from service.entities.review import ReviewStatus, ReviewTask
from service.errors import ConflictError, NotFoundError
from tests.test_review_queue import add_task, do, get, label_task, tasks


def test_claim_hands_out_the_highest_priority_with_a_lease(engine: Engine) -> None:
    low, high = add_task(engine, "low", 0.2), add_task(engine, "high", 0.9)
    before = utcnow()
    task = do(engine, leases.claim, reviewer="ann", lease_s=60)
    assert task.id == high and task.status == ReviewStatus.LEASED and task.leased_by == "ann"
    stored = get(engine, high)
    assert stored.status == ReviewStatus.LEASED
    expires = stored.lease_expires_at
    assert expires is not None
    assert before + timedelta(seconds=59) < expires.replace(tzinfo=before.tzinfo)
    assert do(engine, leases.claim, reviewer="bob", lease_s=60).id == low
    assert do(engine, leases.claim, reviewer="cat", lease_s=60) is None


def test_a_claim_gives_back_the_task_the_reviewer_holds(engine: Engine) -> None:
    """A reviewer whose page lost its task (a crash, a key re-issued) gets it back on the next
    claim, with a fresh lease, rather than leaving it stranded until the lease runs out."""
    high, low = add_task(engine, "high", 0.9), add_task(engine, "low", 0.2)
    first = do(engine, leases.claim, reviewer="ann", lease_s=60)
    assert first.id == high
    again = do(engine, leases.claim, reviewer="ann", lease_s=600)
    assert again.id == high and again.leased_by == "ann"
    expires = get(engine, high).lease_expires_at
    assert expires is not None and first.lease_expires_at is not None
    assert expires - first.lease_expires_at > timedelta(seconds=500)  # renewed, not kept
    assert do(engine, leases.claim, reviewer="bob", lease_s=60).id == low
    label_task(engine, high, "mlops", reviewer="ann")
    assert do(engine, leases.claim, reviewer="ann", lease_s=60) is None  # bob holds low
    with Session(engine) as session:  # bob's lease ran out: not his to resume any more
        task = session.get(ReviewTask, low)
        assert task is not None
        task.lease_expires_at = utcnow() - timedelta(seconds=1)
        session.add(task)
        session.commit()
    assert do(engine, leases.claim, reviewer="ann", lease_s=60).id == low


def test_expired_leases_return_to_the_queue(engine: Engine) -> None:
    task_id = add_task(engine, "only", 0.5)
    assert do(engine, leases.claim, reviewer="ann", lease_s=60).id == task_id
    assert do(engine, leases.claim, reviewer="bob", lease_s=60) is None
    with Session(engine) as session:
        task = session.get(ReviewTask, task_id)
        assert task is not None
        task.lease_expires_at = utcnow() - timedelta(seconds=1)
        session.add(task)
        session.commit()
    stats = do(engine, review_crud.stats, now=utcnow())
    assert (stats["open"], stats["leased"]) == (1, 0)
    again = do(engine, leases.claim, reviewer="bob", lease_s=60)
    assert again.id == task_id and again.leased_by == "bob"
    with pytest.raises(ConflictError):  # ann's lease is gone: bob holds it now
        label_task(engine, task_id, "mlops", reviewer="ann")


@pytest.mark.parametrize("n_tasks", [30, 10])
def test_concurrent_claims_never_share_a_task(engine: Engine, n_tasks: int) -> None:
    ids = {add_task(engine, f"item {i}", i / n_tasks) for i in range(n_tasks)}
    barrier = threading.Barrier(20)
    got: list[int | None] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def claim(n: int) -> None:
        barrier.wait()
        try:
            task = do(engine, leases.claim, reviewer=f"r{n}", lease_s=60)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)
            return
        with lock:
            got.append(task.id if task else None)

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    handed = [i for i in got if i is not None]
    assert len(handed) == len(set(handed)) == min(20, n_tasks)
    assert set(handed) <= ids
    leased = [t for t in tasks(engine) if t.status == ReviewStatus.LEASED]
    assert {t.id for t in leased} == set(handed)
    assert len({t.leased_by for t in leased}) == len(leased)


def test_skip_sinks_a_task_and_offers_it_to_others_first(engine: Engine) -> None:
    first, second = add_task(engine, "first", 0.9), add_task(engine, "second", 0.5)
    assert do(engine, leases.claim, reviewer="ann", lease_s=60).id == first
    with pytest.raises(ConflictError):
        do(engine, review_crud.skip, task_id=first, reviewer="bob")
    skipped = do(engine, review_crud.skip, task_id=first, reviewer="ann")
    assert skipped.status == ReviewStatus.OPEN and skipped.skips == 1
    assert skipped.priority == pytest.approx(0.9 - review_intake.SKIP_STEP)
    assert skipped.priority == pytest.approx(review_intake.task_priority(skipped))
    assert do(engine, leases.claim, reviewer="ann", lease_s=60).id == second
    assert do(engine, leases.claim, reviewer="bob", lease_s=60).id == first


def test_skipping_every_item_goes_round_them_instead_of_back_to_the_same(
    engine: Engine,
) -> None:
    """Once a reviewer has skipped every item open to them, S moves on to the item they
    skipped longest ago. Before, the skipped ones came back in priority order, so the top one
    came back at every skip until its priority sank below the next (in a probe on a real
    stack: 8 skips in a row answered with the same item while another waited)."""
    top, low = add_task(engine, "top", 0.96), add_task(engine, "low", 0.6)
    handed = []
    for _ in range(6):
        task = do(engine, leases.claim, reviewer="ann", lease_s=60)
        handed.append(task.id)
        do(engine, review_crud.skip, task_id=task.id, reviewer="ann")
    assert handed == [top, low, top, low, top, low]
    # Someone who skipped nothing still gets them in priority order.
    assert do(engine, leases.claim, reviewer="bob", lease_s=60).id == top


def test_release_gives_the_lease_back_unchanged(engine: Engine) -> None:
    task_id = add_task(engine, "first", 0.9)
    do(engine, leases.claim, reviewer="ann", lease_s=60)
    with pytest.raises(ConflictError):
        do(engine, leases.release, task_id=task_id, reviewer="bob")
    released = do(engine, leases.release, task_id=task_id, reviewer="ann")
    assert released.status == ReviewStatus.OPEN and released.leased_by is None
    assert (released.skips, released.priority) == (0, pytest.approx(0.9))
    assert do(engine, leases.claim, reviewer="bob", lease_s=60).id == task_id
    with pytest.raises(NotFoundError):
        do(engine, leases.release, task_id=999_999, reviewer="ann")
