"""Redis and the database failing under a live call, for real (§7, docs/operations.md "Faults").

Unlike tests/security/test_redis_failures.py, which injects failures into chosen commands, these
tests take the real dependency away: a redis-server of the test's own is stopped and started again
on the same port, and the real PostgreSQL server is reached through a TCP proxy that can refuse
connections or stall them (accept, then never answer: the network fault a timeout is for).

What must hold: the caller hears the apology and is transferred to the operator (which needs no
state); every webhook answers inside Twilio's 15 s with the production timeouts; /readyz is 503
naming the dependency, and nothing else; and the service comes back by itself with the
dependency, with no restart of the gateway.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import ExitStack, asynccontextmanager
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy.engine import make_url

from core.platform.settings import Settings
from gateway.app import create_app
from tests.conftest import MOBILE, MOBILE_ONLY, Gateway, seed_accounts
from tests.ivr.test_webhooks import assert_operator_dial, ru
from tests.security.test_redis_failures import sms_reply
from tests.support.fakes import RecordingMessenger
from tests.support.servers import free_port, redis_server
from tests.support.twilio_driver import Call, Phone, Twilio

# Twilio hangs up on a webhook that has not answered in 15 s: the bound every answer must meet
# with the production timeouts (GATEWAY_REDIS_TIMEOUT_SECONDS, GATEWAY_DATABASE_TIMEOUT_SECONDS).
TWILIO_SECONDS = 15.0

T = TypeVar("T")


class TcpProxy:
    """A loopback TCP forwarder to a real server, which can refuse or stall its clients."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def up(self) -> None:
        """Listen (again) on the same port and forward."""
        self._flowing.set()
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, reuse_address=True
        )

    def stall(self) -> None:
        """Keep every connection open, new and old, but forward nothing: a black hole."""
        self._flowing.clear()

    def resume(self) -> None:
        """Forward again (what was held goes through)."""
        self._flowing.set()

    async def down(self) -> None:
        """Stop listening and cut every connection: the server is unreachable."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        self._writers.add(client_out)
        try:
            await self._flowing.wait()
            server_in, server_out = await asyncio.open_connection(*self.target)
        except (OSError, asyncio.CancelledError):
            client_out.transport.abort()
            self._writers.discard(client_out)
            return
        self._writers.add(server_out)
        for source, sink in ((client_in, server_out), (server_in, client_out)):
            task = asyncio.create_task(self._pipe(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                await self._flowing.wait()
                sink.write(data)
                await sink.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            sink.transport.abort()
            self._writers.discard(sink)


@asynccontextmanager
async def proxy_to(url: str) -> AsyncIterator[TcpProxy]:
    """A proxy in front of the host and port of a server URL, stopped afterwards."""
    parsed = make_url(url)
    proxy = TcpProxy(parsed.host or "127.0.0.1", int(parsed.port or 0))
    await proxy.up()
    try:
        yield proxy
    finally:
        await proxy.down()


def via(url: str, proxy: TcpProxy) -> str:
    """The same URL, through the proxy."""
    return make_url(url).set(host="127.0.0.1", port=proxy.port).render_as_string(False)


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[Gateway]:
    """The real app with its lifespan on these settings (production timeouts unless set)."""
    messenger = RecordingMessenger()
    app = create_app(settings, messenger=messenger)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw.internal") as http:
            twilio = Twilio(
                http, settings.public_base_url, settings.twilio_auth_token.get_secret_value()
            )
            yield Gateway(app, twilio, messenger, settings)


async def in_time(step: Awaitable[T]) -> T:
    """Await one webhook (or probe) as Twilio would: it must answer within Twilio's limit."""
    async with asyncio.timeout(TWILIO_SECONDS):
        return await step


async def readiness(gateway: Gateway) -> tuple[int, str]:
    response = await in_time(gateway.twilio.http.get("/readyz"))
    return response.status_code, response.text


async def at_account_confirm(gateway: Gateway) -> Call:
    """A call that has keyed its account number and is asked to confirm it."""
    call = gateway.call()
    await in_time(call.start())
    await in_time(call.press("1"))
    await in_time(call.press(MOBILE_ONLY + "#"))
    assert call.gather.get("numDigits") == "1", call.text
    return call


def assert_apology_and_operator(call: Call, gateway: Gateway) -> None:
    assert ru("voice.error_apology") in call.text, call.text
    assert call.twiml.find("Gather") is None
    assert_operator_dial(call, gateway)


