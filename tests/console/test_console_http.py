"""The operator console over HTTP: sign-in, sessions, CSRF, roles and the case actions."""

from __future__ import annotations

import json
import logging
import re
from http.cookies import SimpleCookie

import httpx
import pytest

from core.accounts.directory import SqlAccountDirectory
from core.escalations.repository import Escalations
from core.models import EscalationKind, EscalationReason, EscalationStatus
from core.platform.crypto import Keyring
from core.platform.db import create_engine, create_sessionmaker, transaction
from core.platform.settings import Settings
from gateway.logging import configure_logging
from tests.conftest import (
    MOBILE,
    MOBILE_ONLY,
    TWO_MOBILES_EMAIL,
    UNKNOWN,
    Gateway,
    queued_emails,
    set_temporary_password,
)
from tests.console.conftest import (
    OPERATOR,
    PASSWORD,
    SUPERVISOR,
    ConsoleClient,
    audit_events,
    csrf_token,
    escalations,
    outbox,
    sms_callback_request,
)
from tests.support.hashing import counting_hashes


def set_cookies(response: httpx.Response) -> dict[str, SimpleCookie]:
    """The Set-Cookie headers of a response, parsed, by cookie name."""
    parsed: dict[str, SimpleCookie] = {}
    for header in response.headers.get_list("set-cookie"):
        cookie = SimpleCookie()
        cookie.load(header)
        for name in cookie:
            parsed[name] = cookie
    return parsed


async def issue_password(settings: Settings, account: str) -> str:
    """A password the resident has now (the one the operator's action must revoke)."""
    engine = create_engine(settings.database_url)
    try:
        async with transaction(create_sessionmaker(engine)) as session:
            directory = SqlAccountDirectory(session, settings)
            return await set_temporary_password(directory, settings, account)
    finally:
        await engine.dispose()


async def password_accepted(settings: Settings, account: str, password: str) -> bool:
    engine = create_engine(settings.database_url)
    try:
        async with transaction(create_sessionmaker(engine)) as session:
            check = await SqlAccountDirectory(session, settings).verify_password(account, password)
            return check.accepted
    finally:
        await engine.dispose()


async def open_escalation(settings: Settings, account: str | None, phone: str = MOBILE) -> int:
    engine = create_engine(settings.database_url)
    try:
        async with transaction(create_sessionmaker(engine)) as session:
            escalation = await Escalations(session, Keyring(settings)).open(
                kind=EscalationKind.transfer,
                channel="voice",
                phone=phone,
                reason=EscalationReason.verification_capped,
                session_ref="CA" + "1" * 32,
                account_number=account,
                purpose="password",
                attempts=3,
            )
            return escalation.id
    finally:
        await engine.dispose()


# -- sign-in and sessions ---------------------------------------------------------------------


async def test_sign_in_sets_a_strict_httponly_secure_session_cookie(console: ConsoleClient) -> None:
    response = await console.sign_in(OPERATOR)
    assert response.status_code == 303
    assert response.headers["location"] == "/console/"
    cookie = set_cookies(response)["eirc_console"]["eirc_console"]
    assert cookie["httponly"] is True
    assert cookie["secure"] is True
    assert cookie["samesite"].lower() == "strict"
    assert cookie["path"] == "/console"
    # The cookie is an opaque id, nothing about the operator.
    assert OPERATOR not in cookie.value and len(cookie.value) >= 40
    page = await console.http.get("/console/")
    assert page.status_code == 200
    assert "Очередь обращений" in page.text


async def test_cookies_are_not_secure_when_the_public_url_is_plain_http() -> None:
    plain = Settings(_env_file=None, public_base_url="http://127.0.0.1:8000")
    assert plain.console_cookies_secure is False
    assert Settings(_env_file=None, public_base_url="https://x.example").console_cookies_secure
    forced = Settings(_env_file=None, public_base_url="http://10.0.0.5", console_cookie_secure=True)
    assert forced.console_cookies_secure is True


async def test_wrong_password_and_unknown_user_get_the_same_polite_refusal(
    console: ConsoleClient,
) -> None:
    wrong = await console.sign_in(OPERATOR, "not the password")
    unknown = await console.sign_in("nobody", PASSWORD)
    for response in (wrong, unknown):
        assert response.status_code == 401
        assert "Неверное имя пользователя или пароль" in response.text
        assert "eirc_console" not in set_cookies(response)
    assert (await console.http.get("/console/")).status_code == 303


