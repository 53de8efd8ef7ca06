"""Scale-out (§7): two gateway processes share one PostgreSQL and one Redis, and a caller whose
webhooks alternate between them completes a recovery, by voice and by SMS.

The processes are real uvicorn servers on loopback, started as production starts them (the
`gateway.app:create_app` factory reading GATEWAY_* variables), with the outbox messenger so the
codes can be read back from the shared database. Every webhook is signed for the one public base
URL both processes are configured with, as Twilio signs it behind a load balancer.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import select

from core.accounts.directory import SqlAccountDirectory
from core.delivery.outbox import readable_body
from core.models import OutboxMessage
from core.platform.crypto import Keyring
from core.platform.db import create_engine, create_sessionmaker, transaction
from core.platform.settings import MessengerKind, Settings
from tests.conftest import AUTH_TOKEN, MOBILE, MOBILE_ONLY, PUBLIC_BASE_URL, seed_accounts
from tests.support.servers import (
    REPO_ROOT,
    PostgresDatabases,
    ServerProcess,
    free_port,
    in_own_thread,
)
from tests.support.twilio_driver import Call, Phone, Twilio

START_SECONDS = 60.0
REQUEST_SECONDS = 15.0  # Twilio's own limit for a webhook
OUTBOX_SECONDS = 10.0
CODE = re.compile(r"\b(\d{6})\b")


@dataclass
class Cluster:
    """The two processes (as signed-webhook clients) and the settings they share."""

    nodes: list[Twilio]
    settings: Settings

    def node(self, step: int) -> Twilio:
        """The process that gets webhook number `step`: each one goes to the other."""
        return self.nodes[step % len(self.nodes)]


def _ready(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/readyz", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def start_gateway(settings: Settings, logs: Path) -> tuple[ServerProcess, str]:
    """A gateway process (uvicorn, one worker) as production starts it; its base URL once ready."""
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("GATEWAY_")}
    env.update(
        GATEWAY_DATABASE_URL=settings.database_url,
        GATEWAY_REDIS_URL=settings.redis_url,
        GATEWAY_PUBLIC_BASE_URL=settings.public_base_url,
        GATEWAY_TWILIO_AUTH_TOKEN=settings.twilio_auth_token.get_secret_value(),
        GATEWAY_MESSENGER="outbox",
        GATEWAY_LOG_LEVEL="WARNING",
    )
    argv = [sys.executable, "-m", "uvicorn", "gateway.app:create_app", "--factory"]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    server = ServerProcess(
        f"gateway on port {port}", argv, logs / f"gateway-{port}.log", cwd=REPO_ROOT, env=env
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        server.wait_until_ready(lambda: _ready(base_url), START_SECONDS)
    except BaseException:
        server.stop()
        raise
    return server, base_url


@pytest.fixture(scope="module")
def shared_settings(
    postgres_databases: PostgresDatabases, migrated_postgres_template: str, redis_url: str
) -> Iterator[Settings]:
    """One migrated and seeded PostgreSQL database and the session's Redis, for the module."""
    name = postgres_databases.create(migrated_postgres_template)
    settings = Settings(
        _env_file=None,
        database_url=postgres_databases.url(name),
        redis_url=redis_url,
        public_base_url=PUBLIC_BASE_URL,
        twilio_auth_token=AUTH_TOKEN,
        messenger=MessengerKind.outbox,
    )
    in_own_thread(lambda: asyncio.run(seed_accounts(settings)))
    yield settings
    postgres_databases.drop(name)


@pytest.fixture(scope="module")
def node_urls(
    shared_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[str]]:
    """Two gateway processes on the shared database and Redis, started side by side, and
    always stopped (SIGTERM, then SIGKILL) at the end of the module."""
    logs = tmp_path_factory.mktemp("gateways")
    with ThreadPoolExecutor(max_workers=2) as pool:
        starting = [pool.submit(start_gateway, shared_settings, logs) for _ in range(2)]
        wait(starting)
    started = [future.result() for future in starting if future.exception() is None]
    try:
        for future in starting:
            future.result()  # a process that did not come up fails here, with its log
        yield [base_url for _, base_url in started]
    finally:
        for server, _ in started:
            server.stop()


@pytest.fixture
async def cluster(
    node_urls: list[str], shared_settings: Settings, redis: Redis
) -> AsyncIterator[Cluster]:
    """Signed-webhook clients for the two processes (Redis emptied for each test)."""
    assert len(set(node_urls)) == 2
    async with AsyncExitStack() as stack:
        nodes = []
        for base_url in node_urls:
            http = await stack.enter_async_context(
                httpx.AsyncClient(base_url=base_url, timeout=REQUEST_SECONDS)
            )
            nodes.append(Twilio(http, PUBLIC_BASE_URL, AUTH_TOKEN))
        yield Cluster(nodes, shared_settings)


