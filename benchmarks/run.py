"""Load benchmark of the gateway as production runs it (DESIGN §9, issue 6 item 4).

Starts Redis (or uses GATEWAY_BENCH_REDIS_URL), a temporary SQLite database (or
GATEWAY_BENCH_DATABASE_URL), seeds accounts, runs `uvicorn benchmarks.app:create_bench_app
--factory --workers W` on loopback, then drives it with a bounded async load generator:

1. floor: signed posts to the static-TwiML route `/bench/static`, C at a time;
2. memory: M calls paused right after the code was sent, Redis `INFO memory` before and after;
3. real: C simulated callers running complete signed voice recoveries.

Writes JSON (``--out``), prints a table and ends with one ``key=value`` line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import re
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urljoin

import httpx
from redis.asyncio import Redis

from benchmarks.plot import plot
from core.accounts_import import import_accounts_csv
from core.config import Settings
from core.crypto import Keyring
from core.db import create_engine, create_sessionmaker, transaction
from core.delivery import list_outbox, readable_body
from core.migrate import upgrade_database
from gateway.simulator.servers import postgres_server
from gateway.simulator.servers import redis_server as start_redis_server
from gateway.simulator.transport import sign

REPO_ROOT = Path(__file__).resolve().parents[1]
AUTH_TOKEN = "bench-auth-token-" + "0123456789abcdef"
PUBLIC_BASE_URL = "https://hotline.bench.example"
HOTLINE = "+78005550100"
CODE = re.compile(r"\b(\d{6})\b")
STEPS = ("voice", "purpose", "account", "confirm", "method", "code", "status")
RATE_LIMITS = (
    "CALLER_STARTS_PER_HOUR",
    "ACCOUNT_SENDS_PER_HOUR",
    "ACCOUNT_SENDS_PER_DAY",
    "DESTINATION_SENDS_PER_HOUR",
    # The benchmark's accounts have consecutive phone numbers: one range (§6.14).
    "PREFIX_SENDS_PER_HOUR",
    "GLOBAL_OUTBOUND_PER_HOUR",
    "GLOBAL_CALLS_PER_HOUR",
)
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Options:
    """What one run does."""

    quick: bool
    calls: int
    concurrency: int
    workers: int
    database: str
    out: Path
    plot: Path
    real_seconds: float
    floor_seconds: float
    memory_calls: int
    think_ms: float


def parse_args(argv: list[str] | None = None) -> Options:
    """The command line; --quick picks small defaults that finish within a minute."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small run, under a minute")
    parser.add_argument("--calls", type=int, help="complete recoveries to run (cap)")
    parser.add_argument("--concurrency", type=int, help="simultaneous simulated calls")
    parser.add_argument("--workers", type=int, help="uvicorn worker processes")
    parser.add_argument("--seconds", type=float, help="wall-time cap of the real phase")
    parser.add_argument("--think-ms", type=float, default=0.0, help="caller pause between keys")
    parser.add_argument(
        "--database",
        choices=["postgresql", "sqlite"],
        default="postgresql",
        help="a throw-away PostgreSQL cluster (production settings), or a SQLite file",
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / ".tmp" / "bench.json")
    parser.add_argument("--plot", type=Path, default=REPO_ROOT / ".tmp" / "bench.png")
    args = parser.parse_args(argv)
    quick = bool(args.quick)
    concurrency = args.concurrency or (30 if quick else 1000)
    return Options(
        quick=quick,
        calls=args.calls or (150 if quick else 5000),
        concurrency=concurrency,
        workers=args.workers or (1 if quick else 2),
        database=args.database,
        out=args.out,
        plot=args.plot,
        real_seconds=args.seconds or (12.0 if quick else 100.0),
        floor_seconds=3.0 if quick else 20.0,
        memory_calls=min(1000, max(200, concurrency)),
        think_ms=args.think_ms,
    )


# --- processes -------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    """GATEWAY_BENCH_REDIS_URL, or a fresh redis-server on a free loopback port."""
    given = os.environ.get("GATEWAY_BENCH_REDIS_URL")
    if given:
        yield given
        return
    if shutil.which("redis-server") is None:
        sys.exit(
            "redis-server is not on PATH: apt-get install redis-server, or set "
            "GATEWAY_BENCH_REDIS_URL."
        )
    with start_redis_server(workdir) as url:
        yield url