async def test_unknown_name_wrong_and_right_password_cost_one_argon2_check_each(
    console: ConsoleClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    costs = {}
    with counting_hashes(monkeypatch) as spy:
        for name, username, password in [
            ("unknown", "nobody", PASSWORD),
            ("wrong", OPERATOR, "not the password"),
            ("right", OPERATOR, PASSWORD),
        ]:
            spy.reset()
            await console.sign_in(username, password)
            costs[name] = (spy.verified, spy.hashed)
    assert costs == {"unknown": (1, 0), "wrong": (1, 0), "right": (1, 0)}


async def test_sign_in_is_rate_limited_per_username(console: ConsoleClient) -> None:
    # The console conftest allows 3 attempts per username in the window.
    for _ in range(3):
        assert (await console.sign_in(OPERATOR, "guess")).status_code == 401
    limited = await console.sign_in(OPERATOR)  # even the right password now waits
    assert limited.status_code == 429
    assert "Слишком много попыток входа" in limited.text
    # Another operator from the same address is still let in (the address allows 5).
    assert (await console.sign_in(SUPERVISOR)).status_code == 303


async def test_sign_in_is_rate_limited_per_client_address(console: ConsoleClient) -> None:
    for name in ("a1", "a2", "a3", "a4", "a5"):
        assert (await console.sign_in(name, "guess")).status_code == 401
    assert (await console.sign_in(SUPERVISOR)).status_code == 429


async def test_sign_in_form_without_its_csrf_token_is_refused(console: ConsoleClient) -> None:
    await console.http.get("/console/login")
    response = await console.http.post(
        "/console/login", data={"username": OPERATOR, "password": PASSWORD}
    )
    assert response.status_code == 403
    assert "Форма не принята" in response.text
    forged = await console.http.post(
        "/console/login",
        data={"username": OPERATOR, "password": PASSWORD, "csrf_token": "forged"},
    )
    assert forged.status_code == 403


async def test_pages_need_a_session(console: ConsoleClient) -> None:
    for path in ("/console/", "/console/cases/1", "/console/supervisor"):
        response = await console.http.get(path)
        assert response.status_code == 303, path
        assert response.headers["location"] == "/console/login"
    # The polled fragment answers 401 so that the script reloads into the sign-in page.
    assert (await console.http.get("/console/queue/rows")).status_code == 401
    # A made-up session id is no session.
    console.http.cookies.set("eirc_console", "made-up", domain="console.eirc.example")
    assert (await console.http.get("/console/")).status_code == 303


async def test_sign_out_ends_the_session_on_the_server(operator: ConsoleClient) -> None:
    old_cookie = operator.http.cookies.get("eirc_console")
    assert old_cookie
    response = await operator.post_form("/console/", "/console/logout")
    assert response.status_code == 303
    # Replaying the old cookie after sign-out gets nowhere.
    operator.http.cookies.set("eirc_console", old_cookie, domain="console.eirc.example")
    assert (await operator.http.get("/console/")).status_code == 303


async def test_a_disabled_operator_is_signed_out_at_the_next_request(
    operator: ConsoleClient, gateway: Gateway
) -> None:
    from core.operators.repository import OperatorRepository

    engine = create_engine(gateway.settings.database_url)
    async with transaction(create_sessionmaker(engine)) as session:
        assert await OperatorRepository(session).disable(OPERATOR)
    await engine.dispose()
    assert (await operator.http.get("/console/")).status_code == 303
    assert (await operator.sign_in(OPERATOR)).status_code == 401


async def test_console_pages_carry_security_headers(operator: ConsoleClient) -> None:
    for path in ("/console/", "/console/login", "/console/static/console.js"):
        response = await operator.http.get(path, follow_redirects=True)
        assert response.status_code == 200, path
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert "frame-ancestors 'none'" in csp
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["cache-control"] == "no-store"
    page = await operator.http.get("/console/")
    # No inline script: the only script is the static file.
    assert page.text.count("<script") == 1 and 'src="/console/static/console.js"' in page.text


# -- roles ------------------------------------------------------------------------------------


async def test_supervisor_view_is_for_supervisors_only(console: ConsoleClient) -> None:
    await console.sign_in(OPERATOR)
    refused = await console.http.get("/console/supervisor")
    assert refused.status_code == 403
    assert "только супервизорам" in refused.text
    assert "/console/supervisor" not in (await console.http.get("/console/")).text


async def test_supervisor_sees_counts_and_waiting_times(
    console: ConsoleClient, gateway: Gateway
) -> None:
    await open_escalation(gateway.settings, MOBILE_ONLY)
    await sms_callback_request(gateway, TWO_MOBILES_EMAIL, "+79037771230")
    await console.sign_in(SUPERVISOR)
    page = await console.http.get("/console/supervisor")
    assert page.status_code == 200
    assert "Сводка для супервизора" in page.text
    assert "медиана ожидания" in page.text
    assert "Превышен лимит неверных кодов" in page.text
    assert "Житель попросил оператора" in page.text


# -- the queue --------------------------------------------------------------------------------


async def test_queue_shows_waiting_cases_oldest_first_with_masked_context(
    operator: ConsoleClient, gateway: Gateway
) -> None:
    first = await open_escalation(gateway.settings, MOBILE_ONLY)
    second = (await sms_callback_request(gateway, TWO_MOBILES_EMAIL, "+79037771230")).id
    rows = await operator.http.get("/console/queue/rows")
    assert rows.status_code == 200
    text = rows.text
    assert text.index(f'data-case="{first}"') < text.index(f'data-case="{second}"')
    assert "*******001" in text and MOBILE_ONLY not in text
    assert "Обратный звонок" in text and "Перевод звонка" in text
    assert "Код отправлен" in text  # the SMS request had sent a code


# -- the case and its actions -----------------------------------------------------------------


async def test_case_page_shows_context_and_audit_history_masked(
    operator: ConsoleClient, gateway: Gateway
) -> None:
    case = await sms_callback_request(gateway, MOBILE_ONLY)
    page = await operator.http.get(f"/console/cases/{case.id}")
    assert page.status_code == 200
    assert "Начато восстановление" in page.text and "Код отправлен по SMS" in page.text
    assert MOBILE_ONLY not in page.text and MOBILE not in page.text
    assert "•••6789" in page.text  # the phone, last four digits only


async def test_send_temporary_password_texts_the_mobile_on_file_and_audits_the_operator(
    operator: ConsoleClient, gateway: Gateway
) -> None:
    old_password = await issue_password(gateway.settings, MOBILE_ONLY)
    case = await sms_callback_request(gateway, MOBILE_ONLY)
    gateway.messenger.sent.clear()

    response = await operator.post_form(
        f"/console/cases/{case.id}",
        f"/console/cases/{case.id}/temporary-password",
        account_number=MOBILE_ONLY,
        identity_confirmed="yes",
    )
    assert response.status_code == 303
    assert response.headers["location"] == f"/console/cases/{case.id}?done=password_sent"

    [row] = await outbox(gateway.settings, MOBILE, "password")
    [sms] = [item for item in gateway.messenger.to(MOBILE) if item.purpose == "password"]
    found = re.search(r"пароль (\w+)", sms.body)
    assert found, sms.body
    new_password = found.group(1)
    assert await password_accepted(gateway.settings, MOBILE_ONLY, new_password)
    assert not await password_accepted(gateway.settings, MOBILE_ONLY, old_password)
    # The operator never sees it: not on the page they land on.
    page = await operator.http.get(response.headers["location"])
    assert "Временный пароль отправлен" in page.text
    assert new_password not in page.text

    [event] = await audit_events(gateway.settings, "operator.password_sent")
    detail = json.loads(event.detail)
    assert detail["operator"] == OPERATOR and detail["escalation"] == case.id
    assert detail["sent_by_sms"] is True
    assert new_password not in event.detail
    assert await audit_events(gateway.settings, "recovery.completed")
    [taken] = await escalations(gateway.settings)
    assert taken.status is EscalationStatus.in_progress and taken.operator == OPERATOR
    assert row.id


async def test_send_notifies_the_other_contacts_like_any_recovery(
    operator: ConsoleClient, gateway: Gateway
) -> None:
    case = await sms_callback_request(gateway, TWO_MOBILES_EMAIL, "+79037771230")
    response = await operator.post_form(
        f"/console/cases/{case.id}",
        f"/console/cases/{case.id}/temporary-password",
        account_number=TWO_MOBILES_EMAIL,
        identity_confirmed="yes",
    )
    assert response.status_code == 303
    assert await outbox(gateway.settings, "+79037771230", "password")
    assert await outbox(gateway.settings, "+79221054419", "notice")
    assert await queued_emails(gateway.settings, "e.smirnova@example.ru")


async def test_a_different_account_number_is_refused_and_nothing_is_sent(
    operator: ConsoleClient, gateway: Gateway
) -> None:
    case = await sms_callback_request(gateway, MOBILE_ONLY)
    response = await operator.post_form(
        f"/console/cases/{case.id}",
        f"/console/cases/{case.id}/temporary-password",
        account_number=TWO_MOBILES_EMAIL,
        identity_confirmed="yes",
    )
    assert response.status_code == 400
    assert "не совпадает со счётом этого обращения" in response.text
    assert not await outbox(gateway.settings, "+79037771230", "password")
    assert not await outbox(gateway.settings, MOBILE, "password")
    [event] = await audit_events(gateway.settings, "operator.account_mismatch")
    assert json.loads(event.detail)["operator"] == OPERATOR


async def test_sending_needs_the_identity_check_confirmed(
    operator: ConsoleClient, gateway: Gateway
) -> None:
    case = await sms_callback_request(gateway, MOBILE_ONLY)
    response = await operator.post_form(
        f"/console/cases/{case.id}",
        f"/console/cases/{case.id}/temporary-password",
        account_number=MOBILE_ONLY,
    )
    assert response.status_code == 400
    assert "проверили личность" in response.text
    assert not await outbox(gateway.settings, MOBILE, "password")


async def test_a_case_without_an_account_takes_the_number_the_caller_gives(
    operator: ConsoleClient, gateway: Gateway
) -> None:
    case_id = await open_escalation(gateway.settings, None)
    unknown = await operator.post_form(
        f"/console/cases/{case_id}",
        f"/console/cases/{case_id}/login",
        account_number=UNKNOWN,
        identity_confirmed="yes",
    )
    assert unknown.status_code == 400 and "нет в справочнике" in unknown.text
    sent = await operator.post_form(
        f"/console/cases/{case_id}",
        f"/console/cases/{case_id}/login",
        account_number=MOBILE_ONLY,
        identity_confirmed="yes",
    )
    assert sent.status_code == 303
    [login_sms] = await outbox(gateway.settings, MOBILE, "login")
    assert login_sms.id
    [case] = await escalations(gateway.settings)
    assert case.account_masked == "*******001"


async def test_a_landline_only_account_is_refused_before_its_password_is_touched(
    operator: ConsoleClient, gateway: Gateway
) -> None:
    from tests.conftest import LANDLINE_ONLY

    old_password = await issue_password(gateway.settings, LANDLINE_ONLY)
    case_id = await open_escalation(gateway.settings, LANDLINE_ONLY)
    response = await operator.post_form(
        f"/console/cases/{case_id}",
        f"/console/cases/{case_id}/temporary-password",
        account_number=LANDLINE_ONLY,
        identity_confirmed="yes",
    )
    assert response.status_code == 400
    assert "нет мобильного телефона" in response.text
    assert await password_accepted(gateway.settings, LANDLINE_ONLY, old_password)


async def test_resolve_needs_a_note_and_records_it_with_the_operator(
    operator: ConsoleClient, gateway: Gateway
) -> None:
    case_id = await open_escalation(gateway.settings, MOBILE_ONLY)
    page = f"/console/cases/{case_id}"
    empty = await operator.post_form(page, f"{page}/resolve", note="  ")
    assert empty.status_code == 400 and "напишите комментарий" in empty.text
    done = await operator.post_form(page, f"{page}/resolve", note="Пароль выслан, житель вошёл.")
    assert done.status_code == 303
    [case] = await escalations(gateway.settings)
    assert case.status is EscalationStatus.resolved
    assert case.note == "Пароль выслан, житель вошёл."
    assert case.operator == OPERATOR and case.closed_at is not None
    [event] = await audit_events(gateway.settings, "operator.case_resolved")
    assert json.loads(event.detail)["operator"] == OPERATOR
    # A closed case takes no more actions.
    again = await operator.post_form(page, f"{page}/abandon", note="")
    assert again.status_code == 409


async def test_abandon_and_take(operator: ConsoleClient, gateway: Gateway) -> None:
    case_id = await open_escalation(gateway.settings, MOBILE_ONLY)
    page = f"/console/cases/{case_id}"
    assert (await operator.post_form(page, f"{page}/take")).status_code == 303
    [case] = await escalations(gateway.settings)
    assert case.status is EscalationStatus.in_progress and case.operator == OPERATOR
    assert (await operator.post_form(page, f"{page}/abandon", note="")).status_code == 303
    [case] = await escalations(gateway.settings)
    assert case.status is EscalationStatus.abandoned
    assert await audit_events(gateway.settings, "operator.case_taken")
    assert await audit_events(gateway.settings, "operator.case_abandoned")


async def test_a_case_in_another_operators_hands_is_refused(
    console: ConsoleClient, gateway: Gateway
) -> None:
    case_id = await open_escalation(gateway.settings, MOBILE_ONLY)
    page = f"/console/cases/{case_id}"
    await console.sign_in(SUPERVISOR)
    assert (await console.post_form(page, f"{page}/take")).status_code == 303
    await console.post_form("/console/", "/console/logout")
    await console.sign_in(OPERATOR)
    response = await console.post_form(page, f"{page}/resolve", note="мой")
    assert response.status_code == 409
    assert "в работе у другого оператора" in response.text


async def test_actions_without_or_with_a_wrong_csrf_token_are_refused(
    operator: ConsoleClient, gateway: Gateway
) -> None:
    case_id = await open_escalation(gateway.settings, MOBILE_ONLY)
    page = await operator.http.get(f"/console/cases/{case_id}")
    token = csrf_token(page.text)
    fields = {"account_number": MOBILE_ONLY, "identity_confirmed": "yes"}
    action = f"/console/cases/{case_id}/temporary-password"
    missing = await operator.http.post(action, data=fields)
    wrong = await operator.http.post(action, data={**fields, "csrf_token": token[:-2] + "xx"})
    for response in (missing, wrong):
        assert response.status_code == 403
        assert "Форма не принята" in response.text
    assert not await outbox(gateway.settings, MOBILE, "password")
    [case] = await escalations(gateway.settings)
    assert case.status is EscalationStatus.waiting
    # Another session's token is no good either.
    other = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=gateway.app), base_url="https://console.eirc.example"
    )
    async with other:
        await ConsoleClient(other).sign_in(SUPERVISOR)
        other_page = await other.get(f"/console/cases/{case_id}")
        stolen = csrf_token(other_page.text)
    assert stolen != token
    response = await operator.http.post(
        f"/console/cases/{case_id}/take", data={"csrf_token": stolen}
    )
    assert response.status_code == 403


