"""The §9 benchmark (issue 14): server CPU per webhook against the floor, and an open-loop test.

    uv run python -m benchmarks.run [--quick] [--database sqlite|postgresql|both] [...]

One run starts a real redis-server, the database (a SQLite file, and/or a throw-away durable
PostgreSQL 15), the gateway (`uvicorn gateway.app:create_app --factory`, one worker, outbox
messenger, SQL directory: the embedded defaults) and the floor (`benchmarks.app`, the same
uvicorn settings), both pinned to core 0, the load generator and Redis/PostgreSQL on core 1.

1. CPU per step: N calls are brought to each step of a voice recovery and only that step's N
   requests are measured, server CPU from /proc (utime + stime of the gateway's processes),
   the sends they cause included; the floor the same way, before and after. Ratios in one run.
2. Redis per held call: `used_memory_dataset` growth with 200 and 1,000 calls held just after
   the code was sent.
3. Open loop: calls arrive at a constant rate, each pausing as long as its prompts last
   (benchmarks/openloop.py); p50/p99 per step at 1,000 concurrent calls, latency from each
   request's scheduled time; then a search for the most calls one core holds at that p99.

Writes benchmarks/results/latest.json (and .png), prints a table and one `key=value` line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import io
import itertools
import json
import math
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from benchmarks import openloop, procs
from benchmarks.app import FLOOR_PATH
from benchmarks.calls import (
    AUTH_TOKEN,
    MENU_STEPS,
    PUBLIC_BASE_URL,
    STEPS,
    Call,
    Outbox,
    accounts_csv,
)
from benchmarks.client import Pool, signed_post
from benchmarks.steps import (
    StepCost,
    dataset_bytes,
    key_bytes_by_prefix,
    measure,
    per_call,
    run_step,
    settle,
)
from core.accounts.importer import import_accounts_csv
from core.platform.db import create_engine, create_sessionmaker, transaction
from core.platform.migrate import upgrade_database
from core.platform.settings import Settings

RESULTS = procs.REPO_ROOT / "benchmarks" / "results"
# The limits that would stop a benchmark's synthetic callers: thousands of recoveries an hour
# from one number range. Lifted to 10**9, and the run says so.
RATE_LIMITS = (
    "CALLER_STARTS_PER_HOUR",
    "ACCOUNT_SENDS_PER_HOUR",
    "ACCOUNT_SENDS_PER_DAY",
    "DESTINATION_SENDS_PER_HOUR",
    "PREFIX_SENDS_PER_HOUR",
    "GLOBAL_OUTBOUND_PER_HOUR",
    "GLOBAL_CALLS_PER_HOUR",
)
P99_TARGET_MS = 25.0
MENU_TARGET = 2.5
RECOVERY_TARGET = 100.0
CONCURRENT_TARGET = 1000
WARM_UP_CALLS = 10


@dataclass
class Options:
    """What one run does."""

    quick: bool
    databases: list[str]
    held: list[int]  # Redis measured with this many calls held (cumulative), SQLite run
    code_calls: int  # of those, how many go on to the code and the status callback
    pg_held: list[int]  # the same on PostgreSQL (CPU only: its memory is the same Redis)
    pg_code_calls: int
    floor_requests: int
    concurrency: int  # in-flight requests while CPU is measured
    scale: float  # open loop: pauses times this
    window: float  # open loop: seconds measured after the ramp
    search: int  # open loop: trials of the capacity search (0: none)
    log_level: str
    out: Path
    plot: Path | None
    profile: Path | None
    extra_accounts: int
    keep: Path | None
    open_loop: bool


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="CI: under a minute, pauses ÷ 10")
    parser.add_argument(
        "--database", choices=["sqlite", "postgresql", "both"], help="default: both (quick: sqlite)"
    )
    parser.add_argument("--calls", type=int, help="calls held for Redis (default 1000; quick 200)")
    parser.add_argument("--code-calls", type=int, help="calls measured at the code step")
    parser.add_argument("--window", type=float, help="open-loop seconds measured after the ramp")
    parser.add_argument("--pause-scale", type=float, help="open loop: pauses times this")
    parser.add_argument("--search", type=int, help="capacity-search trials (0: none)")
    parser.add_argument(
        "--log-level",
        default="warning",
        choices=["warning", "info"],
        help="gateway and uvicorn log level; info adds uvicorn's access log to both servers",
    )
    parser.add_argument("--extra-accounts", type=int, default=0, help="import this many more")
    parser.add_argument(
        "--profile", type=Path, help="DIR: py-spy each step (collapsed stacks) into DIR/STEP.txt"
    )
    parser.add_argument("--cpu-only", action="store_true", help="no open-loop test")
    parser.add_argument("--keep", type=Path, help="copy the SQLite database here afterwards")
    parser.add_argument("--out", type=Path, default=RESULTS / "latest.json")
    parser.add_argument("--no-plot", action="store_true", help="(quick mode draws none)")
    args = parser.parse_args(argv)
    quick = bool(args.quick)
    calls = args.calls or (200 if quick else 1000)
    held = [calls] if calls <= 200 else [200, calls]
    database = args.database or ("sqlite" if quick else "both")
    return Options(
        quick=quick,
        databases=["sqlite", "postgresql"] if database == "both" else [database],
        held=held,
        code_calls=min(calls, args.code_calls or (40 if quick else 200)),
        pg_held=[min(calls, 200)],
        pg_code_calls=min(calls, 100),
        floor_requests=1000 if quick else 3000,
        concurrency=8,
        scale=args.pause_scale or (0.1 if quick else 1.0),
        window=args.window or (5.0 if quick else 30.0),
        search=args.search if args.search is not None else (0 if quick else 3),
        log_level=args.log_level,
        out=args.out,
        plot=None if args.no_plot or quick else args.out.with_suffix(".png"),
        profile=args.profile,
        extra_accounts=args.extra_accounts,
        keep=args.keep,
        open_loop=not args.cpu_only,
    )


STARTED = time.monotonic()


def note(message: str) -> None:
    """Progress on stderr, with the seconds since the run started."""
    print(f"[{time.monotonic() - STARTED:6.1f} s] {message}", file=sys.stderr, flush=True)


# --- set-up -------------------------------------------------------------------------------------


async def seed(settings: Settings, count: int) -> float:
    """Migrate and import `count` accounts with mobiles; seconds taken."""
    started = time.perf_counter()
    await upgrade_database(settings.database_url)
    engine = create_engine(settings.database_url)
    async with transaction(create_sessionmaker(engine)) as session:
        await import_accounts_csv(session, io.StringIO(accounts_csv(0, count)), settings)
    await engine.dispose()
    return time.perf_counter() - started


def hash_seconds(settings: Settings) -> float:
    """CPU time of one Argon2id hash at the gateway's parameters (§5), median of five: the
    hash's own time, which a shared machine's wall clock would inflate."""
    from argon2 import PasswordHasher

    hasher = PasswordHasher(
        time_cost=settings.argon2_time_cost,
        memory_cost=settings.argon2_memory_kib,
        parallelism=settings.argon2_parallelism,
    )
    times = []
    for _ in range(5):
        started = time.process_time()
        hasher.hash(secrets.token_hex(5))
        times.append(time.process_time() - started)
    return statistics.median(times)


class Accounts:
    """Hands out seeded account indexes; wraps around when a long run uses them all."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.next = 0

    def call(self) -> Call:
        call = Call(self.next % self.count)
        self.next += 1
        return call