def process_tree(root: int) -> list[int]:
    """The pid and every descendant, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of the processes, in seconds."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def peak_rss_kib(pids: list[int]) -> dict[int, int]:
    """VmHWM of each process, KiB."""
    peaks: dict[int, int] = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks[pid] = int(line.split()[1])
    return peaks


# --- seeding ----------------------------------------------------------------------------------


def account_number(index: int) -> str:
    """The account of simulated caller `index`."""
    return str(2_000_000_000 + index)


def mobile(index: int) -> str:
    """The mobile on file for account `index` (a valid Russian mobile range)."""
    return f"+7912{index:07d}"


async def seed(settings: Settings, count: int) -> float:
    """Migrate and import `count` accounts with mobiles; seconds taken."""
    started = time.perf_counter()
    await upgrade_database(settings.database_url)
    lines = ["account_number,login,full_name,phones,email"]
    lines += [
        f"{account_number(i)},bench{i},Тестов Тест Тестович,{mobile(i)}," for i in range(count)
    ]
    engine = create_engine(settings.database_url)
    async with transaction(create_sessionmaker(engine)) as session:
        await import_accounts_csv(session, io.StringIO("\n".join(lines) + "\n"), settings)
    await engine.dispose()
    return time.perf_counter() - started


# --- load generator ---------------------------------------------------------------------------


class StepFailed(Exception):
    """A webhook answered with an error or unexpected TwiML."""


@dataclass
class Recorder:
    """Latencies per step and error counts."""

    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    webhooks: int = 0

    def ok(self, step: str, seconds: float) -> None:
        self.latencies.setdefault(step, []).append(seconds)
        self.webhooks += 1

    def error(self, step: str) -> None:
        self.errors[step] = self.errors.get(step, 0) + 1

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


class Caller:
    """One simulated call, posting signed webhooks the way Twilio does."""

    def __init__(self, http: httpx.AsyncClient, recorder: Recorder, index: int) -> None:
        self.http = http
        self.recorder = recorder
        self.index = index
        self.call_sid = "CA" + secrets.token_hex(16)
        self.path = "/ivr/voice"
        self.twiml = ET.Element("Response")

    def params(self, **extra: str) -> dict[str, str]:
        return {
            "AccountSid": "AC" + "0" * 32,
            "ApiVersion": "2010-04-01",
            "CallSid": self.call_sid,
            "CallStatus": "in-progress",
            "Direction": "inbound",
            "From": mobile(self.index),
            "To": HOTLINE,
            **extra,
        }

    async def post(self, step: str, path: str, params: dict[str, str]) -> httpx.Response:
        headers = {"X-Twilio-Signature": sign(AUTH_TOKEN, PUBLIC_BASE_URL + path, params)}
        started = time.perf_counter()
        try:
            response = await self.http.post(path, data=params, headers=headers)
        except httpx.HTTPError as exc:
            self.recorder.error(step)
            raise StepFailed(f"{step}: {type(exc).__name__}") from exc
        elapsed = time.perf_counter() - started
        if response.status_code not in (200, 204):
            self.recorder.error(step)
            raise StepFailed(f"{step}: HTTP {response.status_code}")
        self.recorder.ok(step, elapsed)
        return response

    async def load(self, step: str, path: str, params: dict[str, str]) -> None:
        response = await self.post(step, path, params)
        self.twiml = ET.fromstring(response.text)  # noqa: S314 - our own server's TwiML
        self.path = path

    async def press(self, step: str, digits: str) -> None:
        gather = self.twiml.find("Gather")
        action = gather.get("action") if gather is not None else None
        if not action:
            self.recorder.error(step)
            raise StepFailed(f"{step}: no Gather action in {ET.tostring(self.twiml)[:200]!r}")
        await self.load(step, urljoin(self.path, action), self.params(Digits=digits))

    async def until_code_sent(self, think: Callable[[], Awaitable[None]]) -> None:
        """Greeting → restore password → account# → confirm → code by SMS."""
        await self.load("voice", "/ivr/voice", self.params(CallStatus="ringing"))
        for step, keys in (
            ("purpose", "1"),
            ("account", account_number(self.index) + "#"),
            ("confirm", "1"),
            ("method", "1"),
        ):
            await think()
            await self.press(step, keys)

    async def hang_up(self) -> None:
        await self.post("status", "/ivr/status", self.params(CallStatus="completed"))


