"""X-Twilio-Signature at its edges (§6.1): missing or foreign signatures, query strings, a
TLS-terminating proxy, explicit ports, and JSON callbacks signed with bodySHA256."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager
from typing import Any, cast
from urllib.parse import urlencode

import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis
from sqlalchemy import select
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from core.models import OutboxMessage
from core.platform.db import create_engine, create_sessionmaker, transaction
from core.platform.settings import Settings, UnsafeSettingsError
from core.web.signature import MAX_BODY_BYTES, SignatureVerifier
from gateway.app import create_app
from tests.conftest import AUTH_TOKEN, MOBILE, MOBILE_ONLY, PUBLIC_BASE_URL, Gateway
from tests.support.fakes import RecordingMessenger
from tests.support.twilio_driver import Phone, sign

SIGNATURE = "X-Twilio-Signature"
FORM_TYPE = {"content-type": "application/x-www-form-urlencoded"}
ACCOUNT_SID = "AC" + "0" * 32
CALL_SID = "CA" + "1" * 32
MESSAGE_SID = "SM" + "2" * 32

# Every webhook with a form it accepts when correctly signed, and what it answers.
WEBHOOKS: list[tuple[str, dict[str, str], int]] = [
    ("/ivr/voice", {"CallSid": CALL_SID, "From": MOBILE, "CallStatus": "ringing"}, 200),
    ("/ivr/step?s=0", {"CallSid": CALL_SID, "Digits": "1"}, 200),
    ("/ivr/verify?a=x", {"CallSid": CALL_SID}, 200),
    ("/ivr/whisper", {"CallSid": CALL_SID}, 200),
    ("/ivr/dial-result", {"CallSid": CALL_SID, "DialCallStatus": "completed"}, 200),
    ("/ivr/status", {"CallSid": CALL_SID, "CallStatus": "completed"}, 204),
    ("/sms/inbound", {"MessageSid": MESSAGE_SID, "From": MOBILE, "Body": "HELP"}, 200),
    ("/sms/status", {"MessageSid": MESSAGE_SID, "MessageStatus": "delivered"}, 204),
]
WEBHOOK_IDS = [path for path, _, _ in WEBHOOKS]


def with_account(params: dict[str, str]) -> dict[str, str]:
    return {"AccountSid": ACCOUNT_SID, **params}


async def post(
    http: httpx.AsyncClient,
    path: str,
    *,
    data: dict[str, str] | None = None,
    content: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    return await http.post(path, data=data, content=content, headers=headers or {})


@asynccontextmanager
async def running(
    settings: Settings, *, base_url: str, behind_proxy: bool = False
) -> AsyncIterator[httpx.AsyncClient]:
    """Another app on the test database and Redis, reached at `base_url`."""
    app = create_app(settings, messenger=RecordingMessenger())
    async with app.router.lifespan_context(app):
        # uvicorn --proxy-headers: X-Forwarded-Proto/For rewrite the scheme and client.
        asgi: Any = (
            ProxyHeadersMiddleware(cast(Any, app), trusted_hosts="*") if behind_proxy else app
        )
        transport = httpx.ASGITransport(app=asgi)
        async with httpx.AsyncClient(transport=transport, base_url=base_url) as http:
            yield http


# -- missing, wrong, foreign ----------------------------------------------------------------


@pytest.mark.parametrize(("path", "params", "ok"), WEBHOOKS, ids=WEBHOOK_IDS)
async def test_signed_webhook_is_accepted(
    gateway: Gateway, path: str, params: dict[str, str], ok: int
) -> None:
    """The baseline: each request below differs from this accepted one in one way only."""
    response = await gateway.twilio.post(path, with_account(params))
    assert response.status_code == ok, response.text


@pytest.mark.parametrize(
    "headers",
    [{}, {SIGNATURE: ""}, {SIGNATURE: " "}, {"X-Twilio-Signature-Missing": "x"}],
    ids=["absent", "empty", "blank", "other-header"],
)
@pytest.mark.parametrize(("path", "params", "ok"), WEBHOOKS, ids=WEBHOOK_IDS)
async def test_missing_signature_is_403(
    gateway: Gateway, path: str, params: dict[str, str], ok: int, headers: dict[str, str]
) -> None:
    response = await post(gateway.twilio.http, path, data=with_account(params), headers=headers)
    assert response.status_code == 403, response.text
    assert gateway.messenger.sent == []


@pytest.mark.parametrize(
    "signature",
    [
        b"=" * 28,
        b"x" * 10_000,
        "ünïcødé-signatüre".encode("latin-1"),
        b"\x00\x01",
        b"A" * 27 + b"=",
    ],
    ids=["padding", "huge", "latin-1", "control", "base64-shaped"],
)
@pytest.mark.parametrize(("path", "params", "ok"), WEBHOOKS, ids=WEBHOOK_IDS)
async def test_garbage_signature_is_403(
    gateway: Gateway, path: str, params: dict[str, str], ok: int, signature: bytes
) -> None:
    response = await gateway.twilio.http.post(
        path, data=with_account(params), headers={SIGNATURE.encode(): signature}
    )
    assert response.status_code == 403, response.text
    assert gateway.messenger.sent == []


@pytest.mark.parametrize(("path", "params", "ok"), WEBHOOKS, ids=WEBHOOK_IDS)
async def test_signature_by_another_token_is_403(
    gateway: Gateway, path: str, params: dict[str, str], ok: int
) -> None:
    form = with_account(params)
    for token in ("another-accounts-auth-token-9876", AUTH_TOKEN.upper(), AUTH_TOKEN + " "):
        response = await gateway.twilio.post(
            path, form, signature=sign(token, PUBLIC_BASE_URL + path, form)
        )
        assert response.status_code == 403, (token, response.text)


# -- query strings -------------------------------------------------------------------------


async def test_signed_query_string_is_accepted(gateway: Gateway) -> None:
    path = "/ivr/whisper?c=" + CALL_SID + "&r=caller_request"
    response = await gateway.twilio.post(path, with_account({"CallSid": "CA" + "f" * 32}))
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "sent",
    [
        "/ivr/whisper?c=" + CALL_SID + "&r=retries_exhausted",  # a value changed
        "/ivr/whisper?r=caller_request&c=" + CALL_SID,  # reordered
        "/ivr/whisper?c=" + CALL_SID + "&r=caller_request&x=1",  # a parameter added
        "/ivr/whisper?c=" + CALL_SID,  # a parameter dropped
        "/ivr/whisper",  # the query dropped
        "/ivr/whisper?c=" + CALL_SID.lower() + "&r=caller_request",  # case changed
    ],
    ids=["value", "reordered", "added", "dropped", "no-query", "case"],
)
async def test_altered_query_string_is_403(gateway: Gateway, sent: str) -> None:
    signed_for = "/ivr/whisper?c=" + CALL_SID + "&r=caller_request"
    form = with_account({"CallSid": "CA" + "f" * 32})
    signature = sign(AUTH_TOKEN, PUBLIC_BASE_URL + signed_for, form)
    response = await gateway.twilio.post(sent, form, signature=signature)
    assert response.status_code == 403, response.text


async def test_query_string_is_not_a_second_form(gateway: Gateway) -> None:
    """Moving a field from the body into the query string breaks the signature."""
    form = with_account({"CallSid": CALL_SID, "Digits": "1"})
    signature = sign(AUTH_TOKEN, PUBLIC_BASE_URL + "/ivr/step?s=0", form)
    moved = {k: v for k, v in form.items() if k != "Digits"}
    response = await gateway.twilio.post("/ivr/step?s=0&Digits=1", moved, signature=signature)
    assert response.status_code == 403


async def test_non_utf8_query_string_is_400_not_500(gateway: Gateway) -> None:
    """Twilio percent-encodes its URLs; raw bytes in a query string are refused, not a crash."""
    form = with_account({"CallSid": CALL_SID})
    signature = sign(AUTH_TOKEN, PUBLIC_BASE_URL + "/ivr/verify?a=\ufffd", form)
    headers = {**FORM_TYPE, SIGNATURE: signature}
    for path in ("/ivr/verify", "/ivr/voice", "/sms/inbound"):
        status, _ = await asgi_post(
            gateway.app, path, b"a=\xff\xfe", urlencode(form).encode(), headers
        )
        assert status == 400, path


async def test_non_utf8_query_string_is_400_with_the_check_off(gateway: Gateway) -> None:
    settings = gateway.settings.model_copy(update={"dev_disable_signature_check": True})
    app = create_app(settings, messenger=RecordingMessenger())
    async with app.router.lifespan_context(app):
        body = urlencode({"CallSid": CALL_SID}).encode()
        status, _ = await asgi_post(app, "/ivr/step", b"s=0&\xff", body, FORM_TYPE)
        assert status == 400


async def asgi_post(
    app: FastAPI, path: str, query: bytes, body: bytes, headers: dict[str, str]
) -> tuple[int, bytes]:
    """One request straight through ASGI, for bytes an HTTP client would not send."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("gateway.internal", 80),
        "state": {},
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    content = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return int(start["status"]), content


