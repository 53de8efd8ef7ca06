"""The real Twilio client against a mock generated from Twilio's own OpenAPI document (§7)."""

from __future__ import annotations

import base64
import logging

import httpx
import pytest
from pydantic import SecretStr
from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from core.delivery.twilio import GatewayHttpClient, build_twilio_client
from core.platform.settings import Settings

ACCOUNT_SID = "AC0123456789abcdef0123456789abcdef"
AUTH_TOKEN = "mock-only-auth-token-0123456789"
CUSTOMER = "+79001234567"
SMS_NUMBER = "+78005550101"
HOTLINE_NUMBER = "+78005550100"
GATEWAY = "https://gateway.example"


@pytest.fixture
def settings(twilio_mock_url: str) -> Settings:
    return Settings(
        twilio_api_url=twilio_mock_url,
        twilio_account_sid=ACCOUNT_SID,
        twilio_auth_token=SecretStr(AUTH_TOKEN),
        twilio_timeout_seconds=20.0,
    )


@pytest.fixture
def client(settings: Settings) -> Client:
    return build_twilio_client(settings)


def last_exchange(client: Client) -> tuple[str, int]:
    """URL and status of the last request the client's HTTP client sent."""
    http_client = client.http_client
    return (
        str(http_client._test_only_last_request.url),
        int(http_client._test_only_last_response.status_code),
    )


def messages_url(base_url: str) -> str:
    return f"{base_url}/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"


def test_sms_is_created_through_the_mock(client: Client, twilio_mock_url: str) -> None:
    message = client.messages.create(
        to=CUSTOMER,
        from_=SMS_NUMBER,
        body="Код восстановления: 123456",
        status_callback=f"{GATEWAY}/sms/status",
    )

    assert str(message.sid).startswith("SM")
    assert last_exchange(client) == (messages_url(twilio_mock_url), 201)


def test_call_is_created_through_the_mock(client: Client, twilio_mock_url: str) -> None:
    call = client.calls.create(
        to=CUSTOMER,
        from_=HOTLINE_NUMBER,
        url=f"{GATEWAY}/ivr/voice",
        status_callback=f"{GATEWAY}/ivr/status",
    )

    assert str(call.sid).startswith("CA")
    calls_url = f"{twilio_mock_url}/2010-04-01/Accounts/{ACCOUNT_SID}/Calls.json"
    assert last_exchange(client) == (calls_url, 201)


def test_mock_rejects_what_twilio_would_reject_from_the_real_client(client: Client) -> None:
    with pytest.raises(TwilioRestException) as caught:
        client.messages.create(
            to=CUSTOMER, from_=SMS_NUMBER, body="x", status_callback="not a callback url"
        )

    assert caught.value.status == 422


@pytest.mark.parametrize(
    ("form", "auth", "expected_status"),
    [
        # The control: the same raw request, complete, is accepted.
        ({"To": CUSTOMER, "From": SMS_NUMBER, "Body": "x"}, (ACCOUNT_SID, AUTH_TOKEN), 201),
        ({"From": SMS_NUMBER, "Body": "x"}, (ACCOUNT_SID, AUTH_TOKEN), 422),
        ({"To": CUSTOMER, "From": SMS_NUMBER, "Body": "x"}, None, 401),
    ],
    ids=["complete", "missing-To", "no-auth"],
)
def test_mock_checks_raw_requests_against_the_contract(
    twilio_mock_url: str,
    form: dict[str, str],
    auth: tuple[str, str] | None,
    expected_status: int,
) -> None:
    response = httpx.post(messages_url(twilio_mock_url), data=form, auth=auth, timeout=20.0)

    assert response.status_code == expected_status, response.text
    if expected_status == 422:
        assert "'To'" in response.text


def test_auth_token_stays_out_of_twilio_logs(
    client: Client, twilio_mock_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="twilio")

    client.messages.create(to=CUSTOMER, from_=SMS_NUMBER, body="x")

    assert messages_url(twilio_mock_url) in caplog.text
    basic = base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()
    assert AUTH_TOKEN not in caplog.text
    assert basic not in caplog.text


def test_without_api_url_twilios_own_http_client_is_used() -> None:
    settings = Settings(twilio_api_url=None, twilio_timeout_seconds=3.5)

    client = build_twilio_client(settings)

    # Twilio's own client (only noting Retry-After), sending to Twilio's own hosts.
    assert type(client.http_client) is GatewayHttpClient
    assert isinstance(client.http_client, TwilioHttpClient)
    url = "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages.json"
    assert client.http_client.rewrite(url) == url
    assert client.http_client.timeout == 3.5
    assert client.account_sid == settings.twilio_account_sid


def test_with_api_url_the_timeout_is_kept() -> None:
    settings = Settings(twilio_api_url="http://127.0.0.1:4010", twilio_timeout_seconds=3.5)

    client = build_twilio_client(settings)

    assert isinstance(client.http_client, GatewayHttpClient)
    assert client.http_client.rewrite("https://api.twilio.com/x") == "http://127.0.0.1:4010/x"
    assert client.http_client.timeout == 3.5


def test_rewrite_replaces_scheme_and_host_and_keeps_the_rest() -> None:
    http_client = GatewayHttpClient("http://127.0.0.1:4010/twilio/")

    rewritten = http_client.rewrite(
        "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages.json?PageSize=5"
    )

    assert (
        rewritten == "http://127.0.0.1:4010/twilio/2010-04-01/Accounts/AC1/Messages.json?PageSize=5"
    )


@pytest.mark.parametrize("base_url", ["127.0.0.1:4010", "ftp://mock.example", "http://h/?x=1"])
def test_unusable_base_url_is_refused(base_url: str) -> None:
    with pytest.raises(ValueError, match="Twilio API base URL"):
        GatewayHttpClient(base_url)
