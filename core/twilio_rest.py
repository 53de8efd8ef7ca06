"""The real Twilio REST client, optionally sent to another base URL (a mock or a relay)."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from core.config import Settings


# twilio ships no type information, so mypy sees its classes as Any.
class BaseUrlHttpClient(TwilioHttpClient):  # type: ignore[misc]
    """Twilio's own HTTP client, with the scheme and host of every request replaced.

    twilio 9.x has no setting for the API host (only Twilio's edges and regions), but it accepts any
    `HttpClient`; replacing the host at this one point covers every domain and resource, so the
    requests the mock checks are exactly those that would go to api.twilio.com.
    """

    def __init__(self, base_url: str, *, timeout: float | None = None) -> None:
        super().__init__(timeout=timeout)
        parts = urlsplit(base_url)
        # The URL itself stays out of the messages: it may carry credentials.
        if parts.scheme not in {"http", "https"} or not parts.netloc:
            raise ValueError("Twilio API base URL must look like http(s)://host[:port][/path]")
        if parts.query or parts.fragment:
            raise ValueError("Twilio API base URL must not have a query or fragment")
        self.base_scheme = parts.scheme
        self.base_netloc = parts.netloc
        self.base_path = parts.path.rstrip("/")

    def rewrite(self, url: str) -> str:
        """The URL `url` becomes when its scheme and host are replaced by the base URL's."""
        parts = urlsplit(url)
        return urlunsplit(
            (self.base_scheme, self.base_netloc, self.base_path + parts.path, parts.query, "")
        )

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
        """Send the request to the base URL instead of Twilio's host."""
        return super().request(
            method,
            self.rewrite(url),
            params=params,
            data=data,
            headers=headers,
            auth=auth,
            timeout=timeout,
            allow_redirects=allow_redirects,
        )


def build_twilio_client(settings: Settings) -> Client:
    """The Twilio REST client for these settings (GATEWAY_TWILIO_API_URL, timeout, credentials)."""
    timeout = settings.twilio_timeout_seconds
    http_client: TwilioHttpClient = (
        BaseUrlHttpClient(settings.twilio_api_url, timeout=timeout)
        if settings.twilio_api_url
        else TwilioHttpClient(timeout=timeout)
    )
    return Client(
        settings.twilio_account_sid,
        settings.twilio_auth_token.get_secret_value(),
        http_client=http_client,
    )
