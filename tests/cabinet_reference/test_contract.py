"""The reference cabinet against docs/cabinet-api.yaml: generated requests (schemathesis) and a
table that reaches every documented status, each answer validated against the document."""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
import yaml
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate
from schemathesis import BaseSchema, GenerationMode
from schemathesis.core import NOT_SET
from schemathesis.generation.case import Case
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from cabinet_reference import create_app
from cabinet_reference.importer import import_csv
from cabinet_reference.passwords import Passwords
from tests.cabinet_reference.conftest import DEMO_CSV, FAST_HASHER, SECRET, signed_headers

DOCUMENT = Path(__file__).resolve().parents[2] / "docs" / "cabinet-api.yaml"
BASE_URL = "http://testserver/recovery/v1"
WELL_FORMED_TIMESTAMP = re.compile("[0-9]{1,12}")
WELL_FORMED = re.compile("v1=[0-9a-fA-F]{64}")


class SignRequests(requests.auth.AuthBase):
    """Signs each request schemathesis sends, over the bytes and target it really sends."""

    def __init__(self, *, always: bool = True) -> None:
        self.always = always

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        # A negative case may have broken or dropped a §11 header on purpose: that one is sent as
        # generated (and must be refused); every well-formed one is replaced by a real signature.
        timestamp = request.headers.get("X-EIRC-Timestamp", "")
        signature = request.headers.get("X-EIRC-Signature", "")
        well_formed = WELL_FORMED_TIMESTAMP.fullmatch(timestamp) and WELL_FORMED.fullmatch(
            signature
        )
        if not (self.always or well_formed):
            return request
        body = request.body or b""
        raw = body.encode() if isinstance(body, str) else body
        assert isinstance(raw, bytes)
        assert request.method is not None
        request.headers.update(
            signed_headers(request.method, request.path_url, raw, timestamp=int(time.time()))
        )
        return request


def signed_session(*, always: bool = True) -> requests.Session:
    session = requests.Session()
    session.auth = SignRequests(always=always)
    return session


def reference_app(tmp_path: Path) -> FastAPI:
    app = create_app(tmp_path / "cabinet.db", SECRET, hasher=FAST_HASHER)
    import_csv(app.state.store, DEMO_CSV, Passwords(FAST_HASHER), initial_password="x" * 12)
    return app


def test_the_document_is_valid_openapi() -> None:
    document = yaml.safe_load(DOCUMENT.read_text(encoding="utf-8"))
    validate(document)
    put = document["paths"]["/accounts/{account_number}/temporary-password"]["put"]
    get = document["paths"]["/accounts/{account_number}"]["get"]
    assert {"200", "401", "404", "429", "5XX"} <= set(get["responses"])
    assert {"204", "401", "403", "404", "409", "422", "429", "5XX"} <= set(put["responses"])
    headers = {
        parameter["$ref"].rsplit("/", 1)[1]
        for parameter in document["paths"]["/accounts/{account_number}"]["parameters"]
        + put["parameters"]
    }
    assert {"Timestamp", "Signature", "IdempotencyKey"} <= headers


# §11 answers schema-valid requests with 422 too: the cabinet's own password policy, and a key
# reused with another body (the generated references repeat across examples, on one database).
CONFIG = schemathesis.Config.from_dict(
    {
        "checks": {
            "positive_data_acceptance": {
                "expected-statuses": ["2xx", "403", "404", "409", "422", "429", "5xx"]
            }
        }
    }
)


def tie_key_to_reference(context: Any, case: Case[Any]) -> Case[Any]:
    """§11 ties Idempotency-Key to the body's reference; a generator knows nothing of that."""
    positive = case.meta is None or case.meta.generation.mode.is_positive
    if positive and isinstance(case.body, dict) and isinstance(case.body.get("reference"), str):
        case.headers["Idempotency-Key"] = case.body["reference"]
    return case


def addressable(context: Any, path_parameters: dict[str, Any]) -> bool:
    """Leave out `.` and `..`: HTTP clients remove such segments (RFC 3986 §5.2.4), so the PUT to
    account `.` arrives as `PUT …/accounts/temporary-password` (405), as the document says."""
    return path_parameters.get("account_number") not in {".", ".."}


@pytest.fixture
def cabinet_schema(tmp_path: Path) -> BaseSchema:
    """The document, served by a fresh reference cabinet in process."""
    schema = schemathesis.openapi.from_path(DOCUMENT, config=CONFIG)
    schema.app = reference_app(tmp_path)
    schema.hook("map_case")(tie_key_to_reference)
    schema.hook("filter_path_parameters")(addressable)
    return schema


# schemathesis' own pytest plugin (`from_fixture(...).parametrize()`) fails on pytest 9
# (`Function._nodeid`), so the cases come from its Python API: one strategy per operation.
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize(
    ("path", "method"),
    [
        ("/accounts/{account_number}", "GET"),
        ("/accounts/{account_number}/temporary-password", "PUT"),
    ],
)
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_the_reference_cabinet_follows_the_document(
    cabinet_schema: BaseSchema, path: str, method: str, mode: GenerationMode, data: st.DataObject
) -> None:
    operation = cabinet_schema[path][method]
    case = data.draw(operation.as_strategy(generation_mode=mode))
    # `ignored_auth` resends with the generated (random) signature header and expects a 401, but
    # every request here is signed by the session: the 401 cases are test_api_signature.py's.
    positive = mode is GenerationMode.POSITIVE
    response = case.call(session=signed_session(always=positive), base_url=BASE_URL)
    # Every generated request is signed over what was sent (any path, percent-encoded or not):
    # a 401 here would be the cabinet reading the target or body differently from the wire.
    if positive:
        assert response.status_code != 401, case.as_curl_command()
    case.validate_response(response, excluded_checks=[ignored_auth])


