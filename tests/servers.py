"""Pytest plugin: real Redis, PostgreSQL and a Twilio API mock, started once per test session.

Each server writes its log into its own temporary directory; a server that does not come up fails
the tests that need it with the tail of that log, so a CI failure explains itself.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import httpx
import pytest
import redis

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TWILIO_OAI = REPO_ROOT.parent / "shared" / "twilio-oai" / "twilio_api_v2010.json"
PRISM = REPO_ROOT / "node_modules" / ".bin" / "prism"

REDIS_START_SECONDS = 30.0
POSTGRES_START_SECONDS = 60.0
# Prism parses the whole 2010 document (about 2 MB of JSON) before it listens.
PRISM_START_SECONDS = 90.0
STOP_SECONDS = 15.0
LOG_TAIL_CHARS = 4000


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
def redis_server(workdir: Path) -> Iterator[str]:
    """A throw-away redis-server on a free loopback port (also used by the benchmark)."""
    executable = shutil.which("redis-server")
    if executable is None:
        raise RuntimeError("redis-server is not on PATH (apt-get install redis-server)")
    port = free_port()
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
        # Durability settings off: the cluster is deleted at the end of the session anyway.
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
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
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
