"""Fuzzing the HTTP API from its own OpenAPI schema (schemathesis), seeded and bounded.

Every request the schema's operations generate (odd query values, missing or malformed fields,
wrong types) must get an answer that is not a server error, with a JSON body for errors. The
run is derandomised and small; ``VITRINA_FUZZ_EXAMPLES=500`` runs it longer. A finding becomes a
regression test in test_errors.py.
"""
from __future__ import annotations

import os
import warnings

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

from tests.serving.conftest import Runs, serve_settings
from vitrina.serving.app import create_app
from vitrina.serving.model import LoadedModel

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is not installed (pip install -e .[dev])")
EXAMPLES = int(os.environ.get("VITRINA_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def client(runs: Runs, loaded: LoadedModel, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    app = create_app(serve_settings(runs.main, tmp_path_factory.mktemp("fuzz")), loaded)
    with TestClient(app, raise_server_exceptions=False) as test_client:  # the lifespan starts the batcher and the log
        yield test_client


def operations(client: TestClient) -> list:
    schema = schemathesis.openapi.from_dict(client.get("/openapi.json").json())
    return [result.ok() for result in schema.get_all_operations()]


def test_no_request_the_schema_allows_is_a_server_error(client: TestClient) -> None:
    failures: list[str] = []
    for operation in operations(client):

        @FUZZ
        @given(case=operation.as_strategy())
        def run(case) -> None:  # type: ignore[no-untyped-def]
            kwargs = case.as_transport_kwargs(base_url=str(client.base_url))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # httpx's per-request cookies
                response = client.request(**kwargs)
            if response.status_code >= 500 and response.status_code != 503:
                failures.append(f"{case.method} {case.formatted_path} {kwargs.get('params')}: {response.status_code} {response.text[:200]}")
            elif response.status_code >= 400 and not response.headers.get("content-type", "").startswith("application/json"):
                failures.append(f"{case.method} {case.formatted_path}: {response.status_code} is not JSON: {response.text[:200]}")

        run()
    assert failures == []