class Outbox:
    """Reads the code SMS the gateway queued in its outbox table."""

    def __init__(self, settings: Settings) -> None:
        self.engine = create_engine(settings.database_url)
        self.sessionmaker = create_sessionmaker(self.engine)
        self.keyring = Keyring(settings)
        self.lock = asyncio.Semaphore(8)

    async def code_for(self, phone: str) -> str:
        for _ in range(100):
            async with self.lock, self.sessionmaker() as session:
                rows = await list_outbox(session, to_number=phone)
            for row in reversed(rows):
                match = CODE.search(readable_body(row, self.keyring))
                if match:
                    return match.group(1)
            await asyncio.sleep(0.02)
        raise StepFailed(f"no code SMS to {phone}")


async def run_real(
    http: httpx.AsyncClient, outbox: Outbox, options: Options, first: int
) -> tuple[Recorder, int, float]:
    """C callers run complete recoveries until `calls` are done or time is up."""
    recorder = Recorder()
    next_index = first
    last_index = first + options.calls
    completed = 0
    deadline = time.monotonic() + options.real_seconds

    async def think() -> None:
        if options.think_ms:
            await asyncio.sleep(options.think_ms / 1000)

    async def worker() -> None:
        nonlocal next_index, completed
        while time.monotonic() < deadline and next_index < last_index:
            caller = Caller(http, recorder, next_index)
            next_index += 1
            try:
                await caller.until_code_sent(think)
                code = await outbox.code_for(mobile(caller.index))
                await think()
                await caller.press("code", code)
                if not any(say.text and "Группа" in say.text for say in caller.twiml.iter("Say")):
                    recorder.error("code")
                    raise StepFailed("no password read out after the code")
                await caller.hang_up()
                completed += 1
            except StepFailed:
                with contextlib.suppress(StepFailed):
                    await caller.hang_up()

    started = time.perf_counter()
    tasks = [asyncio.create_task(worker()) for _ in range(options.concurrency)]
    await asyncio.wait(tasks, timeout=options.real_seconds + 5)
    for task in tasks:
        task.cancel()
    elapsed = time.perf_counter() - started
    return recorder, completed, elapsed


async def run_floor(http: httpx.AsyncClient, options: Options) -> tuple[Recorder, float]:
    """C clients post signed requests to the static route for a fixed time."""
    recorder = Recorder()
    deadline = time.monotonic() + options.floor_seconds

    async def worker(index: int) -> None:
        caller = Caller(http, recorder, index)
        while time.monotonic() < deadline:
            with contextlib.suppress(StepFailed):
                await caller.post("static", "/bench/static", caller.params(Digits="1"))

    started = time.perf_counter()
    tasks = [asyncio.create_task(worker(i)) for i in range(options.concurrency)]
    await asyncio.wait(tasks, timeout=options.floor_seconds + 5)
    for task in tasks:
        task.cancel()
    return recorder, time.perf_counter() - started


async def run_menu(http: httpx.AsyncClient, options: Options, first: int) -> tuple[Recorder, float]:
    """C callers walk the menu steps that touch only Redis (§9's "real menu steps").

    Greeting, purpose, account number, "enter again", the number again, `*` to repeat: the
    signature check, the call's state in Redis and TwiML, no database write. Timed like the floor.
    """
    recorder = Recorder()
    deadline = time.monotonic() + options.floor_seconds
    next_index = first

    async def worker() -> None:
        nonlocal next_index
        while time.monotonic() < deadline:
            caller = Caller(http, recorder, next_index)
            next_index += 1
            number = account_number(caller.index) + "#"
            with contextlib.suppress(StepFailed):
                await caller.load("voice", "/ivr/voice", caller.params(CallStatus="ringing"))
                for step, keys in (
                    ("purpose", "1"),
                    ("account", number),
                    ("reenter", "2"),
                    ("account", number),
                    ("repeat", "*"),
                ):
                    await caller.press(step, keys)

    started = time.perf_counter()
    tasks = [asyncio.create_task(worker()) for _ in range(options.concurrency)]
    await asyncio.wait(tasks, timeout=options.floor_seconds + 5)
    for task in tasks:
        task.cancel()
    return recorder, time.perf_counter() - started


