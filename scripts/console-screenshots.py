"""Take docs/console-queue.png and docs/console-case.png with realistic demo data.

Usage: uv run python scripts/console-screenshots.py [--out docs]

Starts a throw-away gateway (temporary SQLite file, in-process Redis, outbox messenger) on a free
loopback port, fills it with the demo accounts, two operators and a few escalations (some from
real signed SMS webhooks, so their cases have an audit history), then drives Debian's headless
chromium with Playwright: sign in, shoot the queue, open a case, send a temporary password,
shoot the case.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import socket
import tempfile
from datetime import timedelta
from pathlib import Path

import httpx
import uvicorn
from playwright.async_api import async_playwright
from sqlalchemy import func, select, update

from core.accounts.importer import import_accounts_csv
from core.escalations.repository import Escalations
from core.models import Escalation, EscalationKind, EscalationStatus, OperatorRole
from core.operators.repository import OperatorRepository
from core.platform.clock import utcnow
from core.platform.crypto import Keyring
from core.platform.db import create_engine, create_sessionmaker, transaction
from core.platform.migrate import upgrade_database
from core.platform.settings import DEV_AUTH_TOKEN, Settings
from gateway.simulator.transport import WebhookClient

ROOT = Path(__file__).resolve().parents[1]
DEMO_ACCOUNTS = ROOT / "gateway" / "demo_accounts.csv"
CHROMIUM = os.environ.get("GATEWAY_TEST_CHROMIUM", "/usr/bin/chromium")
OPERATOR, SUPERVISOR = "ivanova.op", "petrov.sv"
PASSWORD = "demo-password-" + secrets.token_hex(4)
VIEWPORT = {"width": 1280, "height": 860}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _seed(settings: Settings) -> None:
    await upgrade_database(settings.database_url)
    engine = create_engine(settings.database_url)
    try:
        async with transaction(create_sessionmaker(engine)) as session:
            await import_accounts_csv(session, DEMO_ACCOUNTS, settings)
            operators = OperatorRepository(session)
            await operators.add(OPERATOR, PASSWORD, display_name="Иванова Ольга")
            await operators.add(
                SUPERVISOR,
                PASSWORD,
                display_name="Петров Сергей",
                role=OperatorRole.supervisor,
            )
            escalations = Escalations(session, Keyring(settings))
            demo = [
                # kind, channel, phone, reason, account, verification, attempts, minutes ago
                (EscalationKind.transfer, "voice", "+79256083144", "account_retries", None, 3, 14),
                (
                    EscalationKind.transfer,
                    "voice",
                    "+79254103381",
                    "verification_capped",
                    "1000234540",
                    5,
                    9,
                ),
                (EscalationKind.callback, "voice", "+74999871200", "out_of_hours", None, 0, 6),
            ]
            for kind, channel, phone, reason, account, attempts, minutes in demo:
                row = await escalations.open(
                    kind=kind,
                    channel=channel,
                    phone=phone,
                    reason=reason,
                    session_ref="CA" + secrets.token_hex(16),
                    account_number=account,
                    purpose="password",
                    verification="code_sent" if account else "none",
                    attempts=attempts,
                )
                row.created_at = utcnow() - timedelta(minutes=minutes)
            closed = await escalations.open(
                kind=EscalationKind.transfer,
                channel="voice",
                phone="+79161234567",
                reason="caller_request",
                account_number="1000234551",
                purpose="login",
            )
            closed.created_at = utcnow() - timedelta(minutes=52)
            closed.status = EscalationStatus.resolved
            closed.operator = OPERATOR
            closed.note = "Логин выслан по SMS, житель вошёл в кабинет."
            closed.closed_at = utcnow() - timedelta(minutes=40)
    finally:
        await engine.dispose()


async def _text(http: httpx.AsyncClient, settings: Settings, sender: str, body: str) -> None:
    params = {
        "AccountSid": "AC" + "0" * 32,
        "MessageSid": "SM" + secrets.token_hex(16),
        "From": sender,
        "To": settings.sms_number,
        "Body": body,
        "NumSegments": "1",
    }
    client = WebhookClient(http, settings.public_base_url, DEV_AUTH_TOKEN)
    response = await client.post("/sms/inbound", params)
    response.raise_for_status()


async def _backdate_last(settings: Settings, minutes: int) -> int:
    """Make the newest escalation look `minutes` old; return its id."""
    engine = create_engine(settings.database_url)
    try:
        async with transaction(create_sessionmaker(engine)) as session:
            newest = (await session.scalars(select(func.max(Escalation.id)))).one()
            await session.execute(
                update(Escalation)
                .where(Escalation.id == newest)
                .values(created_at=utcnow() - timedelta(minutes=minutes))
            )
            return int(newest)
    finally:
        await engine.dispose()


async def main(out: Path) -> None:
    """Build the demo, run the gateway, and take both screenshots."""
    workdir = Path(tempfile.mkdtemp(prefix="eirc-screenshots-"))
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    settings = Settings(
        _env_file=None,
        database_url=f"sqlite+aiosqlite:///{workdir / 'demo.db'}",
        redis_url="memory://",
        public_base_url=base,
        console_cookie_secure=False,
        dispatch_delay_ms=0,
        log_level="WARNING",
    )
    await _seed(settings)

    from gateway.app import create_app

    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    serving = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn exposes only a flag
        await asyncio.sleep(0.05)
    try:
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            await _text(http, settings, "+79123456789", "ВОССТАНОВИТЬ 1000234528")
            await _text(http, settings, "+79123456789", "ОПЕРАТОР")
            case_id = await _backdate_last(settings, 3)
            await _text(http, settings, "+79037771230", "ЛОГИН 1000234539")
            await _text(http, settings, "+79037771230", "ОПЕРАТОР")
            await _backdate_last(settings, 1)

        await asyncio.to_thread(out.mkdir, parents=True, exist_ok=True)
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=CHROMIUM, args=["--no-sandbox"], headless=True
            )
            page = await browser.new_page(viewport=VIEWPORT, locale="ru-RU")
            page.set_default_timeout(20_000)
            await page.goto(f"{base}/console/login")
            await page.get_by_label("Имя пользователя").fill(OPERATOR)
            await page.get_by_label("Пароль").fill(PASSWORD)
            await page.get_by_role("button", name="Войти").click()
            await page.get_by_role("heading", name="Очередь обращений").wait_for()
            await page.screenshot(path=out / "console-queue.png", full_page=True)

            await page.goto(f"{base}/console/cases/{case_id}")
            await page.get_by_role("button", name="Взять в работу").click()
            await page.get_by_label("Номер лицевого счёта со слов жителя").fill("1000234528")
            await page.get_by_label("Я проверил(а) личность звонящего").check()
            await page.get_by_role("button", name="Отправить временный пароль").click()
            await page.get_by_text("Временный пароль отправлен по SMS").wait_for()
            await page.screenshot(path=out / "console-case.png", full_page=True)
            await browser.close()
    finally:
        server.should_exit = True
        await serving
    print(f"wrote {out / 'console-queue.png'} and {out / 'console-case.png'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="Output directory.")
    asyncio.run(main(parser.parse_args().out))
