"""Maps domain errors to HTTP responses, in one place."""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.api.deps import refusal_before_body, refusals_of
from service.db import is_outage
from service.errors import (
    ArtifactError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    OverloadedError,
    RefusedError,
    TagflowError,
    UnavailableError,
)
from service.logs import RequestRefusals

log = logging.getLogger(__name__)

STATUS = {
    NotFoundError: 404,
    ConflictError: 409,
    InvalidInputError: 422,
    ArtifactError: 409,
    UnavailableError: 503,
    RefusedError: 500,
}


DATABASE_RETRY_AFTER_S = 5  # a restart or failover takes seconds


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    status = next((code for cls, code in STATUS.items() if isinstance(exc, cls)), 500)
    # Every 503 says when to retry: the schema promises it (service/api/answers.py).
    retry = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, UnavailableError) else {}
    if isinstance(exc, OverloadedError):
        # Expected under a burst, counted in /metrics: a warning, not an error.
        refusals_of(request).refused(logging.WARNING, "overloaded", f"refused: {exc}")
    elif status >= 500:
        kind = type(exc).__name__
        refusals_of(request).refused(logging.ERROR, f"{kind}: {exc}", f"domain error: {exc}")
    extra = exc.extra if isinstance(exc, ConflictError) else {}
    return JSONResponse({**extra, "detail": str(exc)}, status_code=status, headers=retry)


class AsciiJSONResponse(JSONResponse):
    """JSON with every non-ASCII character escaped: a 422 echoes the input it refused, and a
    lone surrogate in it ("\\ud800", valid JSON) cannot be encoded as UTF-8, which turned the
    422 into a 500."""

    def render(self, content: Any) -> bytes:
        text = json.dumps(_finite(content), ensure_ascii=True, separators=(",", ":"))
        return text.encode("ascii")


def _finite(value: Any) -> Any:
    """`value` with NaN and the infinities as strings: Python's json module reads and writes
    them, but they are not JSON, and a strict parser (JavaScript's, Go's) refuses the whole
    body when a 422 echoes {"title": NaN}."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


# A 422 shows the input it refused, up to this many characters: a 20,000-character comment
# came back whole.
ECHO_CHARS = 200


def _shown_input(value: Any) -> Any:
    """A refused input as a 422 shows it: short ones whole, long ones cut, saying so."""
    if isinstance(value, str) and len(value) > ECHO_CHARS:
        return f"{value[:ECHO_CHARS]}... ({len(value)} characters)"
    if isinstance(value, dict | list) and len(text := json.dumps(value, default=str)) > ECHO_CHARS:
        return f"{text[:ECHO_CHARS]}... ({len(text)} characters of JSON)"
    return value


async def _invalid_request(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    if refused := await refusal_before_body(request):  # a body that is not JSON, say
        return await http_exception_handler(request, refused)
    errors = jsonable_encoder(exc.errors())
    for error in errors:
        if "input" in error:
            error["input"] = _shown_input(error["input"])
    return AsciiJSONResponse({"detail": errors}, status_code=422)


# What FastAPI's JSON decoding raised, for the bodies it answers with a bare 400 "There was
# an error parsing the body" (only a JSONDecodeError becomes its 422): said as a 422 too.
_UNPARSABLE = (
    (UnicodeDecodeError, "the body is not UTF-8 text (JSON bodies are UTF-8)"),
    (RecursionError, "the JSON body is nested too deeply"),
    (ValueError, "the JSON body holds a value Python cannot read (e.g. a number over 4300 digits)"),
)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and exc.__cause__ is not None:
        if refused := await refusal_before_body(request):
            return await http_exception_handler(request, refused)
        for kind, detail in _UNPARSABLE:
            if isinstance(exc.__cause__, kind):
                return JSONResponse({"detail": detail}, status_code=422)
    return await http_exception_handler(request, exc)


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    """The database down, locked, timing out or without tagflow's tables: a 503 to retry, with
    a line in the log per reason and minute (each request's traceback flooded it during an
    outage). Any other database error is unexpected."""
    if not is_outage(exc):
        return await _unexpected(request, exc)
    cause = getattr(exc, "orig", None) or exc
    reason = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    refusals_of(request).refused(
        logging.ERROR,
        f"database: {type(cause).__name__}",  # one outage, whichever table a route reads
        f"database unavailable for {request.method} {request.url.path}: {reason}",
    )
    return JSONResponse(
        {"detail": "the database is unavailable; try again shortly"},
        status_code=503,
        headers={"Retry-After": str(DATABASE_RETRY_AFTER_S)},
    )


async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return JSONResponse({"detail": "internal error; it has been logged"}, status_code=500)


def install(app: FastAPI) -> None:
    app.state.refusals = RequestRefusals(log)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(TagflowError, _domain_error)
    app.add_exception_handler(SQLAlchemyError, _database_error)
    app.add_exception_handler(Exception, _unexpected)