def gateway_env(settings: Settings, log_level: str) -> dict[str, str]:
    return {
        **os.environ,
        "GATEWAY_DATABASE_URL": settings.database_url,
        "GATEWAY_REDIS_URL": settings.redis_url,
        "GATEWAY_SECRET_KEY": settings.secret_key.get_secret_value(),
        "GATEWAY_PUBLIC_BASE_URL": PUBLIC_BASE_URL,
        "GATEWAY_TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "GATEWAY_MESSENGER": "outbox",
        "GATEWAY_DIRECTORY": "sql",
        "GATEWAY_WORKERS": "1",
        "GATEWAY_LOG_LEVEL": log_level.upper(),
        **{f"GATEWAY_RATE_LIMIT_{name}": str(10**9) for name in RATE_LIMITS},
    }


@contextlib.contextmanager
def database(kind: str, workdir: Path) -> Iterator[str]:
    """GATEWAY_BENCH_DATABASE_URL, or a throw-away database of the kind."""
    given = os.environ.get("GATEWAY_BENCH_DATABASE_URL")
    if given:
        yield given
    elif kind == "sqlite":
        yield f"sqlite+aiosqlite:///{workdir / 'bench.db'}"
    else:
        from gateway.simulator.servers import postgres_server

        with postgres_server(durable=True) as url:
            yield url


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    given = os.environ.get("GATEWAY_BENCH_REDIS_URL")
    if given:
        yield given
        return
    if shutil.which("redis-server") is None:
        sys.exit("redis-server is not on PATH: apt-get install redis-server")
    from gateway.simulator.servers import redis_server as start_redis

    with start_redis(workdir) as url:
        yield url


