"""Pytest plugin: real Redis, PostgreSQL and a Twilio API mock, started once per test session.

Each server writes its log into its own temporary directory; a server that does not come up fails
the tests that need it with the tail of that log, so a CI failure explains itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import count
from pathlib import Path
from typing import NoReturn, TypeVar

import httpx
import pytest
import redis
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TWILIO_OAI = REPO_ROOT.parent / "shared" / "twilio-oai" / "twilio_api_v2010.json"
PRISM = REPO_ROOT / "node_modules" / ".bin" / "prism"

REDIS_START_SECONDS = 30.0
POSTGRES_START_SECONDS = 60.0
# Prism parses the whole 2010 document (about 2 MB of JSON) before it listens.
PRISM_START_SECONDS = 90.0
STOP_SECONDS = 15.0
LOG_TAIL_CHARS = 4000

T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def log_tail(log: Path) -> str:
    """The end of a server log, for failure messages."""
    try:
        text = log.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"(no log at {log}: {exc})"
    return text[-LOG_TAIL_CHARS:] or f"(empty log at {log})"


class ServerProcess:
    """A server started for the test session, its output captured in a log file."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        log: Path,
        *,
        cwd: Path | None = None,
        user: str | None = None,
        env: dict[str, str] | None = None,
        stop_signal: int = signal.SIGTERM,
    ) -> None:
        self.name = name
        self.log = log
        self.stop_signal = stop_signal
        with log.open("ab") as out:
            # A session of its own, so that stopping it also stops any child it forks.
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=env,
                user=user,
                group=user,
                extra_groups=[] if user else None,
                start_new_session=True,
            )

    def fail(self, problem: str) -> NoReturn:
        """Stop the server and fail with its log tail."""
        self.stop()
        pytest.fail(
            f"{self.name}: {problem}\n--- last lines of {self.log} ---\n{log_tail(self.log)}",
            pytrace=False,
        )

    def wait_until_ready(self, is_ready: Callable[[], bool], timeout: float) -> float:
        """Poll until the server answers; return the seconds it took."""
        started = time.monotonic()
        while True:
            code = self.process.poll()
            if code is not None:
                self.fail(f"exited with code {code} before it was ready")
            if is_ready():
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                self.fail(f"not ready after {timeout:.0f} s")
            time.sleep(0.2)

    def stop(self) -> None:
        """Stop the server: politely first, then for sure."""
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, self.stop_signal)
        try:
            self.process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=STOP_SECONDS)


# --- Redis -------------------------------------------------------------------------------------


