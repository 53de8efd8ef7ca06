"""Servers the tests and the benchmark run the gateway against: redis-server, a throw-away
PostgreSQL cluster and the reference cabinet (cabinet_reference/, DESIGN §11) over real HTTP.

Each server writes its log into a file; one that does not come up raises ServerFailed with the tail
of that log, so a failure explains itself. tests/support/servers.py makes pytest fixtures of them.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import httpx
import redis
import uvicorn
from pydantic import SecretStr
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from cabinet_reference.app import create_app as create_cabinet
from cabinet_reference.importer import import_csv
from cabinet_reference.passwords import Passwords
from cabinet_reference.store import Store
from core.platform.settings import DirectoryKind, Settings

REDIS_START_SECONDS = 30.0
POSTGRES_START_SECONDS = 60.0
STOP_SECONDS = 15.0
LOG_TAIL_CHARS = 4000


class ServerFailed(RuntimeError):
    """A server did not start (the message ends with the tail of its log)."""


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
            self.process = subprocess.Popen(  # noqa: S603 - the caller's fixed argv
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
        """Stop the server and raise ServerFailed with its log tail."""
        self.stop()
        raise ServerFailed(
            f"{self.name}: {problem}\n--- last lines of {self.log} ---\n{log_tail(self.log)}"
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


# --- Redis ---------------------------------------------------------------------------------------


def redis_answers(port: int) -> bool:
    client = redis.Redis(
        host="127.0.0.1", port=port, socket_timeout=1.0, socket_connect_timeout=1.0
    )
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


@contextlib.contextmanager
def redis_server(workdir: Path, port: int | None = None) -> Iterator[str]:
    """A throw-away redis-server on a loopback port, free unless given (to restart a server on
    the port its clients know); the tests' and the benchmark's."""
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
        server.wait_until_ready(lambda: redis_answers(port), REDIS_START_SECONDS)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.stop()


# --- PostgreSQL --------------------------------------------------------------------------------


def postgres_bin_dir() -> Path | None:
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


def postgres_answers(bin_dir: Path, port: int) -> bool:
    result = subprocess.run(  # noqa: S603 - fixed argv
        [str(bin_dir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres"],
        check=False,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return result.returncode == 0


@contextlib.contextmanager
def postgres_server(*, durable: bool = False) -> Iterator[str]:
    """A throw-away PostgreSQL cluster on a free loopback port (the tests' and the benchmark's).

    `durable` keeps PostgreSQL's own fsync and commit settings, as production runs them; the
    tests turn them off (the cluster is deleted at the end anyway).
    """
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL server binaries were not found (/usr/lib/postgresql)")

    # initdb and postgres refuse to run as root, so as root they run as the postgres user; the
    # directory is made directly in /tmp because pytest's own tmp dirs are private to root.
    as_user = "postgres" if os.geteuid() == 0 else None
    # mkdtemp makes a fresh directory of its own (mode 0700): no other user's files are reused.
    workdir = Path(
        tempfile.mkdtemp(prefix="eirc-gateway-pg-", dir="/tmp" if as_user else None)  # noqa: S108
    )
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
        server.wait_until_ready(lambda: postgres_answers(bin_dir, port), POSTGRES_START_SECONDS)
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/postgres"
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


# --- The reference cabinet ---------------------------------------------------------------------

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


@contextlib.contextmanager
def serve_cabinet(
    workdir: Path, accounts_csv: str, *, passwords: Passwords | None = None, **tls: object
) -> Iterator[Cabinet]:
    """A fresh reference cabinet over real HTTP on 127.0.0.1, filled from an accounts CSV (every
    password INITIAL_PASSWORD, hashed by `passwords`); `tls` are uvicorn's ssl_* settings."""
    workdir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_hex(24)
    database = workdir / "cabinet.db"
    csv_file = workdir / "accounts.csv"
    csv_file.write_text(accounts_csv, encoding="utf-8")
    store = Store(database)
    import_csv(store, csv_file, passwords or Passwords(), initial_password=INITIAL_PASSWORD)
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