# -- behind a TLS-terminating proxy --------------------------------------------------------

PROXY_PUBLIC = "https://public.eirc.example"
INTERNAL = "http://internal-host:8080"
FORWARDED = {
    "X-Forwarded-Proto": "http",
    "X-Forwarded-Host": "evil.example",
    "X-Forwarded-Port": "8081",
    "X-Forwarded-Prefix": "/evil",
    "X-Forwarded-For": "203.0.113.7",
    "X-Original-URL": "https://evil.example/ivr/voice",
    "Forwarded": "proto=http;host=evil.example",
    "Host": "evil.example",
}


@pytest.fixture
async def behind_proxy(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    """The app as a proxy forwards to it: plain HTTP on an internal host and port."""
    settings = gateway.settings.model_copy(update={"public_base_url": PROXY_PUBLIC + "/"})
    async with running(settings, base_url=INTERNAL, behind_proxy=True) as http:
        yield http


def voice_form() -> dict[str, str]:
    return with_account({"CallSid": CALL_SID, "From": MOBILE, "CallStatus": "ringing"})


async def test_proxy_public_url_signature_is_accepted(behind_proxy: httpx.AsyncClient) -> None:
    form = voice_form()
    signature = sign(AUTH_TOKEN, PROXY_PUBLIC + "/ivr/voice", form)
    response = await post(behind_proxy, "/ivr/voice", data=form, headers={SIGNATURE: signature})
    assert response.status_code == 200, response.text
    assert str(response.request.url).startswith(INTERNAL)


@pytest.mark.parametrize("header", list(FORWARDED), ids=str.lower)
async def test_forwarded_headers_do_not_change_the_signed_url(
    behind_proxy: httpx.AsyncClient, header: str
) -> None:
    form = voice_form()
    headers = {header: FORWARDED[header]}
    public = sign(AUTH_TOKEN, PROXY_PUBLIC + "/ivr/voice", form)
    accepted = await post(
        behind_proxy, "/ivr/voice", data=form, headers={**headers, SIGNATURE: public}
    )
    assert accepted.status_code == 200, accepted.text
    # A signature for the URL the forwarded headers describe is refused.
    for url in (
        "https://evil.example/ivr/voice",
        "http://evil.example/ivr/voice",
        "https://evil.example:8081/ivr/voice",
        "https://public.eirc.example/evil/ivr/voice",
        INTERNAL + "/ivr/voice",
        "http://public.eirc.example/ivr/voice",
    ):
        forged = {**headers, SIGNATURE: sign(AUTH_TOKEN, url, form)}
        refused = await post(behind_proxy, "/ivr/voice", data=form, headers=forged)
        assert refused.status_code == 403, (url, refused.text)


async def test_all_forwarded_headers_at_once(behind_proxy: httpx.AsyncClient) -> None:
    form = voice_form()
    public = {**FORWARDED, SIGNATURE: sign(AUTH_TOKEN, PROXY_PUBLIC + "/ivr/voice", form)}
    assert (await post(behind_proxy, "/ivr/voice", data=form, headers=public)).status_code == 200
    internal = {**FORWARDED, SIGNATURE: sign(AUTH_TOKEN, INTERNAL + "/ivr/voice", form)}
    assert (await post(behind_proxy, "/ivr/voice", data=form, headers=internal)).status_code == 403


async def test_public_base_url_with_a_path_prefix(gateway: Gateway) -> None:
    """The proxy serves the gateway under /hotline and strips the prefix before forwarding."""
    base = PROXY_PUBLIC + "/hotline"
    settings = gateway.settings.model_copy(update={"public_base_url": base})
    async with running(settings, base_url=INTERNAL, behind_proxy=True) as http:
        form = voice_form()
        ok = {SIGNATURE: sign(AUTH_TOKEN, base + "/ivr/voice", form)}
        assert (await post(http, "/ivr/voice", data=form, headers=ok)).status_code == 200
        bare = {SIGNATURE: sign(AUTH_TOKEN, PROXY_PUBLIC + "/ivr/voice", form)}
        assert (await post(http, "/ivr/voice", data=form, headers=bare)).status_code == 403


# -- explicit ports ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base", "signed_base", "accepted"),
    [
        # Twilio's RequestValidator accepts the URL with and without the port.
        ("https://hotline.eirc.example:8443", "https://hotline.eirc.example:8443", True),
        ("https://hotline.eirc.example:8443", "https://hotline.eirc.example", True),
        ("https://hotline.eirc.example:8443", "https://hotline.eirc.example:9443", False),
        ("https://hotline.eirc.example:8443", "http://hotline.eirc.example:8443", False),
        ("https://hotline.eirc.example", "https://hotline.eirc.example:443", True),
        ("https://hotline.eirc.example", "https://hotline.eirc.example", True),
        ("https://hotline.eirc.example", "https://hotline.eirc.example:8443", False),
        ("http://hotline.eirc.example:8080", "http://hotline.eirc.example", True),
        ("http://hotline.eirc.example", "http://hotline.eirc.example:80", True),
    ],
)
async def test_public_base_url_with_and_without_a_port(
    gateway: Gateway, base: str, signed_base: str, accepted: bool
) -> None:
    settings = gateway.settings.model_copy(update={"public_base_url": base})
    async with running(settings, base_url=INTERNAL) as http:
        for path in ("/ivr/voice", "/ivr/step?s=0"):
            form = voice_form()
            headers = {SIGNATURE: sign(AUTH_TOKEN, signed_base + path, form)}
            response = await post(http, path, data=form, headers=headers)
            assert response.status_code == (200 if accepted else 403), (path, response.text)