# -- a table that reaches every status the reference answers, each checked against the document

CONFORMANCE = [
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
WELL_FORMED_PLACEHOLDERS = {"X-EIRC-Timestamp": "1", "X-EIRC-Signature": "v1=" + "0" * 64}
GET = ("/accounts/{account_number}", "GET")
PUT = ("/accounts/{account_number}/temporary-password", "PUT")


def put_body(reference: str = "r-table-1", password: str = "k7mz2p9rbt") -> dict[str, Any]:  # noqa: S107
    return {
        "password": password,
        "expires_at": "2030-01-01T00:00:00Z",
        "must_change": True,
        "channel": "sms",
        "reference": reference,
    }


@dataclass(frozen=True)
class Row:
    """One request of the table and the status (and error) the document promises for it."""

    name: str
    operation: tuple[str, str]
    account: str
    status: int
    error: str | None = None
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    before: Callable[[FastAPI], None] | None = None


def claim(app: FastAPI) -> None:
    """Leave the table's key in progress, as a request still running would."""
    directory = app.state.directory
    with app.state.store.transaction() as connection:
        app.state.store.claim_key(
            connection,
            "r-table-1",
            directory.fingerprint(KNOWN, put_body()),
            app.state.config.clock(),
        )


def disable(app: FastAPI) -> None:
    with app.state.store.transaction() as connection:
        app.state.store.set_status(connection, KNOWN, "disabled")


def break_database(app: FastAPI) -> None:
    def locked(*_: object, **__: object) -> None:
        raise sqlite3.OperationalError("database is locked")

    app.state.store.set_temporary_password = locked


def break_code(app: FastAPI) -> None:
    def failing(*_: object, **__: object) -> None:
        raise RuntimeError("bug")

    app.state.store.set_temporary_password = failing


def already_set(app: FastAPI) -> None:
    """The same PUT, completed before."""
    directory = app.state.directory
    from cabinet_reference.service import TemporaryPasswordRequest

    request = TemporaryPasswordRequest.model_validate(put_body())
    directory.set_temporary_password(KNOWN, request, directory.fingerprint(KNOWN, put_body()))


KNOWN = "1000234528"
ROWS = [
    Row("look-up", GET, KNOWN, 200),
    Row("look-up of an unknown account", GET, "1999999999", 404, "not_found"),
    Row(
        "look-up with a malformed signature",
        GET,
        KNOWN,
        401,
        "unauthorized",
        headers={"X-EIRC-Signature": "v1=not-hex"},
    ),
    Row("temporary password", PUT, KNOWN, 204, body=put_body()),
    Row("the same PUT again", PUT, KNOWN, 204, body=put_body(), before=already_set),
    Row(
        "the same key, another body",
        PUT,
        KNOWN,
        422,
        "idempotency_mismatch",
        body=put_body(password="another-password"),
        before=already_set,
    ),
    Row("the same key in progress", PUT, KNOWN, 409, body=put_body(), before=claim),
    Row("unknown account", PUT, "1999999999", 404, "not_found", body=put_body()),
    Row("disabled account", PUT, KNOWN, 403, "disabled", body=put_body(), before=disable),
    Row("password policy", PUT, KNOWN, 422, "password_policy", body=put_body(password="short")),
    Row(
        "key not equal to the reference",
        PUT,
        KNOWN,
        400,
        "bad_request",
        body=put_body(),
        headers={"Idempotency-Key": "r-other"},
    ),
    Row(
        "body too large",
        PUT,
        KNOWN,
        413,
        "too_large",
        body=put_body() | {"padding": "x" * 20_000},
    ),
    Row(
        "unsigned PUT",
        PUT,
        KNOWN,
        401,
        "unauthorized",
        body=put_body(),
        headers={"X-EIRC-Timestamp": "yesterday"},
    ),
    Row("database locked", PUT, KNOWN, 503, "unavailable", body=put_body(), before=break_database),
    Row("a bug in the cabinet", PUT, KNOWN, 500, "internal", body=put_body(), before=break_code),
]


@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
def test_every_answer_of_the_reference_matches_the_document(
    cabinet_schema: BaseSchema, row: Row
) -> None:
    if row.before is not None:
        row.before(cabinet_schema.app)
    operation = cabinet_schema[row.operation[0]][row.operation[1]]
    headers = {**WELL_FORMED_PLACEHOLDERS}
    if row.body is not None:
        headers["Idempotency-Key"] = str(row.body["reference"])
    headers.update(row.headers)
    case = operation.Case(
        path_parameters={"account_number": row.account},
        headers=headers,
        body=row.body if row.body is not None else NOT_SET,
        media_type="application/json" if row.body is not None else None,
    )
    response = case.call(session=signed_session(always=False), base_url=BASE_URL)
    assert response.status_code == row.status, response.text
    if row.error is not None:
        assert response.json() == {"error": row.error}
    case.validate_response(response, checks=CONFORMANCE)


def test_the_table_reaches_every_status_the_document_names_for_the_reference() -> None:
    document = yaml.safe_load(DOCUMENT.read_text(encoding="utf-8"))
    documented = {
        (method.upper(), status)
        for item in document["paths"].values()
        for method, operation in item.items()
        if method in {"get", "put"}
        for status in operation["responses"]
    }
    reached = {(row.operation[1], "5XX" if row.status >= 500 else str(row.status)) for row in ROWS}
    # The reference never sheds load, so it never answers 429 (the gateway's tests cover 429).
    assert documented - reached == {("GET", "429"), ("PUT", "429"), ("GET", "5XX")}
