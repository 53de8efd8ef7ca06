"""Server CPU per voice-recovery step against the §9 floor, in one run (issue 14, items 1 and 3).

    uv run python scripts/cpu_steps.py [--calls 200] [--rounds 1] [--profile step]

Starts a real redis-server and a SQLite file, seeds accounts, then runs two uvicorn servers
(one worker each, pinned to CPU 1; this client to CPU 0): the gateway (embedded defaults,
outbox messenger) and the floor of DESIGN §9 (a minimal FastAPI app: parse the form, check the
signature with RequestValidator, constant TwiML). It walks N calls through a voice recovery one
step at a time (all N calls do step k before any does step k+1), reading the server's
utime+stime from /proc around each step, and prints ms of CPU per webhook and the ratio to the
floor measured in the same run. It also prints Redis `used_memory_dataset` growth per call held
just after the code was sent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import urljoin

import httpx
from redis.asyncio import Redis

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from core.accounts_import import import_accounts_csv  # noqa: E402
from core.config import Settings  # noqa: E402
from core.crypto import Keyring  # noqa: E402
from core.db import create_engine, create_sessionmaker, transaction  # noqa: E402
from core.delivery import list_outbox, readable_body  # noqa: E402
from core.migrate import upgrade_database  # noqa: E402
from tests.servers import free_port, redis_server  # noqa: E402
from tests.twilio_driver import sign  # noqa: E402

AUTH_TOKEN = "bench-auth-token-" + "0123456789abcdef"
BASE = "https://hotline.bench.example"
HOTLINE = "+78005550100"
CLK_TCK = os.sysconf("SC_CLK_TCK")
CODE = re.compile(r"\b(\d{6})\b")
LIMITS = (
    "CALLER_STARTS_PER_HOUR",
    "ACCOUNT_SENDS_PER_HOUR",
    "ACCOUNT_SENDS_PER_DAY",
    "DESTINATION_SENDS_PER_HOUR",
    "PREFIX_SENDS_PER_HOUR",
    "GLOBAL_OUTBOUND_PER_HOUR",
    "GLOBAL_CALLS_PER_HOUR",
)

FLOOR_APP = """
from fastapi import FastAPI, Request, Response
from twilio.request_validator import RequestValidator

TWIML = ('<?xml version="1.0" encoding="UTF-8"?><Response><Say language="ru-RU">Здравствуйте.'
         '</Say><Gather action="/floor" method="POST" input="dtmf" numDigits="1"/></Response>')
validator = RequestValidator("{token}")
app = FastAPI()


@app.post("/floor")
async def floor(request: Request) -> Response:
    form = await request.form()
    url = "{base}" + request.url.path
    if not validator.validate(url, form, request.headers.get("X-Twilio-Signature", "")):
        return Response(status_code=403)
    return Response(TWIML, media_type="application/xml")
