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
import statistics
import tempfile
import time
from pathlib import Path

from core.config import DirectoryKind, MessengerKind, Settings
from tests.conftest import AUTH_TOKEN, MOBILE, MOBILE_ONLY, PUBLIC_BASE_URL, seed_accounts
from tests.support.cabinet_server import cabinet_settings, serve_cabinet
from tests.support.servers import redis_server


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


async def _run(settings: Settings, recoveries: int) -> dict[str, list[float]]:
    import httpx

    from gateway.app import create_app
    from tests.ivr.test_webhooks import CODE
    from tests.support.fakes import RecordingMessenger
    from tests.support.twilio_driver import Call, Twilio

    await seed_accounts(settings)
    messenger = RecordingMessenger()
    app = create_app(settings, messenger=messenger)
    timings: dict[str, list[float]] = {"confirm": [], "code": []}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            twilio = Twilio(http, PUBLIC_BASE_URL, AUTH_TOKEN)
            for _ in range(recoveries):
                call = Call(twilio, caller=MOBILE)
                await call.start()
                await call.press("1")
                await call.press(MOBILE_ONLY + "#")
                started = time.perf_counter()
                await call.press("1")
                timings["confirm"].append(time.perf_counter() - started)
                await call.press("1")
                match = CODE.search(messenger.to(MOBILE)[-1].body)
                assert match
                started = time.perf_counter()
                await call.press(match.group(1))
                timings["code"].append(time.perf_counter() - started)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recoveries", type=int, default=100)
    args = parser.parse_args()
    from core.passwords import use_fast_hashing_for_tests

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
                with serve_cabinet(Path(work) / "cabinet") as cabinet:
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
