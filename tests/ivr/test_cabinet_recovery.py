"""Recoveries with GATEWAY_DIRECTORY=http against the reference cabinet over real HTTP (§11).

The temporary password the resident hears or receives is the one the cabinet stores (it forces
a change at sign-in, and the old password stops working); a cabinet in trouble gets the resident
no password at all, and the operator.
"""

from __future__ import annotations

import re
from pathlib import Path

from core.accounts.http import CABINET_REQUESTS
from tests.conftest import LANDLINE_ONLY, MOBILE, MOBILE_ONLY, UNKNOWN, Gateway
from tests.ivr.test_webhooks import at_code_entry, last_code, ru
from tests.support.cabinet_server import INITIAL_PASSWORD, Cabinet
from tests.support.twilio_driver import Phone
from voice_prompts import Language, load_catalogue

PROMPTS = load_catalogue()
PASSWORD_SMS = re.compile(r"\b([a-z0-9]{10})\b")


def texted_password(gateway: Gateway) -> str:
    (message,) = [m for m in gateway.messenger.to(MOBILE) if m.purpose == "password"]
    match = PASSWORD_SMS.search(message.body)
    assert match, "no password in the SMS"
    return match.group(1)


def cabinet_calls(operation: str, outcome: str) -> float:
    return float(CABINET_REQUESTS.labels(operation=operation, outcome=outcome)._value.get())


async def test_a_voice_recovery_sets_the_password_in_the_cabinet(
    cabinet_gateway: Gateway, cabinet: Cabinet
) -> None:
    before = cabinet_calls("set_password", "ok")
    call = await at_code_entry(cabinet_gateway)
    await call.press(last_code(cabinet_gateway))
    assert ru("voice.secret_repeat") in call.text, call.text
    password = texted_password(cabinet_gateway)
    assert cabinet_calls("set_password", "ok") == before + 1
    # The cabinet has it: it opens the account, forces a change; the old password is revoked.
    assert await cabinet.sign_in(MOBILE_ONLY, INITIAL_PASSWORD) == ""
    assert await cabinet.sign_in(MOBILE_ONLY, password) == "/change-password"
    account = cabinet.store.find_account(MOBILE_ONLY)
    assert account is not None and account.must_change


async def test_an_sms_recovery_sets_the_password_in_the_cabinet(
    cabinet_gateway: Gateway, cabinet: Cabinet
) -> None:
    phone = Phone(cabinet_gateway.twilio, MOBILE)
    await phone.text(f"ВОССТАНОВИТЬ {MOBILE_ONLY}")
    assert await phone.text(last_code(cabinet_gateway)) == []
    password = texted_password(cabinet_gateway)
    assert await cabinet.sign_in(MOBILE_ONLY, password) == "/change-password"


async def test_a_login_recovery_reads_the_login_and_changes_nothing(
    cabinet_gateway: Gateway, cabinet: Cabinet
) -> None:
    call = cabinet_gateway.call(MOBILE)
    await call.start()
    for key in ("2", MOBILE_ONLY + "#", "1", "1"):
        await call.press(key)
    await call.press(last_code(cabinet_gateway))
    assert ru("voice.secret_repeat") in call.text
    assert "ivanova" in " ".join(m.body for m in cabinet_gateway.messenger.to(MOBILE)).lower()
    assert await cabinet.sign_in(MOBILE_ONLY, INITIAL_PASSWORD) == "/cabinet"


async def test_a_cabinet_answering_503_gets_the_resident_no_password_and_the_operator(
    cabinet_gateway: Gateway, cabinet: Cabinet
) -> None:
    call = await at_code_entry(cabinet_gateway)
    cabinet.failing.append(503)
    await call.press(last_code(cabinet_gateway))
    assert ru("voice.error_apology") in call.text
    assert call.verbs()[-1] in ("Dial", "Enqueue")
    assert "Первая группа" not in call.text and ru("voice.secret_repeat") not in call.text
    assert [m for m in cabinet_gateway.messenger.sent if m.purpose == "password"] == []
    cabinet.failing.clear()
    assert await cabinet.sign_in(MOBILE_ONLY, INITIAL_PASSWORD) == "/cabinet"


async def test_a_disabled_account_reads_like_an_unknown_one(
    cabinet_gateway: Gateway, cabinet: Cabinet
) -> None:
    with cabinet.store.transaction() as connection:
        cabinet.store.set_status(connection, LANDLINE_ONLY, "disabled")
    heard = {}
    for account in (LANDLINE_ONLY, UNKNOWN):
        call = await at_code_entry(cabinet_gateway, account, caller="+79990001122")
        spoken = PROMPTS.digits(account, Language.ru)
        heard[account] = [line.replace(spoken, "<account>") for line in call.history]
    assert heard[LANDLINE_ONLY] == heard[UNKNOWN]
    assert cabinet_gateway.messenger.sent == []


async def test_a_cabinet_that_refuses_the_signature_is_an_apology_not_unknown(
    cabinet_gateway: Gateway, cabinet: Cabinet
) -> None:
    """401 (a wrong secret, a clock off): the operator, never "no such account" (§11)."""
    cabinet.failing.append(401)
    call = cabinet_gateway.call(MOBILE)
    await call.start()
    for key in ("1", MOBILE_ONLY + "#", "1"):
        await call.press(key)
    assert ru("voice.error_apology") in call.text
    assert call.verbs()[-1] in ("Dial", "Enqueue")


async def test_the_gateway_serves_the_cabinet_api_document(gateway: Gateway) -> None:
    """§11: the gateway publishes the contract it speaks, the same bytes as docs/."""
    response = await gateway.twilio.http.get("/cabinet-api.yaml")
    assert response.status_code == 200
    assert (
        response.content == (Path(__file__).parents[2] / "docs" / "cabinet-api.yaml").read_bytes()
    )
    assert "/accounts/{account_number}/temporary-password" in response.text
