"""Domain errors. The API maps them to HTTP statuses in one place (`service/api/errors.py`)."""

from __future__ import annotations

from typing import Any


class TagflowError(Exception):
    """Base class: every domain error carries a message meant for the caller."""


class NotFoundError(TagflowError):
    """The thing asked for does not exist (HTTP 404)."""


class ConflictError(TagflowError):
    """The request contradicts the current state, e.g. a task leased to someone else (409).
    `extra`: JSON fields the answer carries besides its `detail`, for a client to act on (the
    label that stands in the way, say)."""

    def __init__(self, message: str, *, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.extra = extra or {}


class InvalidInputError(TagflowError):
    """Semantically wrong input the schema could not catch, e.g. an unapproved tag (422)."""


class ArtifactError(TagflowError):
    """A model artifact is missing or its checksum does not match the registry (409)."""


class UnavailableError(TagflowError):
    """A dependency (model, Redis, the prediction log) is not ready: 503, with Retry-After
    `retry_after_s` seconds."""

    retry_after_s = 5  # a restart, a failover or a model load takes seconds


class RefusedError(TagflowError):
    """A dependency answered and refused this service (Redis: a wrong password, a database it
    does not have): a configuration error that retrying repeats, not an outage (500, no
    Retry-After; the API logs it as an error)."""


class OverloadedError(UnavailableError):
    """Too much work is waiting to take more now; the caller should retry shortly (503)."""

    retry_after_s = 1  # a burst: the micro-batcher clears hundreds of items a second


def is_redis_refusal(exc: BaseException) -> bool:
    """Whether Redis answered and refused (a wrong password, a database it does not have): a
    configuration error a retry repeats, not an outage. A Redis out of memory (maxmemory
    reached, no eviction) or a replica read-only during a failover answers an error too, but
    one that passes as the worker drains the queues or the failover ends: an outage."""
    from redis.exceptions import (
        AuthenticationError,
        OutOfMemoryError,
        ReadOnlyError,
        ResponseError,
    )

    if isinstance(exc, OutOfMemoryError | ReadOnlyError):
        return False
    return isinstance(exc, AuthenticationError | ResponseError)
