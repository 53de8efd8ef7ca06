"""Where a voice recovery's CPU goes, step by step: the profile behind docs/performance.md.

    uv run python -m benchmarks.anatomy [--calls 30]

In one process, with no HTTP server and no load generator: the gateway app (embedded defaults:
SQLite file, real redis-server, outbox messenger, SQL directory, §5's Argon2id parameters) is
called as an ASGI app, one recovery after another. For each step it reports the process's CPU
(every thread: the database driver's and the hash pool's too; uvicorn's share is not in it, so
`benchmarks.run` gives the ratios to the floor), the SQL statements and commits it ran and the
Redis round trips it made (a pipeline or a script is one).

One call at a time is the lone resident's path: each send is drained by itself, while the
benchmark's concurrent requests share their drains. Figures are reported, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

from benchmarks.calls import AUTH_TOKEN, PUBLIC_BASE_URL, STEPS, Call, Outbox, accounts_csv
from benchmarks.run import RATE_LIMITS


class Tally:
    """SQL statements, commits and Redis round trips of the step being measured."""

    def __init__(self) -> None:
        self.step: str | None = None
        self.statements: collections.Counter[str] = collections.Counter()
        self.commits: collections.Counter[str] = collections.Counter()
        self.round_trips: collections.Counter[str] = collections.Counter()

    def count_round_trips(self) -> None:
        """Count what redis-py writes to a connection: one command, or one pipeline."""
        from redis.asyncio.connection import AbstractConnection

        send = AbstractConnection.send_packed_command
        tally = self

        async def counted(connection: Any, command: Any, check_health: bool = True) -> None:
            if tally.step is not None:
                tally.round_trips[tally.step] += 1
            await send(connection, command, check_health)

        AbstractConnection.send_packed_command = counted  # type: ignore[assignment,method-assign]

    def statement(self, *_: Any) -> None:
        if self.step is not None:
            self.statements[self.step] += 1

    def commit(self, *_: Any) -> None:
        if self.step is not None:
            self.commits[self.step] += 1


async def asgi_post(app: Any, raw: bytes) -> tuple[int, bytes]:
    """Hand the bytes of one signed POST to an ASGI app; its status and body."""
    head, body = raw.split(b"\r\n\r\n", 1)
    request_line, *header_lines = head.split(b"\r\n")
    target = request_line.split(b" ")[1]
    path, _, query = target.partition(b"?")
    headers = [
        (name.strip().lower(), value.strip())
        for name, value in (line.split(b":", 1) for line in header_lines)
    ]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path.decode(),
        "raw_path": path,
        "query_string": query,
        "root_path": "",
        "headers": headers,
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
    }
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()
        return {}

    messages: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    await app(scope, receive, send)
    return messages[0]["status"], b"".join(m.get("body", b"") for m in messages[1:])


async def run(calls: int, workdir: Path, redis_url: str) -> None:
    os.environ.update(
        {
            "GATEWAY_DATABASE_URL": f"sqlite+aiosqlite:///{workdir / 'anatomy.db'}",
            "GATEWAY_REDIS_URL": redis_url,
            "GATEWAY_PUBLIC_BASE_URL": PUBLIC_BASE_URL,
            "GATEWAY_TWILIO_AUTH_TOKEN": AUTH_TOKEN,
            "GATEWAY_MESSENGER": "outbox",
            "GATEWAY_DIRECTORY": "sql",
            "GATEWAY_LOG_LEVEL": "WARNING",
            **{f"GATEWAY_RATE_LIMIT_{name}": str(10**9) for name in RATE_LIMITS},
        }
    )
    import io

    from core.accounts.importer import import_accounts_csv
    from core.platform.db import create_engine, create_sessionmaker, transaction
    from core.platform.migrate import upgrade_database
    from core.platform.settings import Settings
    from gateway.app import create_app

    settings = Settings()
    await upgrade_database(settings.database_url)
    engine = create_engine(settings.database_url)
    async with transaction(create_sessionmaker(engine)) as session:
        await import_accounts_csv(session, io.StringIO(accounts_csv(0, calls + 3)), settings)
    await engine.dispose()

    tally = Tally()
    event.listen(Engine, "before_cursor_execute", tally.statement)
    event.listen(Engine, "commit", tally.commit)
    tally.count_round_trips()
    app = create_app(settings)
    outbox = Outbox(settings)
    cpu: dict[str, float] = collections.defaultdict(float)

    async def recovery(index: int, measured: bool) -> None:
        call = Call(index)
        for step in STEPS:
            if step == "code":
                while call.phone not in outbox.codes:
                    await outbox.poll()
                call.code = outbox.codes.pop(call.phone)
            raw = call.request(step)
            tally.step = step if measured else None
            started = time.process_time()
            status, body = await asgi_post(app, raw)  # the drain runs before this returns
            spent = time.process_time() - started
            tally.step = None
            if measured:
                cpu[step] += spent
            problem = call.answer(step, status, body)
            if problem is not None:
                sys.exit(f"{step}: {problem}")

    async with app.router.lifespan_context(app):
        for index in range(3):
            await recovery(index, measured=False)
        for index in range(3, 3 + calls):
            await recovery(index, measured=True)
    await outbox.close()

    print(f"{calls} recoveries, one at a time: per webhook, with the sends it caused")
    print(f"{'step':10} {'CPU ms':>8} {'SQL':>5} {'commits':>8} {'Redis trips':>12}")
    whole = 0.0
    for step in STEPS:
        ms = cpu[step] * 1000 / calls
        whole += ms
        print(
            f"{step:10} {ms:8.2f} {tally.statements[step] / calls:5.1f}"
            f" {tally.commits[step] / calls:8.1f} {tally.round_trips[step] / calls:12.1f}"
        )
    statements = sum(tally.statements.values()) / calls
    commits = sum(tally.commits.values()) / calls
    redis_total = sum(tally.round_trips.values()) / calls
    print(f"{'whole':10} {whole:8.2f} {statements:5.1f} {commits:8.1f} {redis_total:12.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=30)
    options = parser.parse_args()
    from gateway.simulator.servers import redis_server

    with tempfile.TemporaryDirectory() as directory, redis_server(Path(directory)) as redis_url:
        asyncio.run(run(options.calls, Path(directory), redis_url))


if __name__ == "__main__":
    main()
