"""End to end in real headless Chromium: a signed webhook escalates, an operator finishes the job.

The gateway runs as its own uvicorn process on loopback (as in production); Debian's chromium is
driven by Playwright through its executable path. Every wait is bounded by Playwright's timeouts.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect
from redis.asyncio import Redis

from core.accounts.directory import SqlAccountDirectory
from core.delivery.outbox import readable_body
from core.models import EscalationStatus
from core.platform.crypto import Keyring
from core.platform.db import create_engine, create_sessionmaker, transaction
from core.platform.settings import Settings
from tests.conftest import AUTH_TOKEN, MOBILE, MOBILE_ONLY, PUBLIC_BASE_URL, seed_accounts
from tests.console.conftest import (
    OPERATOR,
    PASSWORD,
    add_operator,
    audit_events,
    escalations,
    outbox,
)
from tests.support.twilio_driver import Call, Phone, Twilio

CHROMIUM = Path(os.environ.get("GATEWAY_TEST_CHROMIUM", "/usr/bin/chromium"))
# Generous for a loaded 2-core CI machine; a broken page fails at the first of them.
STEP_TIMEOUT_MS = 20_000
# The queue polls every 5 s.
QUEUE_REFRESH_TIMEOUT_MS = 20_000
SECOND_MOBILE_ON_FILE = "+79037771230"  # the first mobile of account 1000000003


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Served:
    """The gateway process: its loopback URL and a Twilio that posts signed webhooks to it."""

    url: str
    twilio: Twilio
    settings: Settings


@pytest.fixture
async def served(settings: Settings, redis: Redis) -> AsyncIterator[Served]:
    """The gateway as a uvicorn process, plain http on loopback (so cookies are not Secure)."""
    await seed_accounts(settings)
    await add_operator(settings, OPERATOR)
    env = {
        **os.environ,
        "GATEWAY_DATABASE_URL": settings.database_url,
        "GATEWAY_REDIS_URL": settings.redis_url,
        # Webhook signatures are computed for the public URL, whatever address we post to.
        "GATEWAY_PUBLIC_BASE_URL": PUBLIC_BASE_URL,
        "GATEWAY_TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "GATEWAY_MESSENGER": "outbox",
        "GATEWAY_CONSOLE_COOKIE_SECURE": "false",
        "GATEWAY_DISPATCH_DELAY_MS": "0",
        "GATEWAY_LOG_LEVEL": "WARNING",
    }
    port = _free_port()
    server = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "uvicorn", "gateway.app:create_app", "--factory"),
        *("--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"),
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            for _ in range(300):
                try:
                    if (await http.get("/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)
            else:
                pytest.fail("the gateway did not start")
            yield Served(url, Twilio(http, PUBLIC_BASE_URL, AUTH_TOKEN), settings)
    finally:
        server.terminate()
        await asyncio.wait_for(server.wait(), timeout=15)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Headless Debian chromium (as root, hence --no-sandbox)."""
    assert await asyncio.to_thread(CHROMIUM.exists), (
        f"{CHROMIUM} is missing: scripts/install-system-deps installs it"
    )
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox"], headless=True
        )
        try:
            yield chromium
        finally:
            await chromium.close()


async def signed_in_page(browser: Browser, served: Served) -> Page:
    page = await browser.new_page(locale="ru-RU")
    page.set_default_timeout(STEP_TIMEOUT_MS)
    await page.goto(f"{served.url}/console/")
    await expect(page).to_have_url(re.compile(r"/console/login$"))
    await page.get_by_label("Имя пользователя").fill(OPERATOR)
    await page.get_by_label("Пароль").fill(PASSWORD)
    await page.get_by_role("button", name="Войти").click()
    await expect(page.get_by_role("heading", name="Очередь обращений")).to_be_visible()
    return page


async def text_callback_request(served: Served, sender: str, account: str) -> int:
    phone = Phone(served.twilio, sender)
    await phone.text(f"ВОССТАНОВИТЬ {account}")
    await phone.text("ОПЕРАТОР")
    return (await escalations(served.settings))[-1].id


