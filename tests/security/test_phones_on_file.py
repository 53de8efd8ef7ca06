"""§6.9: the phone on file cannot be changed through this gateway.

End to end: recoveries by voice (SMS code, verification call), by SMS (from the mobile on file,
and a stranger's thread with ЗВОНОК), every SMS command from a stranger and from a resident, and
an operator's send from the console leave every account's phones exactly as the import wrote
them, and no statement that writes `account_phones` reaches the database. Structurally: the
directory port offers no way to write phones, only `accounts import` does, and no route of the
app is about phones.
"""

from __future__ import annotations

import ast
import re
from collections.abc import AsyncIterator
from dataclasses import FrozenInstanceError
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute
from sqlalchemy import event, select

from console import auth, cases, supervisor
from core.accounts.directory import AccountDirectory, AccountRecord, SqlAccountDirectory
from core.kit.phones import Phone as PhoneNumber
from core.models import Account, AccountPhone, AuditEvent, LineType
from core.platform.db import create_engine, create_sessionmaker
from ivr import calls, transfers
from sms.grammar import Keyword, parse_sms
from sms.router import router as sms_router
from tests.conftest import (
    LANDLINE,
    LANDLINE_ONLY,
    MOBILE,
    MOBILE_ONLY,
    SECOND_MOBILE,
    TWO_MOBILES_EMAIL,
    Gateway,
)
from tests.console.conftest import OPERATOR, ConsoleClient, add_operator
from tests.ivr.test_webhooks import SPOKEN_CODE, spoken_digits
from tests.support.twilio_driver import Call, Phone

ROOT = Path(__file__).resolve().parents[2]
STRANGER = "+79990001122"  # a mobile on no account
CODE = re.compile(r"\b(\d{6})\b")

# Every SMS command (the test checks that each keyword is here), aimed at phones: a stranger
# who names a number of their own must not get it put on file.
COMMANDS = [
    f"ВОССТАНОВИТЬ {TWO_MOBILES_EMAIL}",
    f"ЛОГИН {TWO_MOBILES_EMAIL} {STRANGER}",
    "КОД 000000",
    "ЗВОНОК",
    "ПОМОЩЬ",
    "СТОП",
    "СТАРТ",
    "ОПЕРАТОР",
    "ОТМЕНА",
    f"ТЕЛЕФОН {STRANGER}",
    f"НОМЕР {TWO_MOBILES_EMAIL} {STRANGER}",
]


PhoneRow = tuple[str, str, str, int, int]


async def phones_on_file(gateway: Gateway) -> list[PhoneRow]:
    """Every phone row with its account, as stored."""
    engine = create_engine(gateway.settings.database_url)
    try:
        async with create_sessionmaker(engine)() as session:
            rows = await session.execute(
                select(
                    Account.account_number,
                    AccountPhone.e164,
                    AccountPhone.line_type,
                    AccountPhone.position,
                    AccountPhone.id,
                )
                .join(AccountPhone, AccountPhone.account_id == Account.id)
                .order_by(AccountPhone.id)
            )
            return [(a, e, str(t), p, i) for a, e, t, p, i in rows.all()]
    finally:
        await engine.dispose()


@pytest.fixture
async def phone_writes(gateway: Gateway) -> AsyncIterator[list[str]]:
    """Every statement the app sends to the database that writes `account_phones`."""
    engine = gateway.app.state.services.engine.sync_engine
    writes: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        text = " ".join(statement.lower().split())
        if "account_phones" in text and text.startswith(("insert", "update", "delete")):
            writes.append(text[:80])

    event.listen(engine, "before_cursor_execute", record)
    yield writes
    event.remove(engine, "before_cursor_execute", record)


def heard_code(call: Call) -> str:
    """The code read out in a verification call ("Ваш код: один, два, …")."""
    spoken = SPOKEN_CODE.search(call.text)
    assert spoken, call.text
    return spoken_digits(spoken.group(1))


