"""The reference cabinet (cabinet_reference/, DESIGN §11) as a real HTTP server on loopback.

A pytest plugin: `cabinet` gives each test a fresh cabinet (its own SQLite file, filled from the
suite's accounts) served by uvicorn in a thread, and `cabinet_gateway` the gateway with
GATEWAY_DIRECTORY=http pointed at it.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
import uvicorn
from pydantic import SecretStr
from redis.asyncio import Redis
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from cabinet_reference.app import create_app as create_cabinet
from cabinet_reference.importer import import_csv
from cabinet_reference.passwords import Passwords
from cabinet_reference.store import Store
from core.config import DirectoryKind, Settings
from gateway.app import create_app
from tests.support.fakes import RecordingMessenger
from tests.support.servers import free_port
from tests.support.twilio_driver import Twilio

if TYPE_CHECKING:
    from tests.conftest import Gateway

PREFIX = "/recovery/v1"
# Every account's password before any recovery: the one a recovery must revoke.
INITIAL_PASSWORD = "before-recovery-1"


@dataclass
class Cabinet:
    """A running reference cabinet: its base URL, the API's base URL and the shared secret."""

    url: str
    secret: str
    store: Store
    # While set, the API answers every request with this status (a cabinet in trouble).
    failing: list[int]

    @property
    def api_url(self) -> str:
        return self.url + PREFIX

    async def sign_in(self, account: str, password: str) -> str:
        """Sign in on the cabinet's own page as a resident would; where it leads ("" refused)."""
        async with httpx.AsyncClient(base_url=self.url, follow_redirects=False) as http:
            page = await http.get("/login")
            token = _csrf(page.text)
            answer = await http.post(
                "/login",
                data={"account_number": account, "password": password, "csrf_token": token},
            )
            return answer.headers.get("location", "") if answer.status_code in (302, 303) else ""


def _csrf(html: str) -> str:
    marker = 'name="csrf_token" value="'
    start = html.index(marker) + len(marker)
    return html[start : html.index('"', start)]


@contextmanager
def serve_cabinet(workdir: Path, **tls: object) -> Iterator[Cabinet]:
    """A fresh reference cabinet over real HTTP on 127.0.0.1, filled from the suite's accounts
    (also used by benchmarks/cabinet_latency.py)."""
    from tests.conftest import ACCOUNTS_CSV  # a plugin of tests/conftest.py: no import cycle

    workdir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_hex(24)
    database = workdir / "cabinet.db"
    csv_file = workdir / "accounts.csv"
    csv_file.write_text(ACCOUNTS_CSV, encoding="utf-8")
    store = Store(database)
    import_csv(store, csv_file, Passwords(), initial_password=INITIAL_PASSWORD)
    port = free_port()
    failing: list[int] = []
    app = create_cabinet(database, secret, prefix=PREFIX)

    async def served(scope: Scope, receive: Receive, send: Send) -> None:
        if failing and scope["type"] == "http" and scope["path"].startswith(PREFIX):
            await JSONResponse({"error": "unavailable"}, status_code=failing[0])(
                scope, receive, send
            )
            return
        await app(scope, receive, send)

    server = uvicorn.Server(
        uvicorn.Config(
            served,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="off",
            **tls,  # type: ignore[arg-type]
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        threading.Event().wait(0.025)
    assert server.started, "the reference cabinet did not start"
    try:
        scheme = "https" if tls else "http"
        yield Cabinet(f"{scheme}://127.0.0.1:{port}", secret, store, failing)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def cabinet(tmp_path: Path) -> Iterator[Cabinet]:
    """A fresh reference cabinet for one test."""
    with serve_cabinet(tmp_path / "cabinet") as running:
        yield running


def cabinet_settings(settings: Settings, cabinet: Cabinet) -> Settings:
    """The suite's settings with the cabinet as the accounts directory."""
    return settings.model_copy(
        update={
            "directory": DirectoryKind.http,
            "directory_url": cabinet.api_url,
            "directory_secret": SecretStr(cabinet.secret),
            # Loopback answers in a millisecond: a small floor keeps the tests quick.
            "directory_min_lookup_ms": 20,
        }
    )


@pytest.fixture
async def cabinet_gateway(
    settings: Settings, redis: Redis, cabinet: Cabinet
) -> AsyncIterator[Gateway]:
    """The gateway with GATEWAY_DIRECTORY=http against the reference cabinet."""
    from tests.conftest import AUTH_TOKEN, PUBLIC_BASE_URL, Gateway, seed_accounts

    await seed_accounts(settings)  # the gateway's own tables stay, unused for look-ups
    config = cabinet_settings(settings, cabinet)
    messenger = RecordingMessenger()
    app = create_app(config, messenger=messenger)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://gateway.internal"
        ) as http:
            yield Gateway(
                app, Twilio(http, PUBLIC_BASE_URL, AUTH_TOKEN), messenger, config, cabinet
            )


@pytest.fixture(params=[DirectoryKind.sql, DirectoryKind.http], ids=["sql", "cabinet"])
def either_gateway(request: pytest.FixtureRequest, settings: Settings) -> Gateway:
    """The gateway on its own tables, then against the reference cabinet: for the recovery
    paths, which must hold with either directory (tests of SQL transactions stay SQL-only).
    `settings`, which both use, is named here so that the PostgreSQL pass runs these tests."""
    name = "sql_gateway" if request.param is DirectoryKind.sql else "cabinet_gateway"
    gateway: Gateway = request.getfixturevalue(name)
    return gateway