async def outbox_texts(settings: Settings, to: str, purpose: str) -> list[str]:
    """The readable texts of the outbox rows of one purpose to one number, oldest first."""
    engine = create_engine(settings.database_url)
    try:
        async with create_sessionmaker(engine)() as session:
            rows = await session.scalars(
                select(OutboxMessage)
                .where(OutboxMessage.to_number == to, OutboxMessage.purpose == purpose)
                .order_by(OutboxMessage.id)
            )
            keyring = Keyring(settings)
            return [readable_body(row, keyring) for row in rows]
    finally:
        await engine.dispose()


async def wait_for_text(settings: Settings, to: str, purpose: str, seen: int) -> str:
    """The next outbox text of a purpose to a number after the `seen` ones (bounded wait)."""
    deadline = asyncio.get_running_loop().time() + OUTBOX_SECONDS
    while True:
        texts = await outbox_texts(settings, to, purpose)
        if len(texts) > seen:
            assert len(texts) == seen + 1, f"more than one {purpose} message queued"
            return texts[-1]
        assert asyncio.get_running_loop().time() < deadline, f"no {purpose} message queued"
        await asyncio.sleep(0.1)


async def counts(settings: Settings) -> tuple[int, int]:
    """How many code and password messages to MOBILE the shared outbox holds so far."""
    return (
        len(await outbox_texts(settings, MOBILE, "code")),
        len(await outbox_texts(settings, MOBILE, "password")),
    )


async def password_accepted(settings: Settings, account: str, password: str) -> bool:
    engine = create_engine(settings.database_url)
    try:
        async with transaction(create_sessionmaker(engine)) as session:
            directory = SqlAccountDirectory(session, settings)
            return (await directory.verify_password(account, password)).accepted
    finally:
        await engine.dispose()


def code_in(text: str) -> str:
    match = CODE.search(text)
    assert match, "no code in the message"
    return match.group(1)


def temporary_password(text: str) -> str:
    """The password in the SMS that carries it: the word made of the password alphabet."""
    alphabet = set(Settings(_env_file=None).temp_password_alphabet)
    words = [word.strip(".,:;") for word in text.split()]
    found = [w for w in words if len(w) >= 8 and set(w) <= alphabet and not w.isdigit()]
    assert len(found) == 1, "no single password in the message"
    return found[0]


async def test_a_voice_recovery_alternating_between_two_processes(cluster: Cluster) -> None:
    codes, passwords = await counts(cluster.settings)
    call = Call(cluster.node(0), caller=MOBILE)
    await call.start()
    steps = [
        "1",  # the password
        MOBILE_ONLY + "#",  # the account number
        "1",  # confirmed
        "1",  # the code by SMS
    ]
    for step, keys in enumerate(steps, start=1):
        call.twilio = cluster.node(step)
        await call.press(keys)
    assert "Код отправлен в СМС" in call.text
    code = code_in(await wait_for_text(cluster.settings, MOBILE, "code", codes))

    call.twilio = cluster.node(len(steps) + 1)
    await call.press(code)
    assert "Готово" in call.text, call.text
    password = temporary_password(
        await wait_for_text(cluster.settings, MOBILE, "password", passwords)
    )
    assert await password_accepted(cluster.settings, MOBILE_ONLY, password)

    # The repeat of the password is served by the other process from the shared call state.
    call.twilio = cluster.node(len(steps) + 2)
    await call.press("*")
    assert any("Первая группа" in "".join(say.itertext()) for say in call.twiml.iter("Say"))


async def test_an_sms_dialog_alternating_between_two_processes(cluster: Cluster) -> None:
    codes, passwords = await counts(cluster.settings)
    phone = Phone(cluster.node(0), MOBILE)
    replies = await phone.text(f"RESTORE {MOBILE_ONLY}")
    # The mobile on file gets the code itself as the reply (through the outbox), nothing in TwiML.
    assert replies == []
    code = code_in(await wait_for_text(cluster.settings, MOBILE, "code", codes))

    phone.twilio = cluster.node(1)
    await phone.text(code)
    password = temporary_password(
        await wait_for_text(cluster.settings, MOBILE, "password", passwords)
    )
    assert await password_accepted(cluster.settings, MOBILE_ONLY, password)

    # The code was used up on the other process: sent again to the first, it opens nothing.
    phone.twilio = cluster.node(2)
    await phone.text(code)
    assert await counts(cluster.settings) == (codes + 1, passwords + 1)