async def test_unknown_case_is_a_clear_404(operator: ConsoleClient) -> None:
    response = await operator.http.get("/console/cases/999999")
    assert response.status_code == 404
    assert "Обращение не найдено" in response.text
    for path in ("/console/cases/abc", "/console/cases/99999999999999999999", "/console/cases/0"):
        assert (await operator.http.get(path)).status_code == 422, path


@pytest.mark.usefixtures("restore_logging")
async def test_console_logs_carry_no_password(
    console: ConsoleClient,
    gateway: Gateway,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """§6.7 on the console: neither an operator's password nor the one sent is ever logged."""
    # The gateway's own log set-up, bound now to the captured stderr, at its most verbose.
    configure_logging(json=True, level="DEBUG")
    caplog.set_level(logging.DEBUG)
    await _sign_in_and_send(console, gateway)
    [sms] = [item for item in gateway.messenger.to(MOBILE) if item.purpose == "password"]
    found = re.search(r"пароль (\w+)", sms.body)
    assert found, sms.body

    captured = capfd.readouterr()
    output = "\n".join(
        [captured.out, captured.err, caplog.text, *(repr(r.__dict__) for r in caplog.records)]
    )
    # The log was captured: the refused sign-in and the send are in it.
    assert "console.signin_refused" in output and "desk.credential_sent" in output
    for secret in (WRONG_PASSWORD, PASSWORD, found.group(1)):
        assert secret not in output


# Letters only: a run of digits would be masked by the log scrubber anyway.
WRONG_PASSWORD = "Wrong-Pass-quiet-meadow"


async def _sign_in_and_send(console: ConsoleClient, gateway: Gateway) -> None:
    """A refused sign-in, a good one, and a temporary password sent from a case."""
    assert (await console.sign_in(OPERATOR, WRONG_PASSWORD)).status_code == 401
    assert (await console.sign_in(OPERATOR)).status_code == 303
    case = await sms_callback_request(gateway, MOBILE_ONLY)
    response = await console.post_form(
        f"/console/cases/{case.id}",
        f"/console/cases/{case.id}/temporary-password",
        account_number=MOBILE_ONLY,
        identity_confirmed="yes",
    )
    assert response.status_code == 303
