"""Pytest plugin: real Redis, PostgreSQL and a Twilio API mock, started once per test session.

The servers themselves are gateway/simulator/servers.py (the benchmark starts them too); a server
that does not come up fails the tests that need it with the tail of its log.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import count
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.simulator import servers
from gateway.simulator.servers import (
    REDIS_START_SECONDS,
    ServerFailed,
    free_port,
    postgres_bin_dir,
    postgres_server,
    redis_server,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TWILIO_OAI = REPO_ROOT.parent / "shared" / "twilio-oai" / "twilio_api_v2010.json"
PRISM = REPO_ROOT / "node_modules" / ".bin" / "prism"

# Prism parses the whole 2010 document (about 2 MB of JSON) before it listens.
PRISM_START_SECONDS = 90.0

# Re-exported for the tests that start servers of their own.
__all__ = ["REDIS_START_SECONDS", "free_port", "postgres_server", "redis_server"]


@contextlib.contextmanager
def reported() -> Iterator[None]:
    """A server that did not start fails the test with its log tail, not a traceback."""
    try:
        yield
    except ServerFailed as exc:
        pytest.fail(str(exc), pytrace=False)


class ServerProcess(servers.ServerProcess):
    """A server started by a test: one that does not come up fails the test with its log tail."""

    def wait_until_ready(self, is_ready: Callable[[], bool], timeout: float) -> float:
        with reported():
            return super().wait_until_ready(is_ready, timeout)


T = TypeVar("T")


# --- Redis -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Redis server: GATEWAY_TEST_REDIS_URL, or a redis-server started for the session."""
    given = os.environ.get("GATEWAY_TEST_REDIS_URL")
    if given:
        yield given
        return
    if shutil.which("redis-server") is None:
        pytest.fail(
            "redis-server was not found on PATH. The tests need a real Redis: install it "
            "(`apt-get install redis-server`; .ci/run does) or set GATEWAY_TEST_REDIS_URL.",
            pytrace=False,
        )
    with reported(), redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


# --- Twilio API mock (Stoplight Prism) ---------------------------------------------------------


def _http_answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=1.0)
    except httpx.HTTPError:
        return False
    return True


@pytest.fixture(scope="session")
def twilio_mock_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a Prism mock that checks requests against Twilio's own OpenAPI document."""
    spec = Path(os.environ.get("GATEWAY_TWILIO_OAI") or DEFAULT_TWILIO_OAI)
    if not spec.is_file():
        pytest.fail(
            f"Twilio's OpenAPI document was not found at {spec}; it lives in shared/twilio-oai "
            "beside the repository (or set GATEWAY_TWILIO_OAI).",
            pytrace=False,
        )
    if not PRISM.exists():
        pytest.fail(
            f"{PRISM} is missing: run `npm ci` (or `make install`) to install Stoplight Prism.",
            pytrace=False,
        )
    workdir = tmp_path_factory.mktemp("prism")
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    server = ServerProcess(
        "prism",
        [
            str(PRISM),
            "mock",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--errors",
            str(spec),
        ],
        workdir / "prism.log",
        cwd=REPO_ROOT,
    )
    try:
        with reported():
            server.wait_until_ready(lambda: _http_answers(base_url), PRISM_START_SECONDS)
        yield base_url
    finally:
        server.stop()


# --- PostgreSQL --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL database: GATEWAY_TEST_POSTGRES_URL, or a throw-away cluster for the session."""
    given = os.environ.get("GATEWAY_TEST_POSTGRES_URL")
    if given:
        yield given
        return
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        message = (
            "PostgreSQL server binaries were not found (/usr/lib/postgresql/*/bin): install "
            "postgresql-15 (.ci/run does) or set GATEWAY_TEST_POSTGRES_URL."
        )
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)

    with reported(), postgres_server() as url:
        yield url


# --- The database the suite runs on --------------------------------------------------------------
#
# `pytest --database=postgresql` (or GATEWAY_TEST_DATABASE=postgresql) runs every test that uses
# the `settings` fixture on a database of its own on the session's PostgreSQL server: a copy of a
# template that already has the migrations applied (CREATE DATABASE ... TEMPLATE), dropped after
# the test. The default is a SQLite file per test. `make test` runs the suite both ways.

DATABASE_KINDS = ("sqlite", "postgresql")
TEMPLATE_DATABASE = "gateway_template"

# A test none of whose fixtures reaches `database_kind` (`settings`, `suite_database_url`,
# `new_database` and everything built on them do) runs the same whichever database the pass is
# for: it runs once, in the SQLite pass, and the PostgreSQL pass deselects it (tests/conftest.py).
DATABASE_INDEPENDENT = pytest.StashKey[bool]()


def uses_suite_database(item: pytest.Item) -> bool:
    """Whether a test's fixtures (its signature, usefixtures, autouse) reach the suite's database."""
    return "database_kind" in getattr(item, "fixturenames", ())


