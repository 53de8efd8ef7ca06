"""The reference cabinet's FastAPI app: the §11 API under its prefix and the residents' pages."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

from argon2 import PasswordHasher
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cabinet_reference.api import ApiError, build_router
from cabinet_reference.config import DEFAULT_PREFIX, CabinetConfig, Clock, system_clock
from cabinet_reference.passwords import PasswordPolicy, Passwords
from cabinet_reference.service import Directory
from cabinet_reference.signin import Residents
from cabinet_reference.store import Store
from cabinet_reference.web import build_router as build_pages

log = logging.getLogger("cabinet_reference")


def create_app(
    db_path: str | Path,
    secret: str,
    *,
    prefix: str = DEFAULT_PREFIX,
    password_min_length: int = 8,
    secure_cookies: bool = False,
    clock: Clock = system_clock,
    hasher: PasswordHasher | None = None,
) -> FastAPI:
    """The app on a SQLite file; raises ValueError for a secret under 32 characters."""
    config = CabinetConfig(
        secret=secret,
        prefix=prefix,
        policy=PasswordPolicy(min_length=password_min_length),
        secure_cookies=secure_cookies,
        clock=clock,
    )
    return build_app(Store(db_path), config, Passwords(hasher))


def build_app(store: Store, config: CabinetConfig, passwords: Passwords) -> FastAPI:
    """The app from its parts (create_app for the usual case)."""
    app = FastAPI(
        title="Reference cabinet (EIRC cabinet directory API v1)",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.config = config
    app.state.store = store
    app.state.passwords = passwords
    app.state.directory = Directory(store, passwords, config)
    app.state.residents = Residents(store, passwords, config)
    app.include_router(build_router(config.prefix))
    app.include_router(build_pages())

    @app.exception_handler(ApiError)
    async def _refused(_: Request, error: ApiError) -> JSONResponse:
        return JSONResponse({"error": error.error}, status_code=error.status)

    @app.exception_handler(sqlite3.OperationalError)
    async def _busy(_: Request, error: sqlite3.OperationalError) -> JSONResponse:
        # A locked or unavailable database: nothing was committed, so the caller may retry.
        log.error("database unavailable: %s", type(error).__name__)
        return JSONResponse({"error": "unavailable"}, status_code=503, headers={"Retry-After": "1"})

    app.add_middleware(InternalErrorAsJson)
    return app


class InternalErrorAsJson:
    """A bug answers 500 `{"error": "internal"}` (JSON, as §11 promises) and is logged by type only.

    A middleware rather than an exception handler: Starlette re-raises after a handler for
    `Exception`, which would reach the server (and in-process test clients) as a crash.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as error:
            log.error("request failed: %s", type(error).__name__)
            if started:
                raise
            await JSONResponse({"error": "internal"}, status_code=500)(scope, receive, send)
