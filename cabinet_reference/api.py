"""The §11 endpoints: thin routes behind one signature check."""

from __future__ import annotations

import json
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from cabinet_reference.config import CabinetConfig
from cabinet_reference.service import Directory, Outcome, TemporaryPasswordRequest
from cabinet_reference.signing import request_target, verify


class ApiError(Exception):
    """A refusal with its status and JSON body; one handler renders it."""

    def __init__(self, status: int, error: str) -> None:
        super().__init__(error)
        self.status = status
        self.error = error


def _single_header(request: Request, name: str) -> str | None:
    values = request.headers.getlist(name)
    return values[0] if len(values) == 1 else None


async def _read_body(request: Request, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def _wire_target(request: Request) -> bytes:
    # The path as it came over the wire, still percent-encoded: the decoded `path` would change
    # what was signed (`%2F` and `/` differ on the wire).
    raw_path = request.scope.get("raw_path")
    if not raw_path:
        raw_path = quote(request.scope["path"], safe="/:@!$&'()*+,;=-._~").encode("ascii")
    return request_target(raw_path, request.scope.get("query_string", b""))


async def signed_body(request: Request) -> bytes:
    """The request body, once the §11 signature and timestamp have been checked (else 401)."""
    config: CabinetConfig = request.app.state.config
    body = await _read_body(request, config.max_body_bytes)
    timestamp = _single_header(request, "x-eirc-timestamp")
    signature = _single_header(request, "x-eirc-signature")
    if not verify(
        config.secret,
        timestamp,
        signature,
        request.method,
        _wire_target(request),
        body,
        now=config.clock().timestamp(),
        max_skew_seconds=config.max_clock_skew_seconds,
    ):
        raise ApiError(401, "unauthorized")
    return body


SignedBody = Annotated[bytes, Depends(signed_body)]


def _directory(request: Request) -> Directory:
    directory: Directory = request.app.state.directory
    return directory


DirectoryDep = Annotated[Directory, Depends(_directory)]


def _render(outcome: Outcome) -> Response:
    if outcome.body is None:
        return Response(status_code=outcome.status)
    return JSONResponse(outcome.body, status_code=outcome.status)


def build_router(prefix: str) -> APIRouter:
    """The §11 routes under the base URL's path (e.g. `/recovery/v1`)."""
    router = APIRouter(prefix=prefix)

    @router.get("/accounts/{account_number}")
    def get_account(account_number: str, _: SignedBody, directory: DirectoryDep) -> Response:
        """§11 look-up: 200 with the account, or 404."""
        found = directory.look_up(account_number)
        if found is None:
            return JSONResponse({"error": "not_found"}, status_code=404)
        return JSONResponse(found)

    @router.put("/accounts/{account_number}/temporary-password")
    def put_temporary_password(
        account_number: str,
        body: SignedBody,
        directory: DirectoryDep,
        idempotency_key: Annotated[str | None, Header()] = None,
    ) -> Response:
        """§11: store a temporary password, at most once per Idempotency-Key."""
        try:
            parsed = json.loads(body)
            request = TemporaryPasswordRequest.model_validate(parsed)
        except (ValueError, ValidationError) as error:
            raise ApiError(400, "bad_request") from error
        if idempotency_key != request.reference:
            raise ApiError(400, "bad_request")
        fingerprint = directory.fingerprint(account_number, parsed)
        return _render(directory.set_temporary_password(account_number, request, fingerprint))

    return router
