"""Generated input on every operation of the OpenAPI schema (schemathesis): the API answers
bad input with a 4xx, never a 500, on SQLite and PostgreSQL. The issue asks for "never a 500";
this is the check that found the three ways it did not hold (ids past PostgreSQL's INTEGER,
an RQ job id of other characters, and NUL or a lone surrogate in text, which also blocked the
write-behind log)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from sqlalchemy.engine import Engine

from service.api.main import create_app
from service.config import Settings
from service.ml.training import TrainResult
from tests.conftest import auth, live_server, register_promoted


@pytest.fixture
def api_schema(
    make_settings: Callable[..., Settings],
    database_url: str,
    engine: Engine,
    shared_result: TrainResult,
) -> Iterator[schemathesis.BaseSchema]:
    """The schema of the real app, served by uvicorn on each database."""
    app_settings = make_settings(database_url=database_url)
    register_promoted(engine, app_settings, shared_result)
    with live_server(create_app(app_settings)) as url:
        yield schemathesis.openapi.from_url(f"{url}/openapi.json")


def test_no_operation_answers_500(api_schema: schemathesis.BaseSchema) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 30
    for operation in operations:
        fuzz(operation)


def fuzz(operation: schemathesis.APIOperation) -> None:
    """25 generated cases for one operation, the same ones every run (derandomize): a failure
    here is a regression, reproducible from its output."""

    @settings(
        max_examples=25,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy())
    def call(case: schemathesis.Case) -> None:
        case.call_and_validate(headers=auth("admin"), checks=[not_a_server_error])

    call()