@contextlib.contextmanager
def py_spy(pid: int, path: Path | None) -> Iterator[None]:
    """py-spy record of the gateway (collapsed stacks) while the block runs, if asked."""
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    executable = shutil.which("py-spy")
    if executable is None:
        sys.exit("--profile needs py-spy: uv pip install py-spy")
    spy = subprocess.Popen(  # noqa: S603 - our own argv
        [executable, "record", "-p", str(pid), "-r", "250", "--format", "raw", "-o", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1)
    try:
        yield
    finally:
        spy.send_signal(2)
        with contextlib.suppress(subprocess.TimeoutExpired):
            spy.wait(30)


# --- the run ------------------------------------------------------------------------------------


async def audit_verify(settings: Settings) -> dict[str, Any]:
    """`audit verify` (verify_chain) over the rows the run wrote: time per 10 k rows."""
    from core.audit.log import verify_chain
    from core.platform.crypto import Keyring

    engine = create_engine(settings.database_url)
    try:
        async with create_sessionmaker(engine)() as session:
            started, cpu = time.perf_counter(), time.process_time()
            report = await verify_chain(session, Keyring(settings))
            wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        await engine.dispose()
    rows = report.events + report.unsealed
    return {
        "rows": rows,
        "intact": report.intact,
        "seconds": round(wall, 2),
        "seconds_per_10k_rows": round(wall * 10_000 / rows, 2) if rows else None,
        "client_cpu_s_per_10k_rows": round(cpu * 10_000 / rows, 2) if rows else None,
    }


async def floor_cost(pool: Pool, meter: procs.CpuMeter, options: Options) -> StepCost:
    params = {"CallSid": "CA" + "0" * 32, "From": "+79120000000", "Digits": "1"}
    request = signed_post(PUBLIC_BASE_URL, AUTH_TOKEN, FLOOR_PATH, params)
    cost, answers = await measure(
        pool, meter, None, None, [request] * options.floor_requests, options.concurrency
    )
    for answer in answers:
        if isinstance(answer, str) or answer[0] != 200:
            kind = answer if isinstance(answer, str) else f"HTTP {answer[0]}"
            cost.errors[kind] = cost.errors.get(kind, 0) + 1
    return cost


async def floor_rate(pool: Pool, seconds: float) -> float:
    """Closed-loop floor throughput (64 in flight): proof that the client is not the limit."""
    params = {"CallSid": "CA" + "1" * 32, "From": "+79120000001", "Digits": "1"}
    request = signed_post(PUBLIC_BASE_URL, AUTH_TOKEN, FLOOR_PATH, params)
    done = 0
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            await pool.request(request)
            done += 1

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(64)))
    return done / (time.monotonic() - started)


def profile_path(options: Options, step: str) -> Path | None:
    """Where py-spy writes the profile of one step (--profile DIR; the last group of calls)."""
    if options.profile is None:
        return None
    return options.profile / f"{step}.txt"


async def cpu_steps(
    options: Options,
    pool: Pool,
    meter: procs.CpuMeter,
    db_meter: procs.CpuMeter | None,
    outbox: Outbox,
    redis: Redis,
    accounts: Accounts,
    held_counts: list[int],
    code_calls: int,
) -> tuple[dict[str, StepCost], dict[str, Any], int]:
    """CPU of each step over the held calls, Redis memory at each held count; recoveries."""
    costs = {step: StepCost() for step in STEPS}
    memory: dict[str, Any] = {}
    held: list[Call] = []
    before = await dataset_bytes(redis)
    for target in held_counts:
        calls = [accounts.call() for _ in range(target - len(held))]
        for step in STEPS[:5]:  # voice .. method: the call now holds a code
            with py_spy(meter.root, profile_path(options, step)):
                cost, calls = await run_step(
                    pool, meter, db_meter, outbox, calls, step, options.concurrency
                )
            costs[step].add(cost)
        held += calls
        after = await dataset_bytes(redis)
        memory[str(target)] = {
            "held_calls": len(held),
            "dataset_growth_bytes": after - before,
            "bytes_per_call": round((after - before) / max(len(held), 1)),
        }
    memory["key_bytes_per_call_by_prefix"] = per_call(await key_bytes_by_prefix(redis), len(held))
    finishing, rest = held[:code_calls], held[code_calls:]
    for step in ("code", "status"):
        with py_spy(meter.root, profile_path(options, step)):
            cost, finishing = await run_step(
                pool, meter, db_meter, outbox, finishing, step, options.concurrency
            )
        costs[step].add(cost)
    await outbox.poll()
    recoveries = sum(1 for call in finishing if outbox.got_password(call.phone))
    # The calls held only for Redis hang up, unmeasured.
    await run_step(pool, meter, None, outbox, rest, "status", options.concurrency)
    return costs, memory, recoveries


