"""Fixtures for the reference cabinet: an app on a temporary SQLite file, a settable clock, and
an HTTP client that signs like a third party would (its own HMAC, not the reference's signer)."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Generator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from argon2 import PasswordHasher
from fastapi import FastAPI

from cabinet_reference import create_app
from cabinet_reference.importer import import_csv
from cabinet_reference.passwords import Passwords
from cabinet_reference.store import Store

SECRET = "0123456789abcdef0123456789abcdef"
PREFIX = "/recovery/v1"
BASE_URL = "http://cabinet.test"
# The §11 worked example's moment: 2026-01-01T00:00:00Z.
EXAMPLE_TIMESTAMP = 1767225600
DEMO_CSV = Path(__file__).resolve().parents[2] / "gateway" / "demo_accounts.csv"
KNOWN = "1000234528"
OTHER = "1000234517"
UNKNOWN = "1999999999"
DISABLED = "1000234599"
INITIAL_PASSWORD = "initial-secret-1"

FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


@dataclass
class Clock:
    """A clock the tests move by hand."""

    now: datetime = field(default_factory=lambda: datetime.fromtimestamp(EXAMPLE_TIMESTAMP, UTC))

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        """Move the clock forward."""
        self.now += delta

    def timestamp(self) -> int:
        """Now as §11's X-EIRC-Timestamp."""
        return int(self.now.timestamp())


def signature(secret: str, timestamp: str, method: str, target: bytes, body: bytes) -> str:
    """§11 written out independently of cabinet_reference.signing."""
    message = timestamp.encode() + b"\n" + method.encode() + b"\n" + target + b"\n" + body
    return "v1=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signed_headers(
    method: str, target: str | bytes, body: bytes = b"", *, timestamp: int, secret: str = SECRET
) -> dict[str, str]:
    """The two §11 headers for a request."""
    raw = target.encode() if isinstance(target, str) else target
    return {
        "X-EIRC-Timestamp": str(timestamp),
        "X-EIRC-Signature": signature(secret, str(timestamp), method, raw, body),
    }


def compact(body: dict[str, object]) -> bytes:
    """A body as the gateway sends it: compact JSON, non-ASCII escaped."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=True).encode()


def password_body(
    reference: str = "r-5f1c2a9e",
    password: str = "k7mz2p9rbt",  # noqa: S107
    expires_at: str = "2026-01-01T01:00:00Z",
    channel: str = "voice",
) -> dict[str, object]:
    """A §11 PUT body."""
    return {
        "password": password,
        "expires_at": expires_at,
        "must_change": True,
        "channel": channel,
        "reference": reference,
    }


class SignedAuth(httpx.Auth):
    """Signs every request the client sends with the bytes and target it actually sends."""

    def __init__(self, clock: Clock, secret: str = SECRET) -> None:
        self.clock = clock
        self.secret = secret

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers.update(
            signed_headers(
                request.method,
                request.url.raw_path,
                request.content,
                timestamp=self.clock.timestamp(),
                secret=self.secret,
            )
        )
        yield request


@dataclass
class Cabinet:
    """The app under test with its store, clock and two clients (signed API, browser-like)."""

    app: FastAPI
    store: Store
    clock: Clock
    api: httpx.AsyncClient
    raw: httpx.AsyncClient

    async def put_password(
        self, account: str = KNOWN, body: dict[str, object] | None = None, key: str | None = None
    ) -> httpx.Response:
        """A signed §11 PUT; the Idempotency-Key is the body's reference unless given."""
        payload = body if body is not None else password_body()
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": key if key is not None else str(payload["reference"]),
        }
        return await self.api.put(
            f"{PREFIX}/accounts/{account}/temporary-password",
            content=compact(payload),
            headers=headers,
        )


@pytest.fixture
def clock() -> Clock:
    """The cabinet's clock, at the worked example's timestamp."""
    return Clock()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """A fresh SQLite file for the cabinet."""
    return tmp_path / "cabinet.db"


@pytest.fixture
def app(db_path: Path, clock: Clock) -> FastAPI:
    """The reference cabinet with the demo accounts (one known password) and a disabled account."""
    application = create_app(db_path, SECRET, clock=clock, hasher=FAST_HASHER)
    store: Store = application.state.store
    import_csv(store, DEMO_CSV, Passwords(FAST_HASHER), initial_password=INITIAL_PASSWORD)
    with store.transaction() as connection:
        store.upsert_account(
            connection,
            DISABLED,
            "closed.acc",
            "Закрытый Счёт",
            ["+7 900 000-00-00"],
            None,
            "disabled",
            FAST_HASHER.hash(INITIAL_PASSWORD),
        )
    return application


@pytest.fixture
async def cabinet(app: FastAPI, clock: Clock) -> AsyncIterator[Cabinet]:
    """The app with a signing API client and an unsigned (browser) client."""
    transport = httpx.ASGITransport(app=app)
    async with (
        httpx.AsyncClient(transport=transport, base_url=BASE_URL, auth=SignedAuth(clock)) as api,
        httpx.AsyncClient(transport=transport, base_url=BASE_URL) as raw,
    ):
        yield Cabinet(app, app.state.store, clock, api, raw)
