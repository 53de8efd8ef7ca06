"""Webhook intake: size and encoding limits, then the X-Twilio-Signature check (§6.1)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl

import structlog
from fastapi import HTTPException, Request, status
from twilio.request_validator import RequestValidator

from core.config import Settings

log = structlog.get_logger(__name__)

MAX_BODY_BYTES = 64 * 1024
MAX_FIELDS = 200
MAX_VALUE_CHARS = 4096
SIGNATURE_HEADER = "X-Twilio-Signature"


class _MultiValues:
    """The form as RequestValidator expects it: every value of every key, in order."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self._pairs = pairs

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(key for key, _ in self._pairs)

    def getlist(self, name: str) -> list[str]:
        return [value for key, value in self._pairs if key == name]


@dataclass(frozen=True, slots=True)
class TwilioForm:
    """A verified webhook form: the last value of every field."""

    fields: dict[str, str]

    def get(self, name: str, default: str = "") -> str:
        """A field, or the default when absent."""
        return self.fields.get(name, default)

    def __repr__(self) -> str:
        # Digits and SpeechResult may carry a code: only field names go into reprs.
        return f"TwilioForm({sorted(self.fields)})"


def public_url(settings: Settings, request: Request) -> str:
    """The URL Twilio signed: the configured public base URL, never the Host header."""
    url = settings.public_base_url.rstrip("/") + request.url.path
    if request.url.query:
        url += "?" + request.url.query
    return url


async def read_form(request: Request) -> list[tuple[str, str]]:
    """Read a form-encoded body within limits; a malformed one is a 4xx, never a 500."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, "request body too large")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, "request body too large")
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if body and content_type != "application/x-www-form-urlencoded":
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, "form-encoded body expected")
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_FIELDS, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "malformed form body") from None
    return pairs


class SignatureVerifier:
    """Checks X-Twilio-Signature with the account's auth token."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._validator = RequestValidator(settings.twilio_auth_token.get_secret_value())

    def __repr__(self) -> str:
        return "SignatureVerifier(<token>)"

    async def __call__(self, request: Request) -> TwilioForm:
        """Read the form and verify its signature before anything else happens."""
        pairs = await read_form(request)
        if self._settings.signature_check_enabled:
            signature = request.headers.get(SIGNATURE_HEADER)
            url = public_url(self._settings, request)
            if not signature or not self._validator.validate(url, _MultiValues(pairs), signature):
                log.warning("webhook.bad_signature", path=request.url.path, present=bool(signature))
                raise HTTPException(status.HTTP_403_FORBIDDEN, "invalid Twilio signature")
        # Truncate only after the check: the signature covers the values as sent.
        form = TwilioForm({key: value[:MAX_VALUE_CHARS] for key, value in pairs})
        # Kept for error handlers: an apology still knows which call it belongs to.
        request.state.twilio_form = form
        return form