async def warm_up(
    pool: Pool,
    floor_pool: Pool,
    meter: procs.CpuMeter,
    outbox: Outbox,
    accounts: Accounts,
    options: Options,
) -> None:
    """Imports, caches and connection pools of both servers, before anything is measured."""
    warm = Options(**{**options.__dict__, "floor_requests": 300})
    await floor_cost(floor_pool, meter, warm)
    calls = [accounts.call() for _ in range(WARM_UP_CALLS)]
    for step in STEPS:
        _, calls = await run_step(pool, meter, None, outbox, calls, step, options.concurrency)


async def open_loop(
    options: Options,
    meter: procs.CpuMeter,
    pool: Pool,
    outbox: Outbox,
    accounts: Accounts,
    recovery_cpu_s: float,
    hash_ms: float,
) -> dict[str, Any]:
    """1,000 concurrent calls, then the capacity search around what the CPU figures allow."""
    poller = asyncio.create_task(outbox.run_poller(0.1 if options.scale < 1 else 0.25))
    try:
        headline = await openloop.run_trial(
            pool,
            outbox,
            accounts.call,
            openloop.rate_for(CONCURRENT_TARGET),
            scale=options.scale,
            window=options.window,
            grace=3.0 if options.quick else 5.0,
            server=meter,
        )
        trials = []
        # A core cannot start more recoveries a second than one over a recovery's CPU.
        ceiling = 1 / recovery_cpu_s if recovery_cpu_s > 0 else 50.0
        low, high = 0.0, ceiling
        rate = 0.6 * ceiling
        for _ in range(options.search):
            # An overloaded trial leaves a backlog: the next one starts once it is served.
            await settle(meter, None, limit=60)
            trial = await openloop.run_trial(
                pool, outbox, accounts.call, rate, scale=0.1, window=10.0, grace=5.0, server=meter
            )
            passed = trial.meets(P99_TARGET_MS, hash_ms)
            trials.append({**trial.summary(), "meets_p99": passed})
            if passed:
                low = rate
            else:
                high = rate
            rate = (low + high) / 2
    finally:
        poller.cancel()
    return {
        "headline": {**headline.summary(), "meets_p99": headline.meets(P99_TARGET_MS, hash_ms)},
        "search": trials,
        "most_concurrent_calls": round(low * openloop.CALL_SECONDS) if options.search else None,
        "most_calls_per_s": round(low, 2) if options.search else None,
    }


