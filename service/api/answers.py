"""The error answers the API's schema (/openapi.json, and so /docs) lists for each operation.

A status the schema does not list is one a client generated from it cannot expect. Those an
operation gives for what it depends on are added here, once, to every operation that depends
on it: the 401 and 403 of its key check, the 503 of its database session, and to every
operation the 413 of a body over the bound. Those it gives for what it does (an unknown
version, a conflict, a quota) are declared on its route, `responses=answers({404: "when"})`,
saying when. Every error answer has the
body `ErrorBody`, the one `service/api/errors.py` writes, but the 422, whose `detail` is the
list FastAPI's validation makes, or a message (`InvalidRequest`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import get_flat_params
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict

from service.api.deps import get_session, roles_checked, roles_taken


class ErrorBody(BaseModel):
    """An error answer: `detail`, a message meant for the caller. A 409 may carry more fields
    for a client to act on (`label`: the label that stands in the way)."""

    model_config = ConfigDict(extra="allow")

    detail: str


class FieldError(BaseModel):
    """One thing FastAPI's validation refused in a request: where (`loc`), what and why."""

    model_config = ConfigDict(extra="allow")  # `input` (cut when long), `ctx`

    loc: list[str | int]
    msg: str
    type: str


class InvalidRequest(BaseModel):
    """A 422: what FastAPI's validation refused in the request, a list; or, for a request
    valid in form that the route refuses, a message (an unapproved tag, a title over the
    configured limit, an empty batch). FastAPI's own schema said a list only."""

    detail: list[FieldError] | str


Answers = dict[int | str, dict[str, Any]]


# A 429 and every 503 but /readyz's say when to try again (service/api/errors.py).
RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again",
        "schema": {"type": "integer", "minimum": 1},
    }
}


def _answer(status: int, description: str) -> dict[str, Any]:
    answer: dict[str, Any] = {"model": ErrorBody, "description": description}
    return answer | {"headers": RETRY_AFTER} if status in (429, 503) else answer


def answers(when: dict[int, str]) -> Answers:
    """`responses=` for a route: each status it gives with the error body, and when."""
    return {status: _answer(status, text) for status, text in when.items()}


UNAVAILABLE_DATABASE = "The database is unavailable (down, locked): retry after Retry-After seconds"
REDIS_REFUSED = (
    "Redis refused the connection (a wrong password, a database it does not have): a "
    "configuration error, which a retry repeats until TAGFLOW_REDIS_URL or Redis is fixed"
)
TOO_LARGE = "The body is over TAGFLOW_MAX_BODY_BYTES, refused before it is read"
TOO_LARGE_UNASKED = f"{TOO_LARGE} (this operation takes no body)"
INVALID = "The request is not valid: `detail` lists what is wrong, or says it"


def document_answers(router: APIRouter) -> None:
    """Add to each operation of `router` the error answers that follow from its dependencies,
    after any reason its route gives for the same status (so the 403 ends with the roles).
    Run once per router: the routers are the modules', and every app includes them as they
    are (a second run would say each reason twice)."""
    for route in router.routes:
        if not isinstance(route, APIRoute):
            continue
        route.responses = dict(route.responses)  # its own: routes may share a declaration
        if (roles := roles_checked(route.dependant)) is not None:
            _add(route, 401, "No API key, or one not in force")
            _add(route, 403, f"A key of another role: this takes {roles_taken(roles)} keys")
        if _depends_on(route.dependant, get_session):
            _add(route, 503, UNAVAILABLE_DATABASE)
        # The bound is the middleware's, before any route: an operation that takes no body
        # refuses one over it all the same.
        _add(route, 413, TOO_LARGE if route.body_field is not None else TOO_LARGE_UNASKED)
        if route.body_field is not None or get_flat_params(route.dependant):
            route.responses.setdefault(422, {"model": InvalidRequest, "description": INVALID})


def _add(route: APIRoute, status: int, reason: str) -> None:
    declared = route.responses.get(status)
    if declared is None:
        route.responses[status] = _answer(status, reason)
    else:
        route.responses[status] = {
            **declared,
            "description": f"{declared['description']}. {reason}",
        }


def _depends_on(dependant: Dependant, call: Callable[..., Any]) -> bool:
    """Whether `call` is among `dependant`'s dependencies, at any depth."""
    return any(d.call is call or _depends_on(d, call) for d in dependant.dependencies)