"""


def cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def account(i: int) -> str:
    return str(2_000_000_000 + i)


def mobile(i: int) -> str:
    return f"+7912{i:07d}"


class Call:
    def __init__(self, http: httpx.AsyncClient, i: int) -> None:
        self.http, self.i = http, i
        self.sid = "CA" + secrets.token_hex(16)
        self.path = "/ivr/voice"
        self.twiml = ET.Element("Response")

    def params(self, **extra: str) -> dict[str, str]:
        return {
            "AccountSid": "AC" + "0" * 32,
            "ApiVersion": "2010-04-01",
            "CallSid": self.sid,
            "CallStatus": "in-progress",
            "Direction": "inbound",
            "From": mobile(self.i),
            "To": HOTLINE,
            **extra,
        }

    async def post(self, path: str, params: dict[str, str]) -> httpx.Response:
        headers = {"X-Twilio-Signature": sign(AUTH_TOKEN, BASE + path, params)}
        response = await self.http.post(path, data=params, headers=headers)
        if response.status_code not in (200, 204):
            raise RuntimeError(f"{path}: HTTP {response.status_code}")
        return response

    async def load(self, path: str, params: dict[str, str]) -> None:
        response = await self.post(path, params)
        self.twiml = ET.fromstring(response.text)  # noqa: S314
        self.path = path

    async def press(self, digits: str) -> None:
        gather = self.twiml.find("Gather")
        action = gather.get("action") if gather is not None else None
        if not action:
            raise RuntimeError(f"no Gather in {ET.tostring(self.twiml)[:300]!r}")
        await self.load(urljoin(self.path, action), self.params(Digits=digits))


async def seed(settings: Settings, count: int) -> None:
    await upgrade_database(settings.database_url)
    lines = ["account_number,login,full_name,phones,email"]
    lines += [f"{account(i)},bench{i},Тестов Тест,{mobile(i)}," for i in range(count)]
    engine = create_engine(settings.database_url)
    async with transaction(create_sessionmaker(engine)) as session:
        await import_accounts_csv(session, io.StringIO("\n".join(lines) + "\n"), settings)
    await engine.dispose()


async def code_for(sessionmaker, keyring, phone: str) -> str:  # type: ignore[no-untyped-def]
    for _ in range(200):
        async with sessionmaker() as session:
            rows = await list_outbox(session, to_number=phone)
        for row in reversed(rows):
            match = CODE.search(readable_body(row, keyring))
            if match:
                return match.group(1)
        await asyncio.sleep(0.02)
    raise RuntimeError(f"no code to {phone}")


CONCURRENCY = 16


async def gather(items, fn) -> None:  # type: ignore[no-untyped-def]
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(item):  # type: ignore[no-untyped-def]
        async with gate:
            await fn(item)

    await asyncio.gather(*(one(item) for item in items))


async def measure(pid: int, label: str, count: int, work, table: dict) -> None:  # type: ignore[no-untyped-def]
    await asyncio.sleep(0.3)
    before = cpu(pid)
    await work()
    await asyncio.sleep(0.5)  # sends after the response, the hash pool
    table.setdefault(label, []).append((cpu(pid) - before) * 1000 / count)


def start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(  # noqa: S603 - our own argv
        [shutil.which("taskset") or "taskset", "-c", "1", sys.executable, "-m", "uvicorn", *argv],
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


async def ready(http: httpx.AsyncClient, path: str, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(300):
        if proc.poll() is not None:
            raise SystemExit(f"server exited {proc.returncode}")
        with contextlib.suppress(httpx.TransportError):
            if (await http.get(path)).status_code < 500:
                return
        await asyncio.sleep(0.1)
    raise SystemExit("server not ready")


async def run(args: argparse.Namespace, workdir: Path, redis_url: str) -> None:
    os.sched_setaffinity(0, {0})
    db_url = f"sqlite+aiosqlite:///{workdir / 'gw.db'}"
    key = secrets.token_urlsafe(32)
    settings = Settings(
        _env_file=None,
        database_url=db_url,
        redis_url=redis_url,
        secret_key=key,
        public_base_url=BASE,
        twilio_auth_token=AUTH_TOKEN,
    )
    n = args.calls
    total = n * (args.rounds + 1) + args.warmup + args.held
    await seed(settings, total)
    env = {
        **os.environ,
        "GATEWAY_DATABASE_URL": db_url,
        "GATEWAY_REDIS_URL": redis_url,
        "GATEWAY_SECRET_KEY": key,
        "GATEWAY_PUBLIC_BASE_URL": BASE,
        "GATEWAY_TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "GATEWAY_MESSENGER": "outbox",
        "GATEWAY_LOG_LEVEL": os.environ.get("GATEWAY_LOG_LEVEL", "INFO"),
        **{f"GATEWAY_RATE_LIMIT_{name}": str(10**9) for name in LIMITS},
    }
    (workdir / "floor_app.py").write_text(
        FLOOR_APP.replace("{token}", AUTH_TOKEN).replace("{base}", BASE)
    )
    gw_port, floor_port = free_port(), free_port()
    common = ["--host", "127.0.0.1", "--log-level", "warning", "--no-access-log"]
    gw = start(
        ["gateway.app:create_app", "--factory", "--port", str(gw_port), *common],
        env,
        workdir / "gw.log",
    )
    floor_env = {**os.environ, "PYTHONPATH": str(workdir)}
    fl = start(
        ["floor_app:app", "--port", str(floor_port), *common], floor_env, workdir / "floor.log"
    )
    engine = create_engine(db_url)
    sm = create_sessionmaker(engine)
    keyring = Keyring(settings)
    redis = Redis.from_url(redis_url)
    table: dict[str, list[float]] = {}
    next_i = 0
    profiler: subprocess.Popen[bytes] | None = None
    try:
        async with (
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw_port}", timeout=60) as http,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{floor_port}", timeout=60) as fhttp,
        ):
            await ready(http, "/readyz", gw)
            await ready(fhttp, "/docs", fl)

            async def recovery(calls: list[Call], label_prefix: str, record: bool) -> None:
                nonlocal profiler
                steps = [
                    ("voice", lambda c: c.load("/ivr/voice", c.params(CallStatus="ringing"))),
                    ("purpose", lambda c: c.press("1")),
                    ("account", lambda c: c.press(account(c.i) + "#")),
                    ("repeat*", lambda c: c.press("*")),
                    ("confirm", lambda c: c.press("1")),
                    ("method", lambda c: c.press("1")),
                    ("code", None),
                    ("status", lambda c: c.post("/ivr/status", c.params(CallStatus="completed"))),
                ]
                codes: dict[str, str] = {}
                for name, action in steps:
                    if name == "code":
                        for c in calls:
                            codes[c.sid] = await code_for(sm, keyring, mobile(c.i))

                        async def press_code(c: Call) -> None:
                            await c.press(codes[c.sid])
                            if not any(s.text and "Группа" in s.text for s in c.twiml.iter("Say")):
                                raise RuntimeError("no password after the code")

                        action = press_code
                    work = lambda a=action: gather(calls, a)  # noqa: E731
                    if record:
                        if name in args.profile.split(","):
                            profiler = subprocess.Popen(  # noqa: S603, ASYNC220
                                [
                                    os.environ.get("PYSPY", "py-spy"),
                                    "record",
                                    "-r",
                                    "500",
                                    "-o",
                                    f"{args.profile_out}.{name}",
                                    "-f",
                                    "raw",
                                    "-p",
                                    str(gw.pid),
                                    *(["--native"] if os.environ.get("NATIVE") else []),
                                ],
                                stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL,
                            )
                            await asyncio.sleep(1.0)
                        await measure(gw.pid, name, len(calls), work, table)
                        if profiler is not None:
                            profiler.send_signal(2)
                            profiler.wait(30)
                            profiler = None
                    else:
                        await work()

            async def floor_round() -> None:
                c = Call(fhttp, 0)
                await gather(range(n), lambda _: c.post("/floor", c.params(Digits="1")))

            # Warm-up: a few recoveries and floor requests.
            warm = [Call(http, next_i + i) for i in range(args.warmup)]
            next_i += args.warmup
            await recovery(warm, "", record=False)
            await floor_round()
            for _ in range(args.rounds):
                await measure(fl.pid, "floor", n, floor_round, table)
                calls = [Call(http, next_i + i) for i in range(n)]
                next_i += n
                await recovery(calls, "", record=True)
                await measure(fl.pid, "floor", n, floor_round, table)

            # Redis bytes per call held just after the code was sent.
            if args.held:
                await redis.flushall()  # rate-limit logs of earlier rounds out
                await asyncio.sleep(0.2)
                before = int((await redis.info("memory"))["used_memory_dataset"])
                held = [Call(http, next_i + i) for i in range(args.held)]
                next_i += args.held

                async def to_code(c: Call) -> None:
                    await c.load("/ivr/voice", c.params(CallStatus="ringing"))
                    for keys in ("1", account(c.i) + "#", "1", "1"):
                        await c.press(keys)

                await gather(held, to_code)
                await asyncio.sleep(0.5)
                after = int((await redis.info("memory"))["used_memory_dataset"])
                by_prefix: dict[str, list[int]] = {}
                async for k in redis.scan_iter(count=1000):
                    prefix = k.decode().split(":", 1)[0]
                    entry = by_prefix.setdefault(prefix, [0, 0])
                    entry[0] += 1
                    entry[1] += int(await redis.memory_usage(k) or 0)
                print(
                    f"redis: {args.held} held calls, used_memory_dataset +{after - before} B "
                    f"= {(after - before) / args.held:.0f} B/call"
                )
                for prefix, (keys, size) in sorted(by_prefix.items()):
                    print(
                        f"  {prefix:<12} keys {keys:>6}  "
                        f"MEMORY USAGE {size / args.held:>7.0f} B/call"
                    )
    except Exception:
        print((workdir / "gw.log").read_text()[-3000:])
        raise
    finally:
        for proc in (gw, fl):
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        await redis.aclose()
        await engine.dispose()

    if "floor" not in table:
        return
    floor = sorted(table.pop("floor"))
    floor_ms = floor[len(floor) // 2]
    print(f"floor {floor_ms:.3f} ms/request (runs: {', '.join(f'{v:.3f}' for v in floor)})")
    print(f"{'step':<10}{'ms CPU':>9}{'x floor':>9}")
    whole = 0.0
    for name, values in table.items():
        ms = sorted(values)[len(values) // 2]
        whole += ms
        print(f"{name:<10}{ms:>9.3f}{ms / floor_ms:>9.1f}")
    print(f"{'whole':<10}{whole:>9.3f}{whole / floor_ms:>9.1f}  (repeat* counted once)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--held", type=int, default=0)
    parser.add_argument("--profile", default="")
    parser.add_argument(
        "--profile-out",
        type=Path,
        default=Path(tempfile.gettempdir()) / "profile.txt",
        help="py-spy raw profiles go to PATH.<step>",
    )
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    global CONCURRENCY
    CONCURRENCY = args.concurrency
    with tempfile.TemporaryDirectory(prefix="cpu-steps-") as tmp, redis_server(Path(tmp)) as url:
        asyncio.run(run(args, Path(tmp), url))


if __name__ == "__main__":
    main()