async def redis_dataset_memory(redis: Redis) -> int:
    """Memory held by keys and values, without client buffers and other overhead."""
    info = await redis.info("memory")
    return int(info["used_memory_dataset"])


async def run_memory(
    http: httpx.AsyncClient, redis: Redis, options: Options, first: int
) -> dict[str, Any]:
    """Redis bytes per active call: M calls held right after the code was sent."""
    recorder = Recorder()
    callers = [Caller(http, recorder, first + i) for i in range(options.memory_calls)]

    async def no_think() -> None:
        return None

    before = await redis_dataset_memory(redis)
    gate = asyncio.Semaphore(min(options.concurrency, 50))

    async def open_call(caller: Caller) -> None:
        async with gate:
            with contextlib.suppress(StepFailed):
                await caller.until_code_sent(no_think)

    await asyncio.gather(*(open_call(c) for c in callers))
    after = await redis_dataset_memory(redis)
    key_bytes = 0
    for caller in callers:
        key_bytes += int(await redis.memory_usage(f"call:{caller.call_sid}") or 0)
    by_prefix: dict[str, int] = {}
    async for key in redis.scan_iter(count=1000):
        prefix = str(key).split(":", 1)[0]
        by_prefix[prefix] = by_prefix.get(prefix, 0) + int(await redis.memory_usage(key) or 0)
    await asyncio.gather(*(c.hang_up() for c in callers), return_exceptions=True)
    active = options.memory_calls - recorder.error_count
    return {
        "active_calls": active,
        "used_memory_dataset_before": before,
        "used_memory_dataset_after": after,
        "bytes_per_call": round((after - before) / max(active, 1)),
        "call_key_bytes_per_call": round(key_bytes / max(active, 1)),
        "key_bytes_per_call_by_prefix": {
            prefix: round(size / max(active, 1)) for prefix, size in sorted(by_prefix.items())
        },
        "errors": recorder.error_count,
    }


# --- figures ----------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def step_table(recorder: Recorder) -> dict[str, dict[str, float]]:
    table = {}
    # Steps in the order a call first reached them.
    for step, values in recorder.latencies.items():
        table[step] = {
            "count": len(values),
            "errors": recorder.errors.get(step, 0),
            "p50_ms": round(percentile(values, 50) * 1000, 2),
            "p95_ms": round(percentile(values, 95) * 1000, 2),
            "p99_ms": round(percentile(values, 99) * 1000, 2),
            "max_ms": round(max(values) * 1000, 2),
        }
    return table


async def wait_healthy(http: httpx.AsyncClient, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"the gateway exited with {server.returncode} before it was ready")
        with contextlib.suppress(httpx.TransportError):
            if (await http.get("/readyz")).status_code == 200:
                return
        await asyncio.sleep(0.1)
    sys.exit("the gateway did not become ready within 30 s")


def start_gateway(
    env: dict[str, str], port: int, workers: int, workdir: Path
) -> tuple[subprocess.Popen[bytes], IO[bytes]]:
    """uvicorn with the bench factory, as production starts the gateway."""
    server_log = (workdir / "gateway.log").open("ab")
    server = subprocess.Popen(  # noqa: S603 - our own argv, no shell
        [
            sys.executable,
            "-m",
            "uvicorn",
            "benchmarks.app:create_bench_app",
            "--factory",
            "--workers",
            str(workers),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
            "--backlog",
            "4096",
        ],
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=server_log,
        stderr=subprocess.STDOUT,
    )
    return server, server_log