async def bench(
    options: Options, kind: str, workdir: Path, redis_url: str, database_url: str
) -> dict[str, Any]:
    settings = Settings(
        _env_file=None,
        database_url=database_url,
        redis_url=redis_url,
        secret_key=secrets.token_urlsafe(32),
        public_base_url=PUBLIC_BASE_URL,
        twilio_auth_token=AUTH_TOKEN,
    )
    redis = Redis.from_url(redis_url)
    await redis.flushall()
    procs.pin(int((await redis.info("server"))["process_id"]), procs.CLIENT_CORE)
    db_meter = None
    if kind == "postgresql":
        port = int(database_url.rsplit(":", 1)[1].split("/")[0])
        postmaster = procs.find_postmaster(port)
        if postmaster is not None:
            db_meter = procs.CpuMeter(postmaster)
            for pid in procs.process_tree(postmaster):
                procs.pin(pid, procs.CLIENT_CORE)
    held_counts = options.held if kind == "sqlite" else options.pg_held
    code_calls = options.code_calls if kind == "sqlite" else options.pg_code_calls
    seeded = max(held_counts) + WARM_UP_CALLS + options.extra_accounts
    if kind == "sqlite" and options.open_loop:  # the open loop: on the embedded defaults
        seeded += 4000 if not options.quick else 1000
    note(f"{kind}: importing {seeded} accounts")
    phases = {"start": time.monotonic()}
    seed_s = await seed(settings, seeded)
    phases["seed"] = time.monotonic()
    accounts = Accounts(seeded - options.extra_accounts)
    hash_ms = hash_seconds(settings) * 1000

    env = gateway_env(settings, options.log_level)
    gateway = procs.start_server(
        f"gateway-{kind}",
        "gateway.app:create_app",
        procs.free_port(),
        env,
        workdir,
        options.log_level,
    )
    floor = procs.start_server(
        f"floor-{kind}",
        "benchmarks.app:create_floor_app",
        procs.free_port(),
        env,
        workdir,
        options.log_level,
    )
    outbox = Outbox(settings)
    pool = Pool("127.0.0.1", gateway.port, 256)
    floor_pool = Pool("127.0.0.1", floor.port, 256)
    try:
        procs.wait_port(gateway)
        procs.wait_port(floor)
        phases["servers_up"] = time.monotonic()
        meter = procs.CpuMeter(gateway.pid)
        floor_meter = procs.CpuMeter(floor.pid)
        note(f"{kind}: servers up, warming up")
        await warm_up(pool, floor_pool, floor_meter, outbox, accounts, options)
        note(f"{kind}: CPU per step over {max(held_counts)} calls ({code_calls} to the end)")
        phases["warm_up"] = time.monotonic()
        floor_1 = await floor_cost(floor_pool, floor_meter, options)
        costs, memory, recoveries = await cpu_steps(
            options, pool, meter, db_meter, outbox, redis, accounts, held_counts, code_calls
        )
        phases["cpu_steps"] = time.monotonic()
        floor_2 = await floor_cost(floor_pool, floor_meter, options)
        floor_before_after = [floor_1.ms_per_request, floor_2.ms_per_request]
        floor_1.add(floor_2)
        floor_ms = floor_1.ms_per_request
        throughput = await floor_rate(floor_pool, 2.0 if options.quick else 3.0)
        recovery_ms = sum(cost.ms_per_request for cost in costs.values())
        loop_result = None
        if kind == "sqlite" and options.open_loop:
            phases["floor"] = time.monotonic()
            note(f"{kind}: open loop, {CONCURRENT_TARGET} calls, then {options.search} trials")
            loop_result = await open_loop(
                options, meter, pool, outbox, accounts, recovery_ms / 1000, hash_ms
            )
            phases["open_loop"] = time.monotonic()
    finally:
        pool.close()
        floor_pool.close()
        gateway.stop()
        floor.stop()
        await outbox.close()
        await redis.aclose()

    note(f"{kind}: audit verify")
    audit = await audit_verify(settings)
    steps = {
        step: {
            "requests": cost.requests,
            "cpu_ms": round(cost.ms_per_request, 3),
            "x_floor": round(cost.ms_per_request / floor_ms, 2),
            **({"db_cpu_ms": round(cost.db_ms_per_request, 3)} if db_meter else {}),
            "errors": cost.errors,
        }
        for step, cost in costs.items()
    }
    menu_ratios = [costs[step].ms_per_request / floor_ms for step in MENU_STEPS]
    # Breakage: a wrong answer or a refused connection. A timeout is a (bad) measurement.
    errors = sum(
        count
        for cost in [*costs.values(), floor_1]
        for kind_, count in cost.errors.items()
        if kind_ != "TimeoutError"
    )
    timeouts = sum(cost.errors.get("TimeoutError", 0) for cost in [*costs.values(), floor_1])
    names = list(phases)
    wall = {b: round(phases[b] - phases[a], 1) for a, b in itertools.pairwise(names)}
    return {
        "database": kind,
        "seed": {"accounts": seeded, "seconds": round(seed_s, 1)},
        "hash_ms": round(hash_ms, 1),
        "floor": {
            "requests": floor_1.requests,
            "cpu_ms": round(floor_ms, 4),
            "cpu_ms_before_after": [round(value, 4) for value in floor_before_after],
            "closed_loop_webhooks_per_s": round(throughput),
            "errors": floor_1.errors,
        },
        "steps": steps,
        "whole_recovery": {
            "cpu_ms": round(recovery_ms, 2),
            "x_floor": round(recovery_ms / floor_ms, 1),
            **(
                {"db_cpu_ms": round(sum(c.db_ms_per_request for c in costs.values()), 2)}
                if db_meter
                else {}
            ),
        },
        "menu_x_floor_max": round(max(menu_ratios), 2),
        "menu_x_floor_mean": round(statistics.fmean(menu_ratios), 2),
        "recoveries": recoveries,
        "redis": memory,
        "open_loop": loop_result,
        "audit_verify": audit,
        "errors": errors,
        "timeouts": timeouts,
        "wall_s": wall,
    }


