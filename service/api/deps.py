"""All request dependencies, as `Annotated` types: state, session, caller role, queues.

Everything that does no I/O is `async def`, the role checks included: FastAPI runs a plain
`def` dependency in its thread pool, and those two hops per request were 7% of the time the
API process held the GIL under load.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Path, Request, status
from fastapi.dependencies.models import Dependant
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel import Session

from service.api.state import AppState
from service.api_keys import KeyRing, fingerprint
from service.config import Caller, Role, Settings
from service.logs import RequestRefusals
from service.ml.serving import Predictor
from service.tags import TagSet


async def get_state(request: Request) -> AppState:
    return request.app.state.tagflow


StateDep = Annotated[AppState, Depends(get_state)]


async def get_settings(state: StateDep) -> Settings:
    return state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_session(state: StateDep) -> Iterator[Session]:
    with Session(state.engine, expire_on_commit=False) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


async def get_predictor(state: StateDep) -> Predictor:
    return state.predictor


PredictorDep = Annotated[Predictor, Depends(get_predictor)]


async def get_tags(state: StateDep) -> TagSet:
    return state.tags


TagsDep = Annotated[TagSet, Depends(get_tags)]


async def get_keys(state: StateDep) -> KeyRing:
    """The API keys in force (also who holds a personal one)."""
    return state.keys


KeysDep = Annotated[KeyRing, Depends(get_keys)]

_bearer = HTTPBearer(auto_error=False)


def caller_of(request: Request, credentials: HTTPAuthorizationCredentials | None) -> Caller:
    """Who holds the key in `Authorization: Bearer <key>`; 401 when missing or unknown."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing API key: send Authorization: Bearer <key>",
            headers={"WWW-Authenticate": "Bearer"},
        )
    caller = request.app.state.tagflow.keys.lookup(credentials.credentials)
    if caller is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "unknown API key", headers={"WWW-Authenticate": "Bearer"}
        )
    return caller


def caller_with_role(
    request: Request, credentials: HTTPAuthorizationCredentials | None, roles: tuple[Role, ...]
) -> Caller:
    """The caller, if its key has one of `roles` (admin has them all); 401 or 403 if not."""
    caller = caller_of(request, credentials)
    if caller.role is not Role.ADMIN and caller.role not in roles:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, f"this key's role ({caller.role.value}) may not do this"
        )
    return caller


# The roles each key check made by `allow` lets through, for `refusal_before_body`.
_ROLES_OF_CHECK: dict[Callable[..., Any], tuple[Role, ...]] = {}


def allow(*roles: Role):  # type: ignore[no-untyped-def]
    """A dependency that lets only `roles` (and admin) through; others get 403."""

    # One node that reads the keys off the app, not a chain through the settings and state
    # dependencies: with the chain, FastAPI's handling of POST /predict took about 140 us of
    # CPU per request in-process, with this about 95 (session 7's machine).
    async def check(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Caller:
        return caller_with_role(request, credentials, roles)

    _ROLES_OF_CHECK[check] = roles
    return check


def roles_checked(dependant: Dependant) -> tuple[Role, ...] | None:
    """The roles the key check among `dependant`'s dependencies lets through; None if the
    operation checks no key."""
    for dependency in dependant.dependencies:
        if dependency.call in _ROLES_OF_CHECK:
            return _ROLES_OF_CHECK[dependency.call]
        if (roles := roles_checked(dependency)) is not None:
            return roles
    return None


async def refusal_before_body(request: Request) -> HTTPException | None:
    """The 401 or 403 the operation's key check gives this request; None if the key passes
    or the operation checks none.

    FastAPI reads and parses a JSON body before it runs any dependency, the key check
    included, so a body that is not JSON was answered with its 422 (or 400) to a caller
    with no key. The error handlers ask this first: an unauthenticated caller learns nothing
    about what it sent, and a request that passes pays nothing for it."""
    dependant = getattr(request.scope.get("route"), "dependant", None)
    roles = roles_checked(dependant) if isinstance(dependant, Dependant) else None
    if roles is None:
        return None
    try:
        caller_with_role(request, await _bearer(request), roles)
    except HTTPException as refused:
        return refused
    return None


def roles_taken(roles: tuple[Role, ...]) -> str:
    """The roles a key check lets through, admin last, as the API's schema names them:
    `client, reviewer or admin`."""
    names = [role.value for role in roles if role is not Role.ADMIN] + [Role.ADMIN.value]
    return " or ".join(filter(None, [", ".join(names[:-1]), names[-1]]))


async def get_key_id(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The request's key by its fingerprint (as /metrics names it), for per-key quotas; use
    it after a key check, which refuses a request without a key first."""
    return fingerprint(credentials.credentials) if credentials else ""


KeyId = Annotated[str, Depends(get_key_id)]


def refusals_of(request: Request) -> RequestRefusals:
    """The log of refused requests (once per reason and minute), kept on the app."""
    return request.app.state.refusals


async def get_refusals(request: Request) -> RequestRefusals:
    return refusals_of(request)


RefusalsDep = Annotated[RequestRefusals, Depends(get_refusals)]


# The caller behind the request's key, let through only with one of these roles.
ClientKey = Annotated[Caller, Depends(allow(Role.CLIENT))]
ReviewerKey = Annotated[Caller, Depends(allow(Role.REVIEWER))]
AdminKey = Annotated[Caller, Depends(allow())]
AnyKey = Annotated[Caller, Depends(allow(Role.CLIENT, Role.REVIEWER))]
MetricsKey = Annotated[Caller, Depends(allow(Role.METRICS))]


# Path parameters, bounded so a value neither store can take is a 422, not a database error:
# row ids are INTEGER columns (32-bit on PostgreSQL), and RQ job ids are letters, digits,
# dashes and underscores.
RowId = Annotated[int, Path(ge=1, le=2**31 - 1)]
JobId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,128}$")]