def _redis_answers(port: int) -> bool:
    client = redis.Redis(
        host="127.0.0.1", port=port, socket_timeout=1.0, socket_connect_timeout=1.0
    )
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


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
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@contextlib.contextmanager
def redis_server(workdir: Path, port: int | None = None) -> Iterator[str]:
    """A throw-away redis-server on a loopback port, free unless given (to restart a server on
    the port its clients know); also used by the benchmark."""
    executable = shutil.which("redis-server")
    if executable is None:
        raise RuntimeError("redis-server is not on PATH (apt-get install redis-server)")
    port = port or free_port()
    server = ServerProcess(
        "redis-server",
        [
            executable,
            *("--port", str(port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no", "--dir", str(workdir)),
        ],
        workdir / "redis.log",
    )
    try:
        server.wait_until_ready(lambda: _redis_answers(port), REDIS_START_SECONDS)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.stop()


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
        server.wait_until_ready(lambda: _http_answers(base_url), PRISM_START_SECONDS)
        yield base_url
    finally:
        server.stop()


# --- PostgreSQL --------------------------------------------------------------------------------


def _postgres_bin_dir() -> Path | None:
    """Debian's server binaries (not on PATH), newest major version first; 15 is the target."""
    preferred = Path("/usr/lib/postgresql/15/bin")
    if (preferred / "initdb").exists():
        return preferred
    found = sorted(
        (p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")),
        key=lambda bin_dir: int(bin_dir.parent.name) if bin_dir.parent.name.isdigit() else 0,
        reverse=True,
    )
    if found:
        return found[0]
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def _postgres_answers(bin_dir: Path, port: int) -> bool:
    result = subprocess.run(
        [str(bin_dir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres"],
        check=False,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return result.returncode == 0


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL database: GATEWAY_TEST_POSTGRES_URL, or a throw-away cluster for the session."""
    given = os.environ.get("GATEWAY_TEST_POSTGRES_URL")
    if given:
        yield given
        return
    bin_dir = _postgres_bin_dir()
    if bin_dir is None:
        message = (
            "PostgreSQL server binaries were not found (/usr/lib/postgresql/*/bin): install "
            "postgresql-15 (.ci/run does) or set GATEWAY_TEST_POSTGRES_URL."
        )
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)

    with postgres_server() as url:
        yield url


@contextlib.contextmanager
def postgres_server(*, durable: bool = False) -> Iterator[str]:
    """A throw-away PostgreSQL cluster on a free loopback port (also used by the benchmark).

    `durable` keeps PostgreSQL's own fsync and commit settings, as production runs them; the
    tests turn them off (the cluster is deleted at the end anyway).
    """
    bin_dir = _postgres_bin_dir()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL server binaries were not found (/usr/lib/postgresql)")

    # initdb and postgres refuse to run as root, so as root they run as the postgres user; the
    # directory is made directly in /tmp because pytest's own tmp dirs are private to root.
    as_user = "postgres" if os.geteuid() == 0 else None
    workdir = Path(tempfile.mkdtemp(prefix="eirc-gateway-pg-", dir="/tmp" if as_user else None))
    data, sockets, log = workdir / "data", workdir / "sockets", workdir / "postgres.log"
    sockets.mkdir()
    log.touch()
    if as_user:
        for path in (workdir, sockets, log):
            shutil.chown(path, as_user, as_user)

    server: ServerProcess | None = None
    try:
        initdb = ServerProcess(
            "initdb",
            [
                str(bin_dir / "initdb"),
                "--pgdata",
                str(data),
                "--username",
                "postgres",
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ],
            log,
            cwd=workdir,
            user=as_user,
        )
        try:
            code = initdb.process.wait(timeout=POSTGRES_START_SECONDS)
        except subprocess.TimeoutExpired:
            initdb.fail(f"did not finish in {POSTGRES_START_SECONDS:.0f} s")
        if code != 0:
            initdb.fail(f"exited with code {code}")

        port = free_port()
        relaxed = (
            []
            if durable
            else [
                *("-c", "fsync=off"),
                *("-c", "synchronous_commit=off"),
                *("-c", "full_page_writes=off"),
            ]
        )
        server = ServerProcess(
            "postgres",
            [
                str(bin_dir / "postgres"),
                "-D",
                str(data),
                "-p",
                str(port),
                "-k",
                str(sockets),
                "-c",
                "listen_addresses=127.0.0.1",
                *("-c", "max_connections=200"),
                *relaxed,
            ],
            log,
            cwd=workdir,
            user=as_user,
            # SIGINT is PostgreSQL's "fast" shutdown: it does not wait for clients to leave.
            stop_signal=signal.SIGINT,
        )
        server.wait_until_ready(lambda: _postgres_answers(bin_dir, port), POSTGRES_START_SECONDS)
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/postgres"
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


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
    from core.migrate import upgrade_database

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
    from core.migrate import upgrade_database

    template = tmp_path_factory.mktemp("sqlite-template") / "gateway.db"
    in_own_thread(lambda: asyncio.run(upgrade_database(f"sqlite+aiosqlite:///{template}")))
    return template


@pytest.fixture
def suite_database_url(request: pytest.FixtureRequest, database_kind: str, tmp_path: Path) -> str:
    """The database of the `settings` fixture: a copy of a migrated template, a SQLite file or a
    PostgreSQL database. tests/core/test_migrate.py replays the migrations themselves."""
    refuse_if_classified_database_independent(request)
    if database_kind == "postgresql":
        template: str = request.getfixturevalue("migrated_postgres_template")
        factory: Callable[..., str] = request.getfixturevalue("new_postgres_database")
        return factory(template)
    copy = tmp_path / "gateway.db"
    shutil.copyfile(request.getfixturevalue("migrated_sqlite_template"), copy)
    return f"sqlite+aiosqlite:///{copy}"