async def answer_verification_call(gateway: Gateway, to: str) -> Call | None:
    """Pick up the newest call the gateway placed to `to` and press a key; None if none."""
    placed = gateway.messenger.to(to, "call")
    if not placed:
        return None
    callback = Call(gateway.twilio, caller=gateway.settings.hotline_number, called=to)
    await callback.start(placed[-1].url.removeprefix(gateway.settings.public_base_url))
    await callback.press("5")
    return callback


async def voice_recoveries(gateway: Gateway) -> None:
    # A stranger's caller ID, the account's mobile gets the code: a completed recovery.
    call = gateway.call(STRANGER)
    await call.start()
    await call.press("1")
    await call.press(MOBILE_ONLY + "#")
    await call.press("1")
    await call.press("1")
    sms = [m for m in gateway.messenger.to(MOBILE) if CODE.search(m.body)]
    found = CODE.search(sms[-1].body)
    assert found
    await call.press(found.group(1))
    # The landline on file proves itself in a verification call.
    call = gateway.call(STRANGER)
    await call.start()
    await call.press("1")
    await call.press(LANDLINE_ONLY + "#")
    await call.press("1")
    await call.press("2")
    await call.hang_up()  # the code call is placed once the caller hung up
    callback = await answer_verification_call(gateway, LANDLINE)
    assert callback is not None
    await callback.press(heard_code(callback))


async def sms_recoveries(gateway: Gateway) -> None:
    # The second mobile on file asks for itself: a completed recovery by SMS.
    resident = Phone(gateway.twilio, SECOND_MOBILE)
    await resident.text(f"ВОССТАНОВИТЬ {TWO_MOBILES_EMAIL}")
    codes = [m for m in gateway.messenger.to(SECOND_MOBILE) if m.purpose == "code"]
    found = CODE.search(codes[-1].body)
    assert found
    await resident.text(f"КОД {found.group(1)}")
    # A stranger's thread: ЗВОНОК makes the gateway call the phone on file; the stranger texts
    # back what was read out there.
    stranger = Phone(gateway.twilio, STRANGER)
    await stranger.text(f"ВОССТАНОВИТЬ {MOBILE_ONLY}")
    await stranger.text("ЗВОНОК")
    callback = await answer_verification_call(gateway, MOBILE)
    if callback is not None and "Ваш код: " in callback.text:
        await stranger.text(heard_code(callback))
    # Every command, from a stranger and from a resident.
    for sender in (STRANGER, MOBILE):
        phone = Phone(gateway.twilio, sender)
        for body in COMMANDS:
            await phone.text(body)


async def console_send(gateway: Gateway) -> None:
    await add_operator(gateway.settings, OPERATOR)
    # A callback request by SMS from the mobile on file; the operator sends a password.
    resident = Phone(gateway.twilio, MOBILE)
    await resident.text(f"ВОССТАНОВИТЬ {MOBILE_ONLY}")
    await resident.text("ОПЕРАТОР")
    transport = httpx.ASGITransport(app=gateway.app)
    async with httpx.AsyncClient(
        transport=transport, base_url="https://console.eirc.example"
    ) as http:
        console = ConsoleClient(http)
        assert (await console.sign_in(OPERATOR)).status_code == 303
        queue = await http.get("/console/")
        case_ids = sorted({int(i) for i in re.findall(r"/console/cases/(\d+)", queue.text)})
        assert case_ids, "no case in the queue"
        case = case_ids[-1]
        response = await console.post_form(
            f"/console/cases/{case}",
            f"/console/cases/{case}/temporary-password",
            account_number=MOBILE_ONLY,
            identity_confirmed="yes",
        )
        assert response.status_code == 303


async def completed_recoveries(gateway: Gateway) -> int:
    engine = create_engine(gateway.settings.database_url)
    try:
        async with create_sessionmaker(engine)() as session:
            rows = await session.scalars(
                select(AuditEvent.id).where(AuditEvent.event == "recovery.completed")
            )
            return len(rows.all())
    finally:
        await engine.dispose()


