"""Webhook intake: size and encoding limits, then the X-Twilio-Signature check (§6.1)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import parse_qs, parse_qsl, urlsplit

import structlog
from fastapi import HTTPException, Request, status
from twilio.request_validator import RequestValidator

from core.platform.settings import Settings, UnsafeSettingsError

log = structlog.get_logger(__name__)

MAX_BODY_BYTES = 64 * 1024
MAX_FIELDS = 200
MAX_VALUE_CHARS = 4096
SIGNATURE_HEADER = "X-Twilio-Signature"
# Twilio signs a JSON-bodied request by the URL alone, with the body's SHA-256 in this parameter.
BODY_HASH_PARAM = "bodySHA256"
FORM_MEDIA_TYPE = "application/x-www-form-urlencoded"
JSON_MEDIA_TYPE = "application/json"


class _MultiValues:
    """The form as RequestValidator expects it: every value of every key, in order."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self._pairs = pairs

    def __iter__(self) -> Iterator[str]:
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


def _query(request: Request) -> str:
    """The raw query string; Twilio percent-encodes its URLs, so anything else is malformed."""
    raw: bytes = request.scope.get("query_string", b"")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "malformed query string") from None


def public_url(settings: Settings, request: Request) -> str:
    """The URL Twilio signed: the configured public base URL, never the Host header.

    Neither Host nor X-Forwarded-* take part: behind a TLS-terminating proxy the app sees
    http://internal-host:8080/…, while Twilio signed the public https:// address.
    """
    query = _query(request)  # checked first: request.url would raise on a non-UTF-8 query
    url = settings.public_base_url.rstrip("/") + request.url.path
    if query:
        url += "?" + query
    return url


async def read_body(request: Request) -> bytes:
    """The raw body, at most MAX_BODY_BYTES (413 beyond, also when streamed without a length)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, "request body too large")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, "request body too large")
    return body


def media_type(request: Request) -> str:
    """The Content-Type without parameters, lower-case."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _utf8(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "malformed body") from None


def parse_form(body: bytes, content_type: str) -> list[tuple[str, str]]:
    """A form-encoded body as pairs; anything else is a 4xx, never a 500."""
    if body and content_type != FORM_MEDIA_TYPE:
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, "form-encoded body expected")
    text = _utf8(body)
    try:
        return parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_FIELDS, errors="strict")
    except ValueError:  # too many fields, or percent-escapes that are not UTF-8
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "malformed form body") from None


def json_fields(text: str) -> dict[str, str]:
    """The top-level string fields of a JSON callback; other values are not needed."""
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):  # bad JSON, a huge integer, or deep nesting
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "malformed JSON body") from None
    if not isinstance(document, dict):
        return {}
    strings = [(key, value) for key, value in document.items() if isinstance(value, str)]
    return dict(strings[:MAX_FIELDS])


def _has_body_hash(request: Request) -> bool:
    return BODY_HASH_PARAM in parse_qs(_query(request))


def _check_base_url(base_url: str) -> None:
    """Refuse a public base URL that every signature check would trip over."""
    try:
        parts = urlsplit(base_url)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
        _ = parts.port  # raises on a malformed port
    except ValueError:
        valid = False
    if not valid:
        raise UnsafeSettingsError(
            "GATEWAY_PUBLIC_BASE_URL must be the http(s)://host[:port][/prefix] Twilio calls."
        )


class SignatureVerifier:
    """Checks X-Twilio-Signature with the account's auth token."""

    def __init__(self, settings: Settings) -> None:
        _check_base_url(settings.public_base_url)
        self._settings = settings
        self._validator = RequestValidator(settings.twilio_auth_token.get_secret_value())

    def __repr__(self) -> str:
        return "SignatureVerifier(<token>)"

    async def __call__(self, request: Request) -> TwilioForm:
        """Read the form and verify its signature before anything else happens."""
        # A query string that is not UTF-8 is refused first, with or without the signature
        # check: starlette's request.url raises on one, and the error handlers read it too.
        _query(request)
        body = await read_body(request)
        if media_type(request) == JSON_MEDIA_TYPE and _has_body_hash(request):
            # A JSON callback: the signature covers the URL, whose bodySHA256 covers the body.
            text = _utf8(body)
            self._verify(request, text)
            fields = json_fields(text)
        else:
            pairs = parse_form(body, media_type(request))
            self._verify(request, _MultiValues(pairs))
            fields = dict(pairs)
        # Truncate only after the check: the signature covers the values as sent.
        form = TwilioForm({key: value[:MAX_VALUE_CHARS] for key, value in fields.items()})
        # Kept for error handlers: an apology still knows which call it belongs to.
        request.state.twilio_form = form
        return form

    def _verify(self, request: Request, params: _MultiValues | str) -> None:
        """403 unless the request carries a valid signature (or the development flag is on)."""
        if not self._settings.signature_check_enabled:
            return
        url = public_url(self._settings, request)
        signature = request.headers.get(SIGNATURE_HEADER)
        if not signature or not self._valid(url, params, signature):
            log.warning("webhook.bad_signature", path=request.url.path, present=bool(signature))
            raise HTTPException(status.HTTP_403_FORBIDDEN, "invalid Twilio signature")

    def _valid(self, url: str, params: _MultiValues | str, signature: str) -> bool:
        try:
            return bool(self._validator.validate(url, params, signature))
        except (ValueError, UnicodeError):
            # Whatever the validator cannot digest is not a valid signature, and not a 500.
            return False