# --- report -------------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def print_report(result: dict[str, Any]) -> None:
    for run in result["runs"]:
        loop = run["open_loop"]
        head = loop["headline"] if loop else None
        print(
            f"\n== {run['database']}: server CPU per webhook (gateway vs floor, same run); floor "
            f"{run['floor']['cpu_ms']:.3f} ms, {run['floor']['closed_loop_webhooks_per_s']} "
            f"webhooks/s closed loop"
        )
        title = f"{'step':<16}{'CPU ms':>9}{'× floor':>9}"
        if run["database"] == "postgresql":
            title += f"{'PG CPU ms':>11}"
        if head:
            title += f"{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
        print(title)
        for step, row in run["steps"].items():
            line = f"{step:<16}{row['cpu_ms']:>9.3f}{row['x_floor']:>9.1f}"
            if run["database"] == "postgresql":
                line += f"{row.get('db_cpu_ms', math.nan):>11.3f}"
            if head:
                cells = head["steps"][step]
                line += f"{fmt(cells['p50_ms']):>9}{fmt(cells['p99_ms']):>9}{cells['errors']:>8}"
            print(line)
        whole = run["whole_recovery"]
        line = f"{'whole recovery':<16}{whole['cpu_ms']:>9.2f}{whole['x_floor']:>9.1f}"
        if "db_cpu_ms" in whole:
            line += f"{whole['db_cpu_ms']:>11.2f}"
        print(line)
        print(
            f"menu steps × floor: max {run['menu_x_floor_max']} (target ≤ {MENU_TARGET}), mean "
            f"{run['menu_x_floor_mean']}; whole recovery {whole['x_floor']} × (target ≤ "
            f"{RECOVERY_TARGET:g}); Argon2id hash {run['hash_ms']} ms of CPU; "
            f"{run['recoveries']} recoveries completed; errors {run['errors']}"
        )
        redis = run["redis"]
        print(
            "Redis per held call: "
            + ", ".join(
                f"{value['bytes_per_call']} B at {value['held_calls']}"
                for key, value in redis.items()
                if key.isdigit()
            )
            + f" (keys by prefix: {redis['key_bytes_per_call_by_prefix']})"
        )
        audit = run["audit_verify"]
        print(
            f"audit verify: {audit['rows']} rows in {audit['seconds']} s "
            f"({audit['seconds_per_10k_rows']} s per 10 k rows), intact: {audit['intact']}"
        )
        if head:
            print(
                f"open loop: {head['concurrent_calls']} concurrent calls ({head['calls_per_s']} "
                f"calls/s, pauses × {head['pause_scale']}), {head['webhooks_in_window']} webhooks "
                f"in {head['window_s']} s after a {head['ramp_s']} s ramp; meets p99: "
                f"{head['meets_p99']}; errors {head['errors']}; load generator used "
                f"{head['client_cpu_share'] * 100:.0f} % of its core; the server "
                f"{head['server_cpu_share'] * 100:.0f} %, and its event loop waited for its "
                f"core {head['server_runqueue_wait_share'] * 100:.0f} % of the time (other "
                "processes on a shared machine)"
            )
            if loop["search"]:
                tried = "; ".join(
                    f"{t['concurrent_calls']} calls: {'ok' if t['meets_p99'] else 'no'} "
                    f"(worst p99 {max(r['p99_ms'] for r in t['steps'].values() if r['count']):.0f}"
                    f" ms, waited {t['server_runqueue_wait_share'] * 100:.0f} %)"
                    for t in loop["search"]
                )
                print(
                    f"capacity: {loop['most_concurrent_calls']} concurrent calls "
                    f"({loop['most_calls_per_s']} calls/s) on one server core at p99 ≤ "
                    f"{P99_TARGET_MS:g} ms (+ hash at the code step); trials {tried}"
                )
    print(" ".join(f"{key}={value}" for key, value in result["summary"].items()))


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    first = runs[0]
    head = first["open_loop"]["headline"] if first["open_loop"] else {}
    held = {k: v for k, v in first["redis"].items() if k.isdigit()}
    line: dict[str, Any] = {
        "database": first["database"],
        "floor_cpu_ms": first["floor"]["cpu_ms"],
        "menu_x_floor": first["menu_x_floor_max"],
        "recovery_x_floor": first["whole_recovery"]["x_floor"],
        "recovery_cpu_ms": first["whole_recovery"]["cpu_ms"],
    }
    if head:
        p99 = {step: row["p99_ms"] for step, row in head["steps"].items()}
        line["open_loop_calls"] = head["concurrent_calls"]
        line["p99_ms_max_menu"] = max(p99[step] for step in MENU_STEPS)
        line["p99_ms_code"] = p99["code"]
        line["open_loop_errors"] = sum(head["errors"].values())
        line["most_concurrent_calls"] = first["open_loop"]["most_concurrent_calls"]
    for key, value in held.items():
        line[f"redis_bytes_per_call_{key}"] = value["bytes_per_call"]
    for run in runs[1:]:
        line[f"{run['database']}_recovery_x_floor"] = run["whole_recovery"]["x_floor"]
        line[f"{run['database']}_db_cpu_ms"] = run["whole_recovery"].get("db_cpu_ms")
    line["recoveries"] = sum(run["recoveries"] for run in runs)
    line["errors"] = sum(run["errors"] for run in runs)
    return line


