"""The §11 request signature: HMAC-SHA256 over timestamp, method, request target and body.

A small copy that a third party could have written from the contract alone; the gateway keeps its
own. The message is `timestamp \\n METHOD \\n target \\n body`, the target being the percent-encoded
path exactly as sent on the wire plus `?query` when there is one.
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_PREFIX = "v1="
MIN_SECRET_LENGTH = 32
MAX_CLOCK_SKEW_SECONDS = 300
_HEX_DIGITS = frozenset("0123456789abcdef")
# Far beyond any real Unix time in seconds; keeps a hostile header from becoming a huge integer.
_MAX_TIMESTAMP_DIGITS = 12


def check_secret(secret: str) -> None:
    """Raise ValueError if the secret is shorter than §11 allows (the secret is not shown)."""
    if len(secret) < MIN_SECRET_LENGTH:
        raise ValueError(f"the shared secret must be at least {MIN_SECRET_LENGTH} characters long")


def request_target(raw_path: bytes | str, query: bytes | str = b"") -> bytes:
    """The signed request target: the raw (still percent-encoded) path, plus `?query` if any."""
    path = raw_path.encode("ascii") if isinstance(raw_path, str) else raw_path
    query_bytes = query.encode("ascii") if isinstance(query, str) else query
    return path + b"?" + query_bytes if query_bytes else path


def signed_message(timestamp: str, method: str, target: bytes | str, body: bytes) -> bytes:
    """The exact bytes that are signed."""
    target_bytes = target.encode("ascii") if isinstance(target, str) else target
    return b"\n".join(
        (timestamp.encode("ascii"), method.upper().encode("ascii"), target_bytes, body)
    )


def sign(secret: str, timestamp: str | int, method: str, target: bytes | str, body: bytes) -> str:
    """The `X-EIRC-Signature` value: `v1=` and the lowercase hex HMAC-SHA256 of the message."""
    message = signed_message(str(timestamp), method, target, body)
    digest = hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()
    return SIGNATURE_PREFIX + digest


def signature_matches(
    secret: str, signature: str, timestamp: str, method: str, target: bytes | str, body: bytes
) -> bool:
    """Whether `signature` is right for the request; constant-time, hex case-insensitive."""
    if not signature.startswith(SIGNATURE_PREFIX):
        return False
    given = signature[len(SIGNATURE_PREFIX) :].lower()
    if len(given) != 64 or not set(given) <= _HEX_DIGITS:
        return False
    expected = sign(secret, timestamp, method, target, body)[len(SIGNATURE_PREFIX) :]
    return hmac.compare_digest(given.encode("ascii"), expected.encode("ascii"))


def parse_timestamp(value: str) -> int | None:
    """The header's Unix time in whole seconds, or None unless it is plain decimal digits."""
    if not value or len(value) > _MAX_TIMESTAMP_DIGITS or not value.isascii():
        return None
    if not value.isdigit():
        return None
    return int(value)


def verify(
    secret: str,
    timestamp: str | None,
    signature: str | None,
    method: str,
    target: bytes | str,
    body: bytes,
    now: float,
    max_skew_seconds: int = MAX_CLOCK_SKEW_SECONDS,
) -> bool:
    """Whether a request's §11 headers are present, fresh (within the skew) and correctly signed."""
    if timestamp is None or signature is None:
        return False
    seconds = parse_timestamp(timestamp)
    if seconds is None or abs(now - seconds) > max_skew_seconds:
        return False
    return signature_matches(secret, signature, timestamp, method, target, body)
