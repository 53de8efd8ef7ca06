"""End to end in real headless Chromium: a resident recovers by phone, then signs in to the
reference cabinet with the temporary password they heard and is made to change it (§11).

The gateway takes signed webhooks with GATEWAY_DIRECTORY=http; the reference cabinet serves its
API and its sign-in pages over real HTTP on loopback; Debian's chromium is driven by Playwright.
"""

from __future__ import annotations

import re

from playwright.async_api import Browser, expect

from tests.conftest import MOBILE_ONLY, Gateway
from tests.console.test_console_browser import STEP_TIMEOUT_MS, browser  # noqa: F401
from tests.ivr.test_cabinet_recovery import texted_password
from tests.ivr.test_webhooks import at_code_entry, last_code, ru
from tests.support.cabinet_server import INITIAL_PASSWORD, Cabinet

NEW_PASSWORD = "my-own-Password-7"


async def test_the_heard_password_opens_the_cabinet_and_must_be_changed(
    cabinet_gateway: Gateway,
    cabinet: Cabinet,
    browser: Browser,  # noqa: F811
) -> None:
    call = await at_code_entry(cabinet_gateway)
    await call.press(last_code(cabinet_gateway))
    assert ru("voice.secret_repeat") in call.text
    password = texted_password(cabinet_gateway)

    page = await browser.new_page(locale="ru-RU")
    page.set_default_timeout(STEP_TIMEOUT_MS)
    try:
        await page.goto(f"{cabinet.url}/login")
        await page.get_by_label("Номер лицевого счёта").fill(MOBILE_ONLY)
        await page.get_by_label("Пароль", exact=True).fill(password)
        await page.get_by_role("button").first.click()
        # The temporary password opens only the change form.
        await expect(page).to_have_url(re.compile(r"/change-password$"))
        await page.get_by_label("Новый пароль", exact=True).fill(NEW_PASSWORD)
        await page.get_by_label("Новый пароль ещё раз").fill(NEW_PASSWORD)
        await page.get_by_role("button").first.click()
        await expect(page).to_have_url(re.compile(r"/cabinet(\?|$)"))
        await expect(page.get_by_role("heading", name="Личный кабинет")).to_be_visible()
        await expect(page.get_by_text("Пароль изменён.")).to_be_visible()
    finally:
        await page.close()
    # The temporary password was used once; the resident's own opens the cabinet now.
    assert await cabinet.sign_in(MOBILE_ONLY, password) == ""
    assert await cabinet.sign_in(MOBILE_ONLY, NEW_PASSWORD) == "/cabinet"
    assert await cabinet.sign_in(MOBILE_ONLY, INITIAL_PASSWORD) == ""