@pytest.mark.parametrize(
    "base", ["hotline.eirc.example", "https://", "https://hotline:99999", "ftp://hotline"]
)
def test_a_public_base_url_no_signature_could_match_is_refused(
    settings: Settings, base: str
) -> None:
    with pytest.raises(UnsafeSettingsError, match="GATEWAY_PUBLIC_BASE_URL"):
        SignatureVerifier(settings.model_copy(update={"public_base_url": base}))


# -- JSON callbacks signed with bodySHA256 -------------------------------------------------


def json_request(path: str, body: bytes, *, body_for_hash: bytes | None = None) -> tuple[str, str]:
    """The URL Twilio requests for a JSON body (with bodySHA256) and its signature."""
    digest = hashlib.sha256(body if body_for_hash is None else body_for_hash).hexdigest()
    separator = "&" if "?" in path else "?"
    url = f"{path}{separator}bodySHA256={digest}"
    return url, sign(AUTH_TOKEN, PUBLIC_BASE_URL + url, {})


JSON_TYPE = {"content-type": "application/json"}


def status_json(call_sid: str, status: str = "completed") -> bytes:
    document = {"AccountSid": ACCOUNT_SID, "CallSid": call_sid, "CallStatus": status}
    return json.dumps(document, ensure_ascii=False).encode()