def refuse_if_classified_database_independent(request: pytest.FixtureRequest) -> None:
    """Fail a test that reaches the suite's database only at run time (getfixturevalue): the
    PostgreSQL pass, which reads signatures, would have deselected it."""
    if request.node.stash.get(DATABASE_INDEPENDENT, False):
        pytest.fail(
            f"{request.node.nodeid} asks for the suite's database at run time but names no "
            "database fixture in its signature, so the PostgreSQL pass would not run it: add "
            "`settings` (or `database_kind`) to the signature of the test or of its fixture.",
            pytrace=False,
        )


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--database",
        choices=DATABASE_KINDS,
        default=os.environ.get("GATEWAY_TEST_DATABASE") or "sqlite",
        help="the database the tests run on (default: $GATEWAY_TEST_DATABASE or sqlite)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that do not reach the suite's database (subprocess servers without it, Prism,
    Chromium on fakes, pure functions, the migrations' own databases) run once: in the SQLite
    pass; the PostgreSQL pass deselects them (`uses_suite_database`)."""
    independent = [item for item in items if not uses_suite_database(item)]
    for item in independent:
        item.stash[DATABASE_INDEPENDENT] = True
    if config.getoption("--database") != "sqlite" and independent:
        config.hook.pytest_deselected(items=independent)
        items[:] = [item for item in items if uses_suite_database(item)]


def pytest_report_header(config: pytest.Config) -> str:
    return f"database: {config.getoption('--database')}"


@pytest.fixture(scope="session")
def database_kind(request: pytest.FixtureRequest) -> str:
    """`sqlite` or `postgresql`: what the `settings` fixture's database is."""
    kind: str = request.config.getoption("--database")
    return kind


def in_own_thread(work: Callable[[], T]) -> T:
    """Run blocking set-up (which may start an event loop) away from the test's event loop."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(work).result()


class PostgresDatabases:
    """Creates and drops databases on one PostgreSQL server (the admin URL's)."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self._numbers = count(1)

    def url(self, name: str) -> str:
        """The URL of database `name` on the same server, as the same user."""
        return make_url(self.admin_url).set(database=name).render_as_string(hide_password=False)

    def execute(self, *statements: str) -> None:
        """Statements outside a transaction (CREATE/DROP DATABASE need that)."""

        async def run() -> None:
            engine = create_async_engine(self.admin_url, isolation_level="AUTOCOMMIT")
            try:
                async with engine.connect() as connection:
                    for statement in statements:
                        await connection.execute(text(statement))
            finally:
                await engine.dispose()

        in_own_thread(lambda: asyncio.run(run()))

    def create(self, template: str = "template0") -> str:
        """A new database copied from `template` (template0: empty); returns its name."""
        name = f"gateway_test_{os.getpid()}_{next(self._numbers)}"
        # FILE_COPY (PostgreSQL 15+) copies a small database about 3x faster than WAL_LOG.
        self.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}" STRATEGY FILE_COPY')
        return name

    def drop(self, name: str) -> None:
        """Drop a database, ending any connection a test left open to it."""
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres_databases(postgres_url: str) -> PostgresDatabases:
    """Makes databases on the session's PostgreSQL server."""
    return PostgresDatabases(postgres_url)


@pytest.fixture(scope="session")
def migrated_postgres_template(postgres_databases: PostgresDatabases) -> Iterator[str]:
    """A database with every migration applied, to copy for each test; its name."""
    from core.platform.migrate import upgrade_database

    postgres_databases.drop(TEMPLATE_DATABASE)
    postgres_databases.execute(f'CREATE DATABASE "{TEMPLATE_DATABASE}" TEMPLATE template0')
    url = postgres_databases.url(TEMPLATE_DATABASE)
    in_own_thread(lambda: asyncio.run(upgrade_database(url)))
    yield TEMPLATE_DATABASE
    postgres_databases.drop(TEMPLATE_DATABASE)


@pytest.fixture
def new_postgres_database(postgres_databases: PostgresDatabases) -> Iterator[Callable[..., str]]:
    """Makes PostgreSQL databases for this test (empty, or a copy of `template`): their URLs."""
    made: list[str] = []

    def make(template: str = "template0") -> str:
        made.append(postgres_databases.create(template))
        return postgres_databases.url(made[-1])

    yield make
    for name in made:
        postgres_databases.drop(name)


@pytest.fixture
def new_database(
    request: pytest.FixtureRequest, database_kind: str, tmp_path: Path
) -> Callable[[], str]:
    """Makes empty databases of the suite's kind for this test: their URLs."""
    refuse_if_classified_database_independent(request)
    numbers = count(1)

    def make() -> str:
        if database_kind == "postgresql":
            factory: Callable[..., str] = request.getfixturevalue("new_postgres_database")
            return factory()
        return f"sqlite+aiosqlite:///{tmp_path / f'database-{next(numbers)}.db'}"

    return make


@pytest.fixture(scope="session")
def migrated_sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file with every migration applied, to copy for each test (a copy takes about a
    millisecond, replaying the migrations about a tenth of a second)."""
    from core.platform.migrate import upgrade_database

    template = tmp_path_factory.mktemp("sqlite-template") / "gateway.db"
    in_own_thread(lambda: asyncio.run(upgrade_database(f"sqlite+aiosqlite:///{template}")))
    return template


@pytest.fixture
def suite_database_url(request: pytest.FixtureRequest, database_kind: str, tmp_path: Path) -> str:
    """The database of the `settings` fixture: a copy of a migrated template, a SQLite file or a
    PostgreSQL database. tests/core/platform/test_migrate.py replays the migrations themselves."""
    refuse_if_classified_database_independent(request)
    if database_kind == "postgresql":
        template: str = request.getfixturevalue("migrated_postgres_template")
        factory: Callable[..., str] = request.getfixturevalue("new_postgres_database")
        return factory(template)
    copy = tmp_path / "gateway.db"
    shutil.copyfile(request.getfixturevalue("migrated_sqlite_template"), copy)
    return f"sqlite+aiosqlite:///{copy}"
