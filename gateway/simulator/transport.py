"""The one Twilio-like signing client: webhooks signed as Twilio signs them (DESIGN §8).

Twilio signs the public URL it was configured with, not the address the request reaches; the
client signs the former and sends to the latter. The phone simulator, the tests' driver
(tests/support/twilio_driver.py) and the load benchmark sign through `sign`.
"""

from __future__ import annotations

import secrets
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlencode, urljoin

import httpx
from twilio.request_validator import RequestValidator

API_VERSION = "2010-04-01"
SIGNATURE_HEADER = "X-Twilio-Signature"
USER_AGENT = "TwilioProxy/1.1"
# Twilio gives up on a webhook after 15 s; so does the simulator.
TWILIO_TIMEOUT_SECONDS = 15.0
COUNTRY = "RU"


def sign(auth_token: str, url: str, params: Mapping[str, str]) -> str:
    """The X-Twilio-Signature Twilio would send for a request to `url` with form `params`."""
    return str(RequestValidator(auth_token).compute_signature(url, dict(params)))


@dataclass(frozen=True)
class WebhookRequest:
    """A webhook request Twilio is about to make: public URL, method, verb-specific params."""

    url: str
    method: str
    params: Mapping[str, str]


@dataclass
class WebhookClient:
    """Sends webhooks signed for the public URL to where the gateway listens.

    `gateway_url` replaces the public base in the address a request goes to; empty, the path
    alone is sent (for an httpx client with a base_url, such as one on an ASGI app).
    """

    http: httpx.AsyncClient
    public_base_url: str
    auth_token: str = field(repr=False)
    gateway_url: str = ""

    def public_url(self, path: str) -> str:
        """The URL Twilio would request for a path of the gateway."""
        return self.public_base_url.rstrip("/") + path

    def target(self, public_url: str) -> str:
        """Where a request for a public URL goes: the gateway when under the public base."""
        base = self.public_base_url.rstrip("/")
        if public_url == base or public_url.startswith((base + "/", base + "?")):
            return self.gateway_url.rstrip("/") + public_url[len(base) :]
        return public_url

    async def send(
        self, request: WebhookRequest, *, signature: str | None = None
    ) -> httpx.Response:
        """Send one signed request (a GET carries its params in the query, as Twilio's do)."""
        method = request.method.upper()
        if method == "GET":
            separator = "&" if "?" in request.url else "?"
            url = request.url + separator + urlencode(request.params)
            body: dict[str, str] | None = None
        else:
            url, body = request.url, dict(request.params)
        headers = {
            SIGNATURE_HEADER: signature or sign(self.auth_token, url, body or {}),
            "User-Agent": USER_AGENT,
        }
        return await self.http.request(method, self.target(url), data=body, headers=headers)

    async def post(
        self, path: str, params: dict[str, str], *, signature: str | None = None
    ) -> httpx.Response:
        """POST a form to a path of the gateway, signed for its public URL (or as given)."""
        request = WebhookRequest(self.public_url(path), "POST", params)
        return await self.send(request, signature=signature)


def new_sid(prefix: str) -> str:
    """A random Twilio-style SID (CA…, SM…, RE…)."""
    return prefix + secrets.token_hex(16)


def parse_twiml(content: bytes) -> ET.Element | str:
    """The `<Response>` element, or the stage direction that says why there is none."""
    if not content.strip():
        return "[gateway answered an empty document]"
    try:
        # The simulator only parses its own gateway's answers, and expat resolves no external
        # entities, so the standard parser is enough for a development tool.
        root = ET.fromstring(content)  # noqa: S314
    except ET.ParseError as exc:
        return f"[gateway answered invalid XML: {exc}]"
    if root.tag != "Response":
        return f"[gateway answered <{root.tag}>, not TwiML]"
    return root


def element_text(element: ET.Element) -> str:
    """The element's text with SSML markup flattened and whitespace collapsed."""
    return " ".join("".join(element.itertext()).split())


def verb_method(element: ET.Element) -> str:
    """The HTTP method a verb asks for (POST unless said)."""
    return (element.get("method") or "POST").upper()


def resolve(document_url: str, reference: str) -> str:
    """Resolve an action or redirect URL against the current document, like a browser."""
    return urljoin(document_url, reference) if reference else document_url


async def send_or_explain(client: WebhookClient, request: WebhookRequest) -> httpx.Response | str:
    """Send a signed webhook; a failure comes back as the stage direction that shows it."""
    try:
        response = await client.send(request)
    except httpx.TimeoutException:
        return f"[gateway did not answer within {TWILIO_TIMEOUT_SECONDS:g} s]"
    except httpx.HTTPError as exc:
        return f"[gateway unreachable: {type(exc).__name__}]"
    if not response.is_success:
        return f"[gateway answered HTTP {response.status_code}]"
    return response