async def bench(
    options: Options, workdir: Path, redis_url: str, database_url: str
) -> dict[str, Any]:
    secret_key = secrets.token_urlsafe(32)
    settings = Settings(
        _env_file=None,
        database_url=database_url,
        redis_url=redis_url,
        secret_key=secret_key,
        public_base_url=PUBLIC_BASE_URL,
        twilio_auth_token=AUTH_TOKEN,
    )
    accounts = options.calls + options.memory_calls
    seed_seconds = await seed(settings, accounts)

    env = {
        **os.environ,
        "GATEWAY_DATABASE_URL": database_url,
        "GATEWAY_REDIS_URL": redis_url,
        "GATEWAY_SECRET_KEY": secret_key,
        "GATEWAY_PUBLIC_BASE_URL": PUBLIC_BASE_URL,
        "GATEWAY_TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "GATEWAY_MESSENGER": "outbox",
        "GATEWAY_LOG_LEVEL": "WARNING",
        "GATEWAY_WORKERS": str(options.workers),
        **{f"GATEWAY_RATE_LIMIT_{name}": str(10**9) for name in RATE_LIMITS},
    }
    port = free_port()
    server, server_log = start_gateway(env, port, options.workers, workdir)
    redis = Redis.from_url(redis_url, decode_responses=True)
    outbox = Outbox(settings)
    limits = httpx.Limits(
        max_connections=options.concurrency, max_keepalive_connections=options.concurrency
    )
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=15, limits=limits
        ) as http:
            await wait_healthy(http, server)
            pids = process_tree(server.pid)
            client_cpu_0 = resource.getrusage(resource.RUSAGE_SELF)
            cpu_0 = cpu_seconds(pids)
            floor, floor_seconds = await run_floor(http, options)
            cpu_1 = cpu_seconds(pids)
            memory = await run_memory(http, redis, options, options.calls)
            cpu_m = cpu_seconds(pids)
            menu, menu_seconds = await run_menu(http, options, options.calls + options.memory_calls)
            cpu_2 = cpu_seconds(pids)
            real, completed, real_seconds = await run_real(http, outbox, options, 0)
            cpu_3 = cpu_seconds(pids)
            client_cpu_1 = resource.getrusage(resource.RUSAGE_SELF)
            peaks = peak_rss_kib(process_tree(server.pid))
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
        server_log.close()
        await redis.aclose()
        await outbox.engine.dispose()

    floor_rate = floor.webhooks / floor_seconds
    menu_rate = menu.webhooks / menu_seconds
    real_rate = real.webhooks / real_seconds
    steps = step_table(real)
    menu_steps = step_table(menu)
    worst_p99 = max((row["p99_ms"] for row in steps.values()), default=0.0)
    menu_p99 = max((row["p99_ms"] for row in menu_steps.values()), default=0.0)
    client_cpu = (client_cpu_1.ru_utime + client_cpu_1.ru_stime) - (
        client_cpu_0.ru_utime + client_cpu_0.ru_stime
    )
    return {
        "options": {
            "quick": options.quick,
            "calls": options.calls,
            "concurrency": options.concurrency,
            "workers": options.workers,
            "think_ms": options.think_ms,
            "real_seconds_cap": options.real_seconds,
            "floor_seconds": options.floor_seconds,
            "database": "postgresql" if database_url.startswith("postgresql") else "sqlite",
            "cpus": os.cpu_count(),
        },
        "seed": {"accounts": accounts, "seconds": round(seed_seconds, 2)},
        "floor": {
            "requests": floor.webhooks,
            "errors": floor.error_count,
            "seconds": round(floor_seconds, 2),
            "webhooks_per_s": round(floor_rate, 1),
            "latency": step_table(floor).get("static", {}),
            "server_cpu_s": round(cpu_1 - cpu_0, 2),
        },
        "memory": memory,
        "menu": {
            "webhooks": menu.webhooks,
            "errors": menu.error_count,
            "seconds": round(menu_seconds, 2),
            "webhooks_per_s": round(menu_rate, 1),
            "server_cpu_s": round(cpu_2 - cpu_m, 2),
            "server_cpu_ms_per_webhook": round((cpu_2 - cpu_m) * 1000 / max(menu.webhooks, 1), 3),
            "steps": menu_steps,
        },
        "real": {
            "recoveries": completed,
            "webhooks": real.webhooks,
            "errors": real.error_count,
            "errors_by_step": real.errors,
            "seconds": round(real_seconds, 2),
            "webhooks_per_s": round(real_rate, 1),
            "recoveries_per_s": round(completed / real_seconds, 2),
            "server_cpu_s": round(cpu_3 - cpu_2, 2),
            "server_cpu_ms_per_webhook": round((cpu_3 - cpu_2) * 1000 / max(real.webhooks, 1), 3),
            "steps": steps,
        },
        "server": {
            "pids": sorted(peaks),
            "peak_rss_kib_each": peaks,
            "peak_rss_mib_total": round(sum(peaks.values()) / 1024, 1),
            "cpu_s_total": round(cpu_3 - cpu_0, 2),
        },
        "client_cpu_s": round(client_cpu, 2),
        "summary": {
            # §9: the menu steps (signature, Redis state, TwiML) against the static floor.
            "ratio_vs_floor": round(menu_rate / floor_rate, 3) if floor_rate else 0.0,
            # The whole recovery mix, database writes included, against the same floor.
            "recovery_ratio_vs_floor": round(real_rate / floor_rate, 3) if floor_rate else 0.0,
            "p99_ms": worst_p99,
            "menu_p99_ms": menu_p99,
            "redis_bytes_per_call": memory["bytes_per_call"],
            "webhooks_per_s": round(real_rate, 1),
            "menu_webhooks_per_s": round(menu_rate, 1),
            "floor_webhooks_per_s": round(floor_rate, 1),
            "recoveries_per_s": round(completed / real_seconds, 2),
            "errors": real.error_count + floor.error_count + menu.error_count + memory["errors"],
            "peak_rss_mib": round(sum(peaks.values()) / 1024, 1),
            "server_cpu_s": round(cpu_3 - cpu_0, 2),
            "concurrency": options.concurrency,
            "workers": options.workers,
        },
    }


