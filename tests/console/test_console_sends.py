"""Console credential sends (§6.15): one per case, a second only by a supervisor; limited per
operator and per account (account-less cases bound to a number included); counted toward the
global outbound budget; every send and refusal audited."""

from __future__ import annotations

import asyncio
import json

import httpx
from redis.asyncio import Redis

from core.models import OperatorRole
from core.recovery.limits import KEY_PREFIX, LOG_NAMES, Limit
from tests.conftest import MOBILE, MOBILE_ONLY, Gateway
from tests.console.conftest import (
    OPERATOR,
    SUPERVISOR,
    ConsoleClient,
    add_operator,
    audit_events,
    outbox,
    sms_callback_request,
)
from tests.console.test_console_http import open_escalation


def limits(gateway: Gateway, **overrides: int) -> None:
    """Change the running app's settings (each request builds its limiter from them)."""
    services = gateway.app.state.services
    services.settings = services.settings.model_copy(update=overrides)


async def send(client: ConsoleClient, case_id: int, what: str = "temporary-password") -> int:
    response = await client.post_form(
        f"/console/cases/{case_id}",
        f"/console/cases/{case_id}/{what}",
        account_number=MOBILE_ONLY,
        identity_confirmed="yes",
    )
    return response.status_code


async def credential_sms(gateway: Gateway) -> int:
    return len(await outbox(gateway.settings, MOBILE, "password")) + len(
        await outbox(gateway.settings, MOBILE, "login")
    )


async def signed_in_as(gateway: Gateway, username: str) -> ConsoleClient:
    http = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=gateway.app), base_url="https://console.eirc.example"
    )
    client = ConsoleClient(http)
    assert (await client.sign_in(username)).status_code == 303
    return client


async def test_one_send_per_case_and_a_second_only_by_a_supervisor(
    operator: ConsoleClient, gateway: Gateway
) -> None:
    case = await sms_callback_request(gateway, MOBILE_ONLY)
    assert await send(operator, case.id) == 303
    # Twenty more clicks: nothing more goes out, whatever the button.
    for what in ("temporary-password", "login") * 10:
        assert await send(operator, case.id, what) == 403
    assert await credential_sms(gateway) == 1
    page = await operator.http.get(f"/console/cases/{case.id}")
    assert "Уже отправлено: 1" in page.text
    supervisor = await signed_in_as(gateway, SUPERVISOR)
    try:
        assert await send(supervisor, case.id) == 303  # the case is in the operator's hands
        assert await credential_sms(gateway) == 2
        refused = await supervisor.post_form(
            f"/console/cases/{case.id}",
            f"/console/cases/{case.id}/login",
            account_number=MOBILE_ONLY,
            identity_confirmed="yes",
        )
        assert refused.status_code == 409 and "уже отправлено всё" in refused.text
    finally:
        await supervisor.http.aclose()
    assert await credential_sms(gateway) == 2
    sent = await audit_events(gateway.settings, "operator.password_sent")
    assert [
        (json.loads(e.detail)["operator"], json.loads(e.detail)["send_number"]) for e in sent
    ] == [
        (OPERATOR, 1),
        (SUPERVISOR, 2),
    ]
    refusals = await audit_events(gateway.settings, "operator.send_refused")
    assert len(refusals) == 21


async def test_clicks_at_once_send_once(operator: ConsoleClient, gateway: Gateway) -> None:
    case = await sms_callback_request(gateway, MOBILE_ONLY)
    page = await operator.http.get(f"/console/cases/{case.id}")
    token = page.text.split('name="csrf_token" value="')[1].split('"')[0]
    responses = await asyncio.gather(
        *(
            operator.http.post(
                f"/console/cases/{case.id}/temporary-password",
                data={
                    "csrf_token": token,
                    "account_number": MOBILE_ONLY,
                    "identity_confirmed": "yes",
                },
            )
            for _ in range(5)
        )
    )
    assert sorted(r.status_code for r in responses).count(303) == 1, responses
    assert await credential_sms(gateway) == 1


async def test_binding_account_less_cases_to_one_account_is_limited(
    operator: ConsoleClient, gateway: Gateway
) -> None:
    limits(gateway, console_sends_per_account=2)
    cases = [await open_escalation(gateway.settings, None) for _ in range(3)]
    assert await send(operator, cases[0]) == 303
    assert await send(operator, cases[1], "login") == 303
    refused = await operator.post_form(
        f"/console/cases/{cases[2]}",
        f"/console/cases/{cases[2]}/temporary-password",
        account_number=MOBILE_ONLY,
        identity_confirmed="yes",
    )
    assert refused.status_code == 429 and "ограничение частоты" in refused.text
    assert await credential_sms(gateway) == 2
    [event] = await audit_events(gateway.settings, "operator.send_limited")
    assert json.loads(event.detail)["limit"] == Limit.console_sends_account
    assert MOBILE_ONLY not in event.detail


async def test_sends_are_limited_per_operator(operator: ConsoleClient, gateway: Gateway) -> None:
    limits(gateway, console_sends_per_operator=2, console_sends_per_account=10)
    cases = [await open_escalation(gateway.settings, MOBILE_ONLY) for _ in range(3)]
    assert await send(operator, cases[0]) == 303
    assert await send(operator, cases[1]) == 303
    assert await send(operator, cases[2]) == 429
    assert await credential_sms(gateway) == 2
    # Another operator is not held back by this one's count.
    await add_operator(gateway.settings, "sidorova", OperatorRole.operator)
    other = await signed_in_as(gateway, "sidorova")
    try:
        assert await send(other, cases[2]) == 303
    finally:
        await other.http.aclose()


async def test_console_sends_count_toward_the_global_outbound_budget(
    operator: ConsoleClient, gateway: Gateway, redis: Redis
) -> None:
    limits(gateway, rate_limit_global_outbound_per_hour=1)
    first, second = [await open_escalation(gateway.settings, MOBILE_ONLY) for _ in range(2)]
    assert await send(operator, first) == 303
    assert await redis.zcard(KEY_PREFIX + LOG_NAMES[Limit.global_outbound]) == 1
    assert await send(operator, second) == 429
    [event] = await audit_events(gateway.settings, "operator.send_limited")
    assert json.loads(event.detail)["limit"] == Limit.global_outbound
    assert await credential_sms(gateway) == 1
