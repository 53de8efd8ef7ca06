"""Added latency of the recovery steps that ask the accounts directory (issue 12, DESIGN §11).

Runs the gateway in-process (signed webhooks through its ASGI app, real Redis) against the
reference cabinet over real HTTP on loopback, and against the SQL directory, for the same
recoveries, and prints the wall time of the two steps that ask the directory: confirming the
account number (a look-up) and the code (a look-up and, with the cabinet, the signed PUT). The
look-up floor (GATEWAY_DIRECTORY_MIN_LOOKUP_MS) is set to 0 so the cabinet's own cost shows;
production adds the floor on purpose (§6.2). Wall time on a shared machine: indicative only.

    uv run python -m benchmarks.cabinet_latency [--recoveries 100]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import re
import statistics
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import urljoin

import httpx

from core.accounts.importer import import_accounts_csv
from core.platform.db import create_engine, create_sessionmaker, transaction
from core.platform.migrate import upgrade_database
from core.platform.settings import DirectoryKind, MessengerKind, Settings
from gateway.app import create_app
from gateway.simulator.servers import cabinet_settings, redis_server, serve_cabinet
from gateway.simulator.transport import WebhookClient, new_sid

AUTH_TOKEN = "bench-auth-token-0123456789abcdef"
PUBLIC_BASE_URL = "https://hotline.eirc.example"
ACCOUNT = "1000000001"
MOBILE = "+79123456789"
ACCOUNTS_CSV = f"""account_number,login,full_name,phones,email
{ACCOUNT},ivanova.mv,Иванова Мария Викторовна,{MOBILE},
"""
CODE = re.compile(r"\b(\d{6})\b")


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


class CodeCatcher:
    """A messenger that sends nothing and keeps the last SMS (the code arrives in it)."""

    keeps_messages = False

    def __init__(self) -> None:
        self.last_sms = ""

    async def send_sms(self, *, to: str, body: str, purpose: str) -> str:
        self.last_sms = body
        return new_sid("SM")

    async def place_call(self, *, to: str, url: str, purpose: str) -> str:
        return new_sid("CA")


class Call:
    """One call through the voice webhooks: each key press answers the current Gather."""

    def __init__(self, client: WebhookClient) -> None:
        self.client = client
        self.sid = new_sid("CA")
        self.path = "/ivr/voice"
        self.action: str | None = None

    async def post(self, path: str, **extra: str) -> None:
        params = {
            "AccountSid": "AC" + "0" * 32,
            "ApiVersion": "2010-04-01",
            "CallSid": self.sid,
            "CallStatus": "in-progress",
            "Direction": "inbound",
            "From": MOBILE,
            "To": "+78005550100",
            **extra,
        }
        response = await self.client.post(path, params)
        response.raise_for_status()
        gather = ET.fromstring(response.text).find("Gather")  # noqa: S314 - our own TwiML
        self.path, self.action = path, gather.get("action") if gather is not None else None

    async def press(self, digits: str) -> None:
        assert self.action, f"no Gather after {self.path}"
        await self.post(urljoin(self.path, self.action), Digits=digits)


async def _seed(settings: Settings) -> None:
    await upgrade_database(settings.database_url)
    engine = create_engine(settings.database_url)
    async with transaction(create_sessionmaker(engine)) as session:
        await import_accounts_csv(session, io.StringIO(ACCOUNTS_CSV), settings)
    await engine.dispose()


async def _run(settings: Settings, recoveries: int) -> dict[str, list[float]]:
    await _seed(settings)
    messenger = CodeCatcher()
    app = create_app(settings, messenger=messenger)
    timings: dict[str, list[float]] = {"confirm": [], "code": []}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            client = WebhookClient(http, PUBLIC_BASE_URL, AUTH_TOKEN)
            for _ in range(recoveries):
                call = Call(client)
                await call.post("/ivr/voice", CallStatus="ringing")
                await call.press("1")
                await call.press(ACCOUNT + "#")
                started = time.perf_counter()
                await call.press("1")
                timings["confirm"].append(time.perf_counter() - started)
                await call.press("1")
                match = CODE.search(messenger.last_sms)
                assert match
                started = time.perf_counter()
                await call.press(match.group(1))
                timings["code"].append(time.perf_counter() - started)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recoveries", type=int, default=100)
    args = parser.parse_args()
    from core.accounts.passwords import use_fast_hashing_for_tests

    # The hash is the same work for both directories; leave it out of the comparison.
    use_fast_hashing_for_tests()
    limits = {
        "rate_limit_caller_starts_per_hour": 10**6,
        "rate_limit_account_sends_per_hour": 10**6,
        "rate_limit_account_sends_per_day": 10**6,
        "rate_limit_destination_sends_per_hour": 10**6,
        "rate_limit_prefix_sends_per_hour": 10**6,
        "rate_limit_global_outbound_per_hour": 10**6,
        "failed_verifications_per_day": 50,
        "code_resend_cooldown_seconds": 0,
        "dispatch_delay_ms": 0,
    }
    with tempfile.TemporaryDirectory() as work, redis_server(Path(work)) as redis_url:
        results = {}
        for kind in (DirectoryKind.sql, DirectoryKind.http):
            base = Settings(
                _env_file=None,
                database_url=f"sqlite+aiosqlite:///{work}/{kind}.db",
                redis_url=redis_url,
                public_base_url=PUBLIC_BASE_URL,
                twilio_auth_token=AUTH_TOKEN,
                messenger=MessengerKind.outbox,
                log_level="WARNING",
                **limits,  # type: ignore[arg-type]
            )
            if kind is DirectoryKind.http:
                with serve_cabinet(Path(work) / "cabinet", ACCOUNTS_CSV) as cabinet:
                    settings = cabinet_settings(base, cabinet).model_copy(
                        update={"directory_min_lookup_ms": 0}
                    )
                    results[kind] = asyncio.run(_run(settings, args.recoveries))
            else:
                results[kind] = asyncio.run(_run(base, args.recoveries))
    for step in ("confirm", "code"):
        sql, http = results[DirectoryKind.sql][step], results[DirectoryKind.http][step]
        print(
            f"step={step} sql_p50_ms={statistics.median(sql) * 1000:.1f} "
            f"sql_p99_ms={_percentile(sql, 0.99) * 1000:.1f} "
            f"http_p50_ms={statistics.median(http) * 1000:.1f} "
            f"http_p99_ms={_percentile(http, 0.99) * 1000:.1f} "
            f"added_p50_ms={(statistics.median(http) - statistics.median(sql)) * 1000:.1f}"
        )


if __name__ == "__main__":
    main()
