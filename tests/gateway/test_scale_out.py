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
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from core.accounts import SqlAccountDirectory
from core.config import Settings
from core.crypto import Keyring
from core.db import create_engine, create_sessionmaker, transaction
from core.delivery import readable_body
from core.models import OutboxMessage
from tests.conftest import AUTH_TOKEN, MOBILE, MOBILE_ONLY, PUBLIC_BASE_URL, seed_accounts
from tests.servers import REPO_ROOT, ServerProcess, free_port
from tests.twilio_driver import Call, Phone, Twilio

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


@pytest.fixture
def gateway_process(tmp_path: Path) -> Iterator[Callable[[Settings], str]]:
    """Starts gateway processes (uvicorn, one worker each) for given settings: their base URLs.

    They are stopped (SIGTERM, then SIGKILL) when the test ends, whatever happened.
    """
    started: list[ServerProcess] = []

    def start(settings: Settings) -> str:
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
            f"gateway on port {port}",
            argv,
            tmp_path / f"gateway-{port}.log",
            cwd=REPO_ROOT,
            env=env,
        )
        started.append(server)
        base_url = f"http://127.0.0.1:{port}"
        server.wait_until_ready(lambda: _ready(base_url), START_SECONDS)
        return base_url

    yield start
    for server in started:
        server.stop()


@pytest.fixture
async def cluster(
    settings: Settings,
    redis_url: str,
    new_postgres_database: Callable[[str], str],
    migrated_postgres_template: str,
    gateway_process: Callable[[Settings], str],
) -> AsyncIterator[Cluster]:
    """Two gateway processes on one PostgreSQL database (seeded) and one real Redis."""
    shared = settings.model_copy(
        update={
            "database_url": new_postgres_database(migrated_postgres_template),
            "redis_url": redis_url,
        }
    )
    await seed_accounts(shared)
    base_urls = await asyncio.gather(
        asyncio.to_thread(gateway_process, shared), asyncio.to_thread(gateway_process, shared)
    )
    assert len(set(base_urls)) == 2
    async with AsyncExitStack() as stack:
        nodes = []
        for base_url in base_urls:
            http = await stack.enter_async_context(
                httpx.AsyncClient(base_url=base_url, timeout=REQUEST_SECONDS)
            )
            nodes.append(Twilio(http, PUBLIC_BASE_URL, AUTH_TOKEN))
        yield Cluster(nodes, shared)


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


async def wait_for_text(settings: Settings, to: str, purpose: str) -> str:
    """The newest outbox text of a purpose to a number, once there is one (bounded wait)."""
    deadline = asyncio.get_running_loop().time() + OUTBOX_SECONDS
    while True:
        texts = await outbox_texts(settings, to, purpose)
        if texts:
            return texts[-1]
        assert asyncio.get_running_loop().time() < deadline, f"no {purpose} message queued"
        await asyncio.sleep(0.1)


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
    assert "Мы отправили СМС" in call.text
    code = code_in(await wait_for_text(cluster.settings, MOBILE, "code"))

    call.twilio = cluster.node(len(steps) + 1)
    await call.press(code)
    assert "Готово" in call.text, call.text
    password = temporary_password(await wait_for_text(cluster.settings, MOBILE, "password"))
    assert await password_accepted(cluster.settings, MOBILE_ONLY, password)

    # The repeat of the password is served by the other process from the shared call state.
    call.twilio = cluster.node(len(steps) + 2)
    await call.press("*")
    assert any((say.text or "").startswith("Группа") for say in call.twiml.iter("Say"))


async def test_an_sms_dialog_alternating_between_two_processes(cluster: Cluster) -> None:
    phone = Phone(cluster.node(0), MOBILE)
    replies = await phone.text(f"RESTORE {MOBILE_ONLY}")
    assert len(replies) == 1 and CODE.search(replies[0]) is None  # the code comes separately
    code = code_in(await wait_for_text(cluster.settings, MOBILE, "code"))

    phone.twilio = cluster.node(1)
    await phone.text(code)
    password = temporary_password(await wait_for_text(cluster.settings, MOBILE, "password"))
    assert await password_accepted(cluster.settings, MOBILE_ONLY, password)

    # The code was used up on the other process: sent again to the first, it opens nothing.
    phone.twilio = cluster.node(2)
    await phone.text(code)
    assert len(await outbox_texts(cluster.settings, MOBILE, "password")) == 1