def test_every_sms_command_is_tried() -> None:
    tried = {parse_sms(body).keyword for body in COMMANDS}
    assert tried == set(Keyword)


async def test_no_recovery_command_or_console_send_changes_a_phone_on_file(
    gateway: Gateway, phone_writes: list[str]
) -> None:
    before = await phones_on_file(gateway)
    assert {row[0] for row in before} == {MOBILE_ONLY, LANDLINE_ONLY, TWO_MOBILES_EMAIL}

    await voice_recoveries(gateway)
    await sms_recoveries(gateway)
    await console_send(gateway)

    # The scenario did complete recoveries (by voice twice, by SMS, by the console) ...
    assert await completed_recoveries(gateway) >= 4
    # ... and not one phone moved, appeared or vanished.
    assert await phones_on_file(gateway) == before
    assert phone_writes == []
    assert STRANGER not in {row[1] for row in await phones_on_file(gateway)}


# -- structure --------------------------------------------------------------------------------

PORT_METHODS = {"lookup", "issue_temporary_password", "verify_password", "change_password"}


def _public_methods(cls: type) -> set[str]:
    return {name for name in dir(cls) if not name.startswith("_") and callable(getattr(cls, name))}


def test_the_directory_port_offers_no_way_to_write_phones() -> None:
    assert _public_methods(AccountDirectory) == PORT_METHODS
    assert _public_methods(SqlAccountDirectory) == PORT_METHODS
    record = AccountRecord(MOBILE_ONLY, "login", "Name", None, ())
    with pytest.raises(FrozenInstanceError):
        record.phones = (PhoneNumber(STRANGER, LineType.mobile),)  # type: ignore[misc]
    assert isinstance(record.phones, tuple)  # not a list a caller could append to


# Source that may write phones: the CSV import (the billing centre's own file) and the model.
MAY_WRITE_PHONES = {"core/accounts/importer.py", "core/models/__init__.py"}
# Who may call the import: `accounts import` and `demo` (which seeds its own demo database).
MAY_IMPORT = {"gateway/cli/accounts.py", "gateway/cli/main.py"}
PHONE_WRITE = re.compile(
    r"AccountPhone\s*\(|(insert|update|delete)\s*\(\s*AccountPhone"
    r"|\.phones\s*(=(?!=)|\.(append|extend|insert|remove|pop|clear)\s*\()"
    r"|\b(insert\s+into|update|delete\s+from)\s+account_phones",
    re.IGNORECASE,
)


def _sources() -> list[tuple[str, str]]:
    return [
        (str(path.relative_to(ROOT)), path.read_text(encoding="utf-8"))
        for package in ("core", "gateway", "ivr", "sms")
        for path in sorted((ROOT / package).rglob("*.py"))
    ]


def test_only_the_accounts_import_writes_phones() -> None:
    writers = {name for name, text in _sources() if PHONE_WRITE.search(text)}
    assert writers <= MAY_WRITE_PHONES
    assert "core/accounts/importer.py" in writers  # the pattern does find a real writer
    importers = {
        name
        for name, text in _sources()
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.ImportFrom) and node.module == "core.accounts.importer"
    }
    assert importers <= MAY_IMPORT


def test_no_route_is_about_phones() -> None:
    routes = [
        route
        for router in (
            calls.router,
            transfers.router,
            sms_router,
            auth.router,
            cases.router,
            supervisor.router,
        )
        for route in router.routes
        if isinstance(route, APIRoute)
    ]
    assert routes
    words = re.compile(r"phone|mobile|contact|number|import|msisdn|sim", re.IGNORECASE)
    # The desk's sign-in asks for the operator's own desk number: not a phone.
    allowed = {"/ivr/operator-desk/number"}
    assert [route.path for route in routes if words.search(route.path)] == sorted(allowed)