async def assert_service_is_back(gateway: Gateway) -> None:
    """A new call goes through the menu to the method choice (Redis and the database both)."""
    call = await at_account_confirm(gateway)
    await in_time(call.press("1"))
    assert ru("voice.method_choice") in call.text, call.text
    assert await readiness(gateway) == (200, "ready")


# --- Redis ---------------------------------------------------------------------------------------


async def test_redis_stopped_mid_call_then_started_again(
    settings: Settings, tmp_path: Path
) -> None:
    port = free_port()
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    with ExitStack() as redis_up:
        url = redis_up.enter_context(redis_server(first, port))
        settings = settings.model_copy(update={"redis_url": url})
        await seed_accounts(settings)
        async with serving(settings) as gateway:
            call = await at_account_confirm(gateway)
            redis_up.close()  # the server process is gone

            await in_time(call.press("1"))
            assert_apology_and_operator(call, gateway)
            assert await readiness(gateway) == (503, "unavailable: redis")
            fresh = gateway.call()
            await in_time(fresh.start())
            assert_apology_and_operator(fresh, gateway)
            phone = Phone(gateway.twilio, MOBILE)
            replies = await in_time(phone.text(f"ВОССТАНОВИТЬ {MOBILE_ONLY}"))
            assert replies == [sms_reply("sms.reply_error")]
            assert gateway.messenger.sent == []

            # Started again on the same port, empty: the gateway reconnects by itself.
            with redis_server(second, port):
                await assert_service_is_back(gateway)


async def test_a_stalled_redis_is_an_apology_in_time(
    settings: Settings, redis_url: str, redis: Redis
) -> None:
    async with proxy_to(redis_url) as proxy:
        settings = settings.model_copy(update={"redis_url": via(redis_url, proxy)})
        assert settings.redis_timeout_seconds == Settings(_env_file=None).redis_timeout_seconds
        await seed_accounts(settings)
        async with serving(settings) as gateway:
            call = await at_account_confirm(gateway)
            # Pooled connections that worked a moment ago, as on a gateway that has been serving.
            assert await readiness(gateway) == (200, "ready")
            proxy.stall()
            try:
                await in_time(call.press("1"))
                assert_apology_and_operator(call, gateway)
                assert await readiness(gateway) == (503, "unavailable: redis")
            finally:
                proxy.resume()
            await assert_service_is_back(gateway)


# --- the database (PostgreSQL, whatever the suite runs on) ----------------------------------------


@pytest.fixture
def postgres_url_for_test(
    new_postgres_database: Callable[[str], str], migrated_postgres_template: str
) -> str:
    """A migrated PostgreSQL database of this test's own."""
    return new_postgres_database(migrated_postgres_template)


async def test_the_database_unreachable_mid_call_then_back(
    settings: Settings, redis: Redis, postgres_url_for_test: str
) -> None:
    async with proxy_to(postgres_url_for_test) as proxy:
        settings = settings.model_copy(update={"database_url": via(postgres_url_for_test, proxy)})
        await seed_accounts(settings)
        async with serving(settings) as gateway:
            call = await at_account_confirm(gateway)
            assert await readiness(gateway) == (200, "ready")
            await proxy.down()

            await in_time(call.press("1"))
            assert_apology_and_operator(call, gateway)
            status, body = await readiness(gateway)
            assert (status, body) == (503, "unavailable: database")
            assert str(proxy.port) not in body and "postgres" not in body

            await proxy.up()
            await assert_service_is_back(gateway)


async def test_a_stalled_database_is_an_apology_in_time(
    settings: Settings, redis: Redis, postgres_url_for_test: str
) -> None:
    async with proxy_to(postgres_url_for_test) as proxy:
        settings = settings.model_copy(update={"database_url": via(postgres_url_for_test, proxy)})
        default = Settings(_env_file=None).database_timeout_seconds
        assert settings.database_timeout_seconds == default
        await seed_accounts(settings)
        async with serving(settings) as gateway:
            call = await at_account_confirm(gateway)
            # Pooled connections that worked a moment ago, as on a gateway that has been serving.
            assert await readiness(gateway) == (200, "ready")
            proxy.stall()
            try:
                await in_time(call.press("1"))
                assert_apology_and_operator(call, gateway)
                assert await readiness(gateway) == (503, "unavailable: database")
            finally:
                proxy.resume()
            await assert_service_is_back(gateway)