async def call_and_press_zero(served: Served, caller: str, account: str) -> int:
    """A signed voice call: restore password, the account number, confirm it, then `0`."""
    call = Call(served.twilio, caller=caller)
    await call.start()
    for keys in ("1", f"{account}#", "1", "0"):
        await call.press(keys)
    assert call.twiml.find("Dial") is not None, call.raw
    return (await escalations(served.settings))[-1].id


async def password_accepted(settings: Settings, account: str, password: str) -> bool:
    engine = create_engine(settings.database_url)
    try:
        async with transaction(create_sessionmaker(engine)) as session:
            directory = SqlAccountDirectory(session, settings)
            return (await directory.verify_password(account, password)).accepted
    finally:
        await engine.dispose()


async def test_operator_sends_a_temporary_password_from_the_browser(
    served: Served, browser: Browser
) -> None:
    case_id = await call_and_press_zero(served, MOBILE, MOBILE_ONLY)
    page = await signed_in_page(browser, served)

    row = page.locator(f'tr[data-case="{case_id}"]')
    await expect(row).to_contain_text("Перевод звонка")
    await expect(row).to_contain_text("*******001")
    await expect(row).to_contain_text("Не подтверждён")
    await expect(row).to_contain_text("Житель попросил оператора")

    # A new escalation shows up without reloading the page.
    second_id = await text_callback_request(served, SECOND_MOBILE_ON_FILE, "1000000003")
    await expect(page.locator(f'tr[data-case="{second_id}"]')).to_be_visible(
        timeout=QUEUE_REFRESH_TIMEOUT_MS
    )

    await row.get_by_role("link").click()
    await expect(page.get_by_role("heading", name=f"Обращение № {case_id}")).to_be_visible()
    await expect(page.get_by_text("Начато восстановление")).to_be_visible()
    await page.get_by_label("Номер лицевого счёта со слов жителя").fill(MOBILE_ONLY)
    await page.get_by_label("Я проверил(а) личность звонящего").check()
    await page.get_by_role("button", name="Отправить временный пароль").click()
    await expect(page.get_by_text("Временный пароль отправлен по SMS")).to_be_visible()
    await expect(page.get_by_text("Оператор отправил временный пароль")).to_be_visible()

    [sms] = await outbox(served.settings, MOBILE, "password")
    body = readable_body(sms, Keyring(served.settings))
    found = re.search(r"пароль (\w+)", body)
    assert found, "the outbox SMS carries no temporary password"
    password = found.group(1)
    assert password not in await page.content()
    assert await password_accepted(served.settings, MOBILE_ONLY, password)
    [event] = await audit_events(served.settings, "operator.password_sent")
    assert json.loads(event.detail)["operator"] == OPERATOR
    case = next(c for c in await escalations(served.settings) if c.id == case_id)
    assert case.status is EscalationStatus.in_progress and case.operator == OPERATOR


async def test_a_form_without_its_csrf_token_is_refused_in_the_browser(
    served: Served, browser: Browser
) -> None:
    case_id = await text_callback_request(served, MOBILE, MOBILE_ONLY)
    page = await signed_in_page(browser, served)
    await page.goto(f"{served.url}/console/cases/{case_id}")
    await page.locator("#send-form input[name=csrf_token]").evaluate("field => field.remove()")
    await page.get_by_label("Номер лицевого счёта со слов жителя").fill(MOBILE_ONLY)
    await page.get_by_label("Я проверил(а) личность звонящего").check()
    async with page.expect_response(re.compile(r"/temporary-password$")) as answer:
        await page.get_by_role("button", name="Отправить временный пароль").click()
    assert (await answer.value).status == 403
    await expect(page.get_by_role("heading", name="Форма не принята")).to_be_visible()
    assert not await outbox(served.settings, MOBILE, "password")