def import_scale(options: Options) -> str | None:
    """The accounts-import benchmark (benchmarks/import_scale.py, issue 14 item 5), when it is
    there, in full mode only (it has its own quick figures): its last line."""
    if options.quick or importlib.util.find_spec("benchmarks.import_scale") is None:
        return None
    print("accounts import: python -m benchmarks.import_scale")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.import_scale"],
        cwd=procs.REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    print(done.stdout, end="")
    lines = done.stdout.strip().splitlines()
    return lines[-1] if lines else f"exit {done.returncode}"


def main(argv: list[str] | None = None) -> None:
    options = parse_args(argv)
    if procs.usable_pinning():
        os.sched_setaffinity(0, procs.CLIENT_CORE)
    else:
        print("fewer than two cores: server and load generator are NOT pinned apart")
    print(
        "rate limits lifted to 10**9 for the synthetic callers: GATEWAY_RATE_LIMIT_"
        + ", _".join(RATE_LIMITS)
    )
    if options.scale != 1 and options.open_loop:
        print(f"open loop: the callers' pauses are shortened × {options.scale} (quick mode)")
    started = time.monotonic()
    runs = []
    with tempfile.TemporaryDirectory(prefix="eirc-bench-") as tmp:
        workdir = Path(tmp)
        with redis_server(workdir) as redis_url:
            for kind in options.databases:
                with database(kind, workdir) as url:
                    runs.append(asyncio.run(bench(options, kind, workdir, redis_url, url)))
                if kind == "sqlite" and options.keep:
                    shutil.copyfile(workdir / "bench.db", options.keep)
        options.out.parent.mkdir(parents=True, exist_ok=True)
        for log in workdir.glob("*.log"):
            shutil.copyfile(log, options.out.parent / f"{options.out.stem}.{log.name}")
    result: dict[str, Any] = {
        "options": {
            "quick": options.quick,
            "pause_scale": options.scale,
            "log_level": options.log_level,
            "pauses_s": openloop.PAUSES,
            "rate_limits_lifted": list(RATE_LIMITS),
            "pinned": procs.usable_pinning(),
            "cpus": os.cpu_count(),
            "load_average_at_end": [round(x, 1) for x in os.getloadavg()],
        },
        "runs": runs,
        "summary": summary(runs),
        "seconds": round(time.monotonic() - started, 1),
    }
    result["import_scale"] = import_scale(options)
    options.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    if options.plot is not None:
        from benchmarks.plot import plot

        plot(result, options.plot)
    print_report(result)
    print(f"results: {options.out} ({result['seconds']} s)")
    if result["summary"]["errors"] or not result["summary"]["recoveries"]:
        sys.exit("broken: errors in the measured steps, or no recovery completed (see the logs)")


if __name__ == "__main__":
    main()