async def start_call(gateway: Gateway, redis: Redis) -> str:
    response = await gateway.twilio.post("/ivr/voice", voice_form())
    assert response.status_code == 200
    assert await redis.exists(f"call:{CALL_SID}")
    return CALL_SID


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8"])
async def test_json_callback_with_body_hash_is_accepted(
    gateway: Gateway, redis: Redis, content_type: str
) -> None:
    call_sid = await start_call(gateway, redis)
    body = status_json(call_sid)
    url, signature = json_request("/ivr/status", body)
    headers = {"content-type": content_type, SIGNATURE: signature}
    response = await post(gateway.twilio.http, url, content=body, headers=headers)
    assert response.status_code == 204, response.text
    # The JSON's fields were read: the finished call's state is gone.
    assert not await redis.exists(f"call:{call_sid}")


async def test_json_callback_with_other_query_parameters(gateway: Gateway) -> None:
    body = json.dumps({"CallSid": "CA" + "f" * 32, "Nested": {"x": 1}, "N": 5}).encode()
    url, signature = json_request("/ivr/whisper?c=" + CALL_SID + "&r=caller_request", body)
    response = await post(
        gateway.twilio.http, url, content=body, headers={**JSON_TYPE, SIGNATURE: signature}
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "tampered",
    [
        lambda body: body.replace(b"completed", b"ringing__"),
        lambda body: body + b" ",
        lambda body: body[:-1],
        lambda body: b"",
    ],
    ids=["value", "trailing-space", "truncated", "emptied"],
)
async def test_json_callback_with_a_tampered_body_is_403(
    gateway: Gateway, redis: Redis, tampered: Any
) -> None:
    call_sid = await start_call(gateway, redis)
    body = status_json(call_sid)
    url, signature = json_request("/ivr/status", body)
    response = await post(
        gateway.twilio.http,
        url,
        content=tampered(body),
        headers={**JSON_TYPE, SIGNATURE: signature},
    )
    assert response.status_code == 403, response.text
    assert await redis.exists(f"call:{call_sid}")


