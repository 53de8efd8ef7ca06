"""Graceful shutdown: SIGTERM to a real uvicorn process finishes what is in flight, loses nothing.

The gateway runs as production does (its own uvicorn process), sending through the real Twilio
client to the contract mock behind the fault proxy. At SIGTERM one webhook is half received (its
body still coming) and one outbound SMS is held open at the proxy; a retry is pending in the
outbox. The webhook must be answered 200 with TwiML, the SMS must complete (once), the retry
must still be queued for the next process, and the process must exit cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import sys
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from datetime import timedelta
from urllib.parse import urlencode

import httpx
import pytest
from sqlalchemy import select

from core.models import OutboundChannel, OutboxMessage
from core.platform.clock import utcnow
from core.platform.crypto import Keyring
from core.platform.db import create_engine, create_sessionmaker, transaction
from core.platform.settings import Settings
from tests.conftest import (
    AUTH_TOKEN,
    MOBILE,
    MOBILE_ONLY,
    PUBLIC_BASE_URL,
    SECOND_MOBILE,
    TWO_MOBILES_EMAIL,
    seed_accounts,
)
from tests.support.servers import free_port
from tests.support.twilio_driver import Phone, Twilio, sign
from tests.support.twilio_fault_proxy import FaultProxy

ACCOUNT_SID = "AC0123456789abcdef0123456789abcdef"
# Bounds for waiting on the other process; never assertions about how long things took.
WAIT_SECONDS = 30.0


@pytest.fixture
async def proxy(twilio_mock_url: str) -> AsyncIterator[FaultProxy]:
    fault_proxy = FaultProxy(twilio_mock_url)
    await fault_proxy.start()
    yield fault_proxy
    await fault_proxy.stop()


async def rows(settings: Settings) -> list[OutboxMessage]:
    engine = create_engine(settings.database_url)
    async with create_sessionmaker(engine)() as session:
        found = list(
            (await session.scalars(select(OutboxMessage).order_by(OutboxMessage.id))).all()
        )
    await engine.dispose()
    return found


async def queue_retries(settings: Settings) -> None:
    """Two notices waiting for a retry: one due now (the sweeper sends it at start-up), one due
    in an hour (it must survive the shutdown, queued for the next process)."""
    engine = create_engine(settings.database_url)
    async with transaction(create_sessionmaker(engine)) as session:
        for to, due in ((MOBILE, utcnow()), (SECOND_MOBILE, utcnow() + timedelta(hours=1))):
            session.add(
                OutboxMessage(
                    channel=OutboundChannel.sms,
                    to_number=to,
                    from_number=settings.sms_number,
                    body=Keyring(settings).seal("ЕИРЦ: уведомление"),
                    purpose="notice",
                    idempotency_key=secrets.token_hex(16),
                    attempts=1,
                    error_code="http_503",
                    reason="retrying",
                    next_attempt_at=due,
                )
            )
    await engine.dispose()


def sms_form(sender: str, body: str) -> dict[str, str]:
    return {
        "AccountSid": "AC" + "0" * 32,
        "ApiVersion": "2010-04-01",
        "MessageSid": "SM" + secrets.token_hex(16),
        "From": sender,
        "To": "+78005550101",
        "Body": body,
        "NumMedia": "0",
        "NumSegments": "1",
    }


async def refuses_connections(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return True
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return False


async def test_sigterm_finishes_in_flight_webhooks_and_sends_and_loses_nothing(
    settings: Settings, redis_url: str, proxy: FaultProxy
) -> None:
    await seed_accounts(settings)
    await queue_retries(settings)
    # Every request is held open at "Twilio" until released; the first (the sweeper's) longest.
    proxy.plan, proxy.default = ["hold_later"], "hold"
    port = free_port()
    env = {
        **os.environ,
        "GATEWAY_DATABASE_URL": settings.database_url,
        "GATEWAY_REDIS_URL": redis_url,
        "GATEWAY_PUBLIC_BASE_URL": PUBLIC_BASE_URL,
        "GATEWAY_TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "GATEWAY_TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "GATEWAY_MESSENGER": "twilio",
        "GATEWAY_TWILIO_API_URL": proxy.url,
        "GATEWAY_DISPATCH_DELAY_MS": "0",
        "GATEWAY_OUTBOX_SHUTDOWN_GRACE_SECONDS": "10",
        "GATEWAY_LOG_LEVEL": "WARNING",
    }
    log = bytearray()

    async def collect(stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(4096):
            log.extend(chunk)

    server = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "uvicorn", "gateway.app:create_app", "--factory"),
        *("--host", "127.0.0.1", "--port", str(port), "--log-level", "info"),
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    assert server.stderr is not None
    collector = asyncio.create_task(collect(server.stderr))
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            for _ in range(400):
                try:
                    await http.get("/healthz")
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
            # 1. The sweeper's retry of the due notice is held at the proxy; so is the code SMS
            # of a recovery request (the mobile on file: the code SMS is the reply, the webhook's
            # answer is empty and comes at once).
            await asyncio.wait_for(proxy.wait_for(1), WAIT_SECONDS)
            assert proxy.seen[0].form["Body"] == "ЕИРЦ: уведомление"
            phone = Phone(Twilio(http, PUBLIC_BASE_URL, AUTH_TOKEN), MOBILE)
            assert await phone.text(f"ВОССТАНОВИТЬ {MOBILE_ONLY}") == []
            await asyncio.wait_for(proxy.wait_for(2), WAIT_SECONDS)

        # 2. A second webhook, half received: headers and half the body are in.
        form = sms_form(SECOND_MOBILE, f"ВОССТАНОВИТЬ {TWO_MOBILES_EMAIL}")
        body = urlencode(form).encode()
        signature = sign(AUTH_TOKEN, f"{PUBLIC_BASE_URL}/sms/inbound", form)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            (
                f"POST /sms/inbound HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                "Content-Type: application/x-www-form-urlencoded\r\n"
                f"Content-Length: {len(body)}\r\nX-Twilio-Signature: {signature}\r\n\r\n"
            ).encode()
            + body[: len(body) // 2]
        )
        await writer.drain()
        await asyncio.sleep(0.5)  # let the idle server read what was sent so far

        # 3. SIGTERM: the server stops accepting new connections...
        server.send_signal(signal.SIGTERM)
        for _ in range(int(WAIT_SECONDS / 0.05)):
            if await refuses_connections(port):
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the server kept accepting connections after SIGTERM")
        assert server.returncode is None  # ...but is still finishing what it started

        # 4. The rest of the half-received webhook arrives and is answered properly.
        writer.write(body[len(body) // 2 :])
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), WAIT_SECONDS)
        writer.close()
        head, _, payload = response.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        assert ET.fromstring(payload).tag == "Response"

        # 5. Twilio answers the two requests' SMS: uvicorn has waited for them, and now runs
        # the lifespan's shutdown, which must wait for the sweeper's send still in flight.
        assert server.returncode is None
        proxy.release.set()
        for _ in range(int(WAIT_SECONDS / 0.05)):
            if b"Waiting for application shutdown" in log:
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the lifespan shutdown did not start")
        assert server.returncode is None
        proxy.release_later.set()
        # uvicorn re-raises the SIGTERM it caught once it has shut down gracefully.
        assert await asyncio.wait_for(server.wait(), WAIT_SECONDS) in (0, -signal.SIGTERM)
    finally:
        if server.returncode is None:
            server.kill()
            await server.wait()
        await asyncio.wait_for(collector, WAIT_SECONDS)
    # The lifespan's shutdown ran to its end (the dispatcher closed), not a kill.
    text = log.decode("utf-8", "replace")
    assert "Application shutdown complete" in text, text[-2000:]

    # Nothing lost, nothing twice: the retry and both codes sent once, the later retry queued.
    found = await rows(settings)
    by_purpose = [(row.purpose, row.to_number, row.status) for row in found]
    assert sorted(by_purpose) == sorted(
        [
            ("notice", MOBILE, "sent"),
            ("notice", SECOND_MOBILE, "queued"),
            ("code", MOBILE, "sent"),
            ("code", SECOND_MOBILE, "sent"),
        ]
    )
    assert all(row.provider_sid for row in found if row.status == "sent")
    pending = next(row for row in found if row.status == "queued")
    assert (pending.attempts, pending.claim_token) == (1, None)
    creates = proxy.creates()
    assert sorted(seen.form["To"] for seen in creates) == sorted([MOBILE, MOBILE, SECOND_MOBILE])
