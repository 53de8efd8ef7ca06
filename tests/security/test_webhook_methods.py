"""Webhook paths answer only POST (§6.16): any other method gets 405 with `Allow: POST`, no
TwiML (nothing of the operator's number) and no ERROR in the log."""

from __future__ import annotations

import pytest
from fastapi.routing import APIRoute
from structlog.testing import capture_logs

from ivr import calls, transfers
from sms.router import router as sms_router
from tests.conftest import Gateway
from tests.support.twilio_driver import sign

# Every webhook path the app serves (the test below checks that the list is complete).
WEBHOOK_PATHS = [
    "/ivr/voice",
    "/ivr/step",
    "/ivr/verify",
    "/ivr/whisper",
    "/ivr/dial-result",
    "/ivr/queue-wait",
    "/ivr/queue-result",
    "/ivr/queue-connect",
    "/ivr/operator-desk",
    "/ivr/operator-desk/number",
    "/ivr/operator-desk/pin",
    "/ivr/status",
    "/sms/inbound",
    "/sms/status",
]
METHODS = ["GET", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]


def test_the_list_covers_every_webhook_route() -> None:
    routes = [
        r
        for r in [*calls.router.routes, *transfers.router.routes, *sms_router.routes]
        if isinstance(r, APIRoute)
    ]
    assert {route.path for route in routes} == set(WEBHOOK_PATHS)
    assert all(route.methods == {"POST"} for route in routes)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("path", WEBHOOK_PATHS)
async def test_other_methods_are_405_without_twiml(
    gateway: Gateway, path: str, method: str
) -> None:
    http = gateway.twilio.http
    url = f"{gateway.twilio.public_base_url}{path}?s=0&a=x"
    # Signed as Twilio would sign it: even a genuine signature does not make GET a webhook.
    headers = {"X-Twilio-Signature": sign(gateway.twilio.auth_token, url, {})}
    with capture_logs() as logs:
        response = await http.request(method, path + "?s=0&a=x", headers=headers)
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert "xml" not in response.headers.get("content-type", "")
    assert "<Response" not in response.text
    assert gateway.settings.operator_number not in response.text
    assert [entry for entry in logs if entry["log_level"] in ("error", "critical")] == []


async def test_post_still_reaches_the_webhook(gateway: Gateway) -> None:
    twiml = await gateway.call().start()
    assert twiml.tag == "Response"