async def test_json_callback_whose_hash_was_recomputed_is_403(
    gateway: Gateway, redis: Redis
) -> None:
    """The attacker fixes bodySHA256 for a new body, but the signature covered the old URL."""
    call_sid = await start_call(gateway, redis)
    signed_url, signature = json_request("/ivr/status", status_json(call_sid, "ringing"))
    body = status_json(call_sid)
    url, _ = json_request("/ivr/status", body)
    assert url != signed_url
    response = await post(
        gateway.twilio.http, url, content=body, headers={**JSON_TYPE, SIGNATURE: signature}
    )
    assert response.status_code == 403
    assert await redis.exists(f"call:{call_sid}")


async def test_json_callback_with_missing_or_foreign_signature_is_403(gateway: Gateway) -> None:
    body = status_json(CALL_SID)
    url, _ = json_request("/ivr/status", body)
    for headers in (
        JSON_TYPE,
        {
            **JSON_TYPE,
            SIGNATURE: sign("another-accounts-auth-token-9876", PUBLIC_BASE_URL + url, {}),
        },
        # Signed as though the JSON fields were a form: not how Twilio signs a JSON body.
        {**JSON_TYPE, SIGNATURE: sign(AUTH_TOKEN, PUBLIC_BASE_URL + url, json.loads(body))},
    ):
        response = await post(gateway.twilio.http, url, content=body, headers=headers)
        assert response.status_code == 403, response.text