def print_report(result: dict[str, Any]) -> None:
    real = result["real"]
    print(f"{'step':<9}{'count':>7}{'errors':>7}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}")
    rows = dict(real["steps"])
    if result["floor"]["latency"]:
        rows["static"] = result["floor"]["latency"]
    for step, row in rows.items():
        print(
            f"{step:<9}{row['count']:>7}{row['errors']:>7}"
            f"{row['p50_ms']:>9.1f}{row['p95_ms']:>9.1f}{row['p99_ms']:>9.1f}"
        )
    memory = result["memory"]
    print(
        f"floor {result['floor']['webhooks_per_s']}/s, real {real['webhooks_per_s']}/s, "
        f"{real['recoveries']} recoveries in {real['seconds']} s; server CPU "
        f"{real['server_cpu_ms_per_webhook']} ms/webhook; client CPU {result['client_cpu_s']} s; "
        f"Redis {memory['bytes_per_call']} B/call (call key "
        f"{memory['call_key_bytes_per_call']} B) over {memory['active_calls']} calls"
    )
    print(" ".join(f"{key}={value}" for key, value in result["summary"].items()))


@contextlib.contextmanager
def database(options: Options, workdir: Path) -> Iterator[str]:
    """GATEWAY_BENCH_DATABASE_URL, or a throw-away database of the chosen kind."""
    given = os.environ.get("GATEWAY_BENCH_DATABASE_URL")
    if given:
        yield given
    elif options.database == "sqlite":
        yield f"sqlite+aiosqlite:///{workdir / 'bench.db'}"
    else:
        with postgres_server(durable=True) as url:
            yield url


def main(argv: list[str] | None = None) -> None:
    options = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="eirc-bench-") as tmp:
        workdir = Path(tmp)
        with redis_server(workdir) as redis_url, database(options, workdir) as database_url:
            result = asyncio.run(bench(options, workdir, redis_url, database_url))
        options.out.parent.mkdir(parents=True, exist_ok=True)
        # The gateway's own log (warnings and errors only) says why a step failed.
        shutil.copyfile(workdir / "gateway.log", options.out.with_suffix(".gateway.log"))
    options.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    plot(result, options.plot)
    print(
        f"results: {options.out}, figure: {options.plot}, "
        f"gateway log: {options.out.with_suffix('.gateway.log')}"
    )
    print_report(result)
    # Slow figures are measurements, never a failure; a run that completed nothing is broken.
    if not result["real"]["recoveries"] or not result["menu"]["webhooks"]:
        sys.exit("the benchmark completed no recovery or no menu step: see the gateway log")


if __name__ == "__main__":
    main()
