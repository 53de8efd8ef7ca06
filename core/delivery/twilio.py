"""Twilio REST: the client (or a mock or relay at another base URL) and the messenger."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from core.delivery.messenger import (
    OUTBOX_KEY_PARAM,
    AmbiguousDeliveryError,
    DeliveryFailed,
    TransientDeliveryError,
    current_outbox_key,
)
from core.platform.clock import utcnow
from core.platform.settings import Settings


# twilio ships no type information, so mypy sees its classes as Any.
class GatewayHttpClient(TwilioHttpClient):  # type: ignore[misc]
    """Twilio's own HTTP client, noting each response's Retry-After, optionally at another host.

    twilio's exceptions carry the status and error code but not the headers; the messenger runs
    each request in a worker thread and reads the Retry-After right after, in that same thread.

    With `base_url` (GATEWAY_TWILIO_API_URL) the scheme and host of every request are replaced.
    twilio 9.x has no setting for the API host (only Twilio's edges and regions), but it accepts
    any `HttpClient`; replacing the host at this one point covers every domain and resource, so
    the requests the mock checks are exactly those that would go to api.twilio.com.
    """

    def __init__(self, base_url: str | None = None, *, timeout: float | None = None) -> None:
        super().__init__(timeout=timeout)
        self._local = threading.local()
        self._base: tuple[str, str, str] | None = None
        if base_url is not None:
            parts = urlsplit(base_url)
            # The URL itself stays out of the messages: it may carry credentials.
            if parts.scheme not in {"http", "https"} or not parts.netloc:
                raise ValueError("Twilio API base URL must look like http(s)://host[:port][/path]")
            if parts.query or parts.fragment:
                raise ValueError("Twilio API base URL must not have a query or fragment")
            self._base = (parts.scheme, parts.netloc, parts.path.rstrip("/"))

    def last_retry_after(self) -> float | None:
        """Seconds the last response in this thread asked us to wait (None: it did not say)."""
        value: float | None = getattr(self._local, "retry_after", None)
        return value

    def rewrite(self, url: str) -> str:
        """Where a request for `url` goes: the base URL's scheme and host, if one is set."""
        if self._base is None:
            return url
        scheme, netloc, path = self._base
        parts = urlsplit(url)
        return urlunsplit((scheme, netloc, path + parts.path, parts.query, ""))

    def request(
        self,
        method: str,
        url: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,
        allow_redirects: bool = False,
    ) -> Response:
        """Send the request (to the base URL, if set); note its Retry-After."""
        self._local.retry_after = None
        response = super().request(
            method,
            self.rewrite(url),
            params=params,
            data=data,
            headers=headers,
            auth=auth,
            timeout=timeout,
            allow_redirects=allow_redirects,
        )
        self._local.retry_after = parse_retry_after(response.headers.get("Retry-After"))
        return response


def parse_retry_after(value: str | None) -> float | None:
    """A Retry-After header (seconds, or an HTTP date) in seconds from now; None if unusable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - utcnow()).total_seconds())


def _never_connected(exc: requests.exceptions.ConnectionError) -> bool:
    """Whether the connection failed before any byte of the request went out.

    requests wraps urllib3's errors: a refused or unresolvable connection (NewConnectionError,
    NameResolutionError) or a connect timeout is certain; a reset or a closed connection after
    the request was written (ProtocolError) is not.
    """
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    reason = exc.args[0] if exc.args else None
    reason = getattr(reason, "reason", reason)  # MaxRetryError.reason
    from urllib3.exceptions import NewConnectionError

    return isinstance(reason, NewConnectionError)


def classify_failure(what: str, exc: Exception, http_client: object) -> DeliveryFailed:
    """Turn what the Twilio client raised into the dispatcher's three kinds of failure.

    Only fixed words and Twilio's numeric codes leave here: the exception's text can quote the
    request (the number, the text of the message), so it is dropped.
    """
    if isinstance(exc, TwilioRestException):
        status = int(exc.status or 0)
        if status == 429 or status >= 500:
            retry_after = None
            if isinstance(http_client, GatewayHttpClient):
                retry_after = http_client.last_retry_after()
            return TransientDeliveryError(
                f"{what} not accepted by Twilio (HTTP {status})",
                error_code=f"http_{status}",
                retry_after=retry_after,
            )
        code = str(exc.code) if isinstance(exc.code, int) else f"http_{status}"
        return DeliveryFailed(f"{what} refused by Twilio (HTTP {status})", error_code=code)
    if isinstance(exc, requests.exceptions.ConnectionError) and _never_connected(exc):
        return TransientDeliveryError(
            f"{what} not sent: Twilio unreachable ({type(exc).__name__})", error_code="connect"
        )
    if isinstance(exc, requests.exceptions.Timeout):
        return AmbiguousDeliveryError(
            f"{what} sent, no answer from Twilio ({type(exc).__name__})", error_code="timeout"
        )
    # A connection lost mid-request, an unreadable answer: Twilio may have the message.
    return AmbiguousDeliveryError(
        f"{what} outcome unknown ({type(exc).__name__})", error_code="unknown"
    )


def build_twilio_client(settings: Settings) -> Client:
    """The Twilio REST client for these settings (GATEWAY_TWILIO_API_URL, timeout, credentials)."""
    http_client = GatewayHttpClient(
        settings.twilio_api_url or None, timeout=settings.twilio_timeout_seconds
    )
    return Client(
        settings.twilio_account_sid,
        settings.twilio_auth_token.get_secret_value(),
        http_client=http_client,
    )


class TwilioMessenger:
    """Sends through the real Twilio REST client, with status callbacks.

    Every failure is classified for the dispatcher (dispatcher.py): permanent (4xx other than
    429: DeliveryFailed), certainly not taken (5xx, 429, no connection: TransientDeliveryError),
    or unknown (the request went out and no answer came: AmbiguousDeliveryError).
    """

    keeps_messages = False

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client = build_twilio_client(settings)
        base = settings.public_base_url.rstrip("/")
        self._sms_status_url = f"{base}/sms/status"
        self._call_status_url = f"{base}/ivr/status"

    def __repr__(self) -> str:
        return "TwilioMessenger(<client>)"

    @staticmethod
    def _callback(url: str) -> str:
        """The status callback URL, naming the outbox row when the dispatcher sends one."""
        key = current_outbox_key.get()
        return f"{url}?{OUTBOX_KEY_PARAM}={key}" if key else url

    async def send_sms(self, *, to: str, body: str, purpose: str) -> str:
        """Send an SMS from the short number."""
        message = await self._create(
            "SMS",
            self._client.messages.create,
            to=to,
            from_=self._settings.sms_number,
            body=body,
            status_callback=self._callback(self._sms_status_url),
        )
        return str(message.sid)

    async def place_call(self, *, to: str, url: str, purpose: str) -> str:
        """Place a call from the hotline number."""
        call = await self._create(
            "call",
            self._client.calls.create,
            to=to,
            from_=self._settings.hotline_number,
            url=url,
            status_callback=self._callback(self._call_status_url),
        )
        return str(call.sid)

    async def _create(self, what: str, create: Callable[..., Any], **params: object) -> Any:
        def in_thread() -> Any:
            try:
                return create(**params)
            except Exception as exc:
                # Read in the same worker thread: the Retry-After of this very response.
                raise classify_failure(what, exc, self._client.http_client) from None

        return await asyncio.to_thread(in_thread)
