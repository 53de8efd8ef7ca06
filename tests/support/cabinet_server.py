"""The reference cabinet (cabinet_reference/, DESIGN §11) as a real HTTP server on loopback
(gateway/simulator/servers.py).

A pytest plugin: `cabinet` gives each test a fresh cabinet (its own SQLite file, filled from the
suite's accounts) served by uvicorn in a thread, and `cabinet_gateway` the gateway with
GATEWAY_DIRECTORY=http pointed at it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from argon2 import PasswordHasher, profiles
from redis.asyncio import Redis

from cabinet_reference.passwords import Passwords
from core.platform.settings import DirectoryKind, Settings
from gateway.app import create_app
from gateway.simulator import servers
from gateway.simulator.servers import INITIAL_PASSWORD, Cabinet, cabinet_settings
from tests.support.fakes import RecordingMessenger
from tests.support.twilio_driver import Twilio

# Re-exported for the tests that sign in on the cabinet or start one of their own.
__all__ = ["INITIAL_PASSWORD", "Cabinet", "cabinet_settings", "serve_cabinet"]

if TYPE_CHECKING:
    from tests.conftest import Gateway


@contextmanager
def serve_cabinet(workdir: Path, **tls: object) -> Iterator[Cabinet]:
    """A fresh reference cabinet over real HTTP, filled from the suite's accounts."""
    from tests.conftest import ACCOUNTS_CSV  # a plugin of tests/conftest.py: no import cycle

    # The initial passwords are hashed at Argon2's cheapest (the cabinet reads the parameters from
    # each hash): three full-cost hashes were seconds of every cabinet test's set-up.
    cheap = Passwords(PasswordHasher.from_parameters(profiles.CHEAPEST))
    with servers.serve_cabinet(workdir, ACCOUNTS_CSV, passwords=cheap, **tls) as running:
        yield running


@pytest.fixture
def cabinet(tmp_path: Path) -> Iterator[Cabinet]:
    """A fresh reference cabinet for one test."""
    with serve_cabinet(tmp_path / "cabinet") as running:
        yield running


@pytest.fixture
async def cabinet_gateway(
    settings: Settings, redis: Redis, cabinet: Cabinet
) -> AsyncIterator[Gateway]:
    """The gateway with GATEWAY_DIRECTORY=http against the reference cabinet."""
    from tests.conftest import AUTH_TOKEN, PUBLIC_BASE_URL, Gateway, seed_accounts, settled_client

    await seed_accounts(settings)  # the gateway's own tables stay, unused for look-ups
    config = cabinet_settings(settings, cabinet)
    messenger = RecordingMessenger()
    app = create_app(config, messenger=messenger)
    async with app.router.lifespan_context(app), settled_client(app) as http:
        yield Gateway(app, Twilio(http, PUBLIC_BASE_URL, AUTH_TOKEN), messenger, config, cabinet)


@pytest.fixture(params=[DirectoryKind.sql, DirectoryKind.http], ids=["sql", "cabinet"])
def either_gateway(request: pytest.FixtureRequest, settings: Settings) -> Gateway:
    """The gateway on its own tables, then against the reference cabinet: for the recovery
    paths, which must hold with either directory (tests of SQL transactions stay SQL-only).
    `settings`, which both use, is named here so that the PostgreSQL pass runs these tests."""
    name = "sql_gateway" if request.param is DirectoryKind.sql else "cabinet_gateway"
    gateway: Gateway = request.getfixturevalue(name)
    return gateway