@pytest.mark.parametrize(("path", "params", "ok"), WEBHOOKS, ids=WEBHOOK_IDS)
async def test_json_without_body_hash_is_refused(
    gateway: Gateway, path: str, params: dict[str, str], ok: int
) -> None:
    """The webhooks stay form-only: a JSON body is read only as Twilio signs one."""
    body = json.dumps(with_account(params)).encode()
    # Even "signed" the way a form would be, or over the URL alone.
    for signature in (
        sign(AUTH_TOKEN, PUBLIC_BASE_URL + path, with_account(params)),
        sign(AUTH_TOKEN, PUBLIC_BASE_URL + path, {}),
    ):
        headers = {**JSON_TYPE, SIGNATURE: signature}
        response = await post(gateway.twilio.http, path, content=body, headers=headers)
        assert response.status_code == 415, response.text
    assert gateway.messenger.sent == []


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"[1, 2, 3]", 400),  # an array: no fields, so no CallSid
        (b'"CA' + b"1" * 32 + b'"', 400),
        (b"{not json", 400),
        (b"[" * 20_000 + b"]" * 20_000, 400),  # nesting deep enough to exhaust recursion
        (b'{"CallSid": 1' + b"0" * 5000 + b"}", 400),  # an integer beyond int()'s limit
        (b'{"CallSid": "CA\xff"}', 400),  # not UTF-8
        (b'{"CallSid": "CA' + b"1" * 32 + b'", "CallStatus": "busy"}', 204),
    ],
    ids=["array", "string", "malformed", "deep", "huge-int", "non-utf8", "object"],
)
async def test_signed_json_bodies_of_any_shape_get_4xx_or_an_answer(
    gateway: Gateway, body: bytes, expected: int
) -> None:
    url, signature = json_request("/ivr/status", body)
    response = await post(
        gateway.twilio.http, url, content=body, headers={**JSON_TYPE, SIGNATURE: signature}
    )
    assert response.status_code == expected, response.text


async def test_json_callback_over_the_size_limit_is_413(gateway: Gateway) -> None:
    body = json.dumps({"CallSid": CALL_SID, "Pad": "x" * MAX_BODY_BYTES}).encode()
    url, signature = json_request("/ivr/status", body)
    response = await post(
        gateway.twilio.http, url, content=body, headers={**JSON_TYPE, SIGNATURE: signature}
    )
    assert response.status_code == 413


async def test_json_callback_values_are_strings_only(gateway: Gateway, redis: Redis) -> None:
    """A non-string CallSid is not read as one: the request is a 400, and nothing ends."""
    call_sid = await start_call(gateway, redis)
    body = json.dumps({"CallSid": [call_sid], "CallStatus": "completed"}).encode()
    url, signature = json_request("/ivr/status", body)
    response = await post(
        gateway.twilio.http, url, content=body, headers={**JSON_TYPE, SIGNATURE: signature}
    )
    assert response.status_code == 400
    assert await redis.exists(f"call:{call_sid}")


async def test_json_callback_on_sms_status(gateway: Gateway) -> None:
    """An SMS status callback as JSON is recorded like its form twin."""
    # The mobile on file asks: its code SMS is the reply (§4), and the row we report on.
    assert await Phone(gateway.twilio, MOBILE).text(f"RESTORE {MOBILE_ONLY}") == []
    sid = await code_sid(gateway)
    body = json.dumps(
        {"MessageSid": sid, "MessageStatus": "undelivered", "ErrorCode": "30007"}
    ).encode()
    url, signature = json_request("/sms/status", body)
    response = await post(
        gateway.twilio.http, url, content=body, headers={**JSON_TYPE, SIGNATURE: signature}
    )
    assert response.status_code == 204, response.text
    assert await code_status(gateway) == ("undelivered", "30007")


async def code_row(gateway: Gateway) -> OutboxMessage:
    engine = create_engine(gateway.settings.database_url)
    try:
        async with transaction(create_sessionmaker(engine)) as session:
            row = await session.scalar(select(OutboxMessage).where(OutboxMessage.purpose == "code"))
            assert row is not None and row.provider_sid
            return row
    finally:
        await engine.dispose()


async def code_sid(gateway: Gateway) -> str:
    return str((await code_row(gateway)).provider_sid)


async def code_status(gateway: Gateway) -> tuple[str, str | None]:
    row = await code_row(gateway)
    return row.status, row.error_code
