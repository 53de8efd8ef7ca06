"""Twilio failures sorted into permanent, transient (retry) and ambiguous (never resend)."""

from __future__ import annotations

from datetime import timedelta
from email.utils import format_datetime

import pytest
import requests
from twilio.base.exceptions import TwilioRestException
from urllib3.exceptions import MaxRetryError, NewConnectionError, ProtocolError

from core.delivery.messenger import AmbiguousDeliveryError, DeliveryFailed, TransientDeliveryError
from core.delivery.twilio import GatewayHttpClient, classify_failure, parse_retry_after
from core.platform.clock import utcnow

NUMBER = "+79123456789"


def rest_error(status: int, code: int | None = None) -> TwilioRestException:
    return TwilioRestException(
        status, f"https://api.twilio.com/Messages.json?To={NUMBER}", "boom", code
    )


def refused() -> requests.exceptions.ConnectionError:
    reason = NewConnectionError(None, "Failed to establish a new connection: refused")  # type: ignore[arg-type]
    return requests.exceptions.ConnectionError(MaxRetryError(None, "/Messages.json", reason))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("exc", "kind", "error_code"),
    [
        (rest_error(500), TransientDeliveryError, "http_500"),
        (rest_error(503, 20503), TransientDeliveryError, "http_503"),
        (rest_error(429, 20429), TransientDeliveryError, "http_429"),
        (rest_error(400, 21211), DeliveryFailed, "21211"),
        (rest_error(400, 21610), DeliveryFailed, "21610"),
        (rest_error(404), DeliveryFailed, "http_404"),
        (refused(), TransientDeliveryError, "connect"),
        (
            requests.exceptions.ConnectTimeout("connect timed out"),
            TransientDeliveryError,
            "connect",
        ),
        (requests.exceptions.ReadTimeout("read timed out"), AmbiguousDeliveryError, "timeout"),
        (
            requests.exceptions.ConnectionError(ProtocolError("Connection aborted.")),
            AmbiguousDeliveryError,
            "unknown",
        ),
        (ValueError("unreadable answer"), AmbiguousDeliveryError, "unknown"),
    ],
)
def test_failures_are_sorted(exc: Exception, kind: type[DeliveryFailed], error_code: str) -> None:
    failure = classify_failure("SMS", exc, object())
    assert type(failure) is kind
    assert failure.error_code == error_code
    # The exception's text could quote the request: none of it is kept.
    assert NUMBER not in str(failure) and "To=" not in str(failure)


def test_retry_after_is_read_from_this_threads_last_response() -> None:
    client = GatewayHttpClient(timeout=1)
    client._local.retry_after = 12.0
    failure = classify_failure("SMS", rest_error(429), client)
    assert isinstance(failure, TransientDeliveryError) and failure.retry_after == 12.0


@pytest.mark.parametrize(
    ("header", "expected"),
    [("7", 7.0), ("0", 0.0), (None, None), ("", None), ("soon", None), ("-3", None)],
)
def test_retry_after_in_seconds(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header) == expected


def test_retry_after_as_an_http_date() -> None:
    when = format_datetime(utcnow() + timedelta(seconds=120), usegmt=True)
    seconds = parse_retry_after(when)
    assert seconds is not None and 100 <= seconds <= 120
    assert parse_retry_after(format_datetime(utcnow() - timedelta(hours=1), usegmt=True)) == 0.0
