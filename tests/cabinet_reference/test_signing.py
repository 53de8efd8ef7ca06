"""The reference's signer against §11: the worked example, and what verify() accepts."""

from __future__ import annotations

import hashlib
import hmac
import re
from pathlib import Path

import pytest
import yaml

from cabinet_reference.signing import check_secret, request_target, sign, verify

SECRET = "0123456789abcdef0123456789abcdef"
TIMESTAMP = "1767225600"
GET_TARGET = "/recovery/v1/accounts/1000234528"
PUT_TARGET = "/recovery/v1/accounts/1000234528/temporary-password"
PUT_BODY = (
    b'{"password":"k7mz2p9rbt","expires_at":"2026-01-01T01:00:00Z","must_change":true,'
    b'"channel":"voice","reference":"r-5f1c2a9e"}'
)
GET_SIGNATURE = "v1=04ba4d2a07cc2fe7397979a8ef3a3320c8eb575155b4ebc42e6a78b46e6e4508"
PUT_SIGNATURE = "v1=57cf08d4f6d218740b2ccb93bdd06bc33ef667209d8d561b4a51c4f786794abb"
DOCS = Path(__file__).resolve().parents[2] / "docs"
NOW = float(TIMESTAMP)


def test_worked_example_get() -> None:
    assert sign(SECRET, TIMESTAMP, "GET", GET_TARGET, b"") == GET_SIGNATURE


def test_worked_example_put() -> None:
    assert sign(SECRET, TIMESTAMP, "PUT", PUT_TARGET, PUT_BODY) == PUT_SIGNATURE


def test_worked_example_verifies() -> None:
    assert verify(SECRET, TIMESTAMP, GET_SIGNATURE, "GET", GET_TARGET, b"", NOW)
    assert verify(SECRET, TIMESTAMP, PUT_SIGNATURE, "PUT", PUT_TARGET, PUT_BODY, NOW)


def test_method_is_signed_in_capitals() -> None:
    assert sign(SECRET, TIMESTAMP, "get", GET_TARGET, b"") == GET_SIGNATURE


def test_uppercase_hex_is_accepted_but_not_an_uppercase_prefix() -> None:
    upper = "v1=" + GET_SIGNATURE[3:].upper()
    assert verify(SECRET, TIMESTAMP, upper, "GET", GET_TARGET, b"", NOW)
    assert not verify(SECRET, TIMESTAMP, "V1=" + GET_SIGNATURE[3:], "GET", GET_TARGET, b"", NOW)
    assert not verify(SECRET, TIMESTAMP, GET_SIGNATURE[3:], "GET", GET_TARGET, b"", NOW)


@pytest.mark.parametrize(
    "bad",
    [
        GET_SIGNATURE[:-1],
        GET_SIGNATURE + "0",
        GET_SIGNATURE[:-1] + "g",
        GET_SIGNATURE[:-1] + "5",
        "v1=" + "ё" * 64,
        "",
    ],
)
def test_malformed_or_wrong_signatures_fail(bad: str) -> None:
    assert not verify(SECRET, TIMESTAMP, bad, "GET", GET_TARGET, b"", NOW)


@pytest.mark.parametrize("skew", [-300, 300])
def test_timestamp_within_300_seconds_passes(skew: int) -> None:
    assert verify(SECRET, TIMESTAMP, GET_SIGNATURE, "GET", GET_TARGET, b"", NOW + skew)


@pytest.mark.parametrize("skew", [-301, 301])
def test_timestamp_more_than_300_seconds_off_fails(skew: int) -> None:
    assert not verify(SECRET, TIMESTAMP, GET_SIGNATURE, "GET", GET_TARGET, b"", NOW + skew)


@pytest.mark.parametrize("timestamp", ["", "+1767225600", " 1767225600", "1767225600.0", "١٧"])
def test_timestamps_that_are_not_plain_decimal_fail(timestamp: str) -> None:
    message = timestamp.encode() + b"\nGET\n" + GET_TARGET.encode() + b"\n"
    signed = "v1=" + hmac.new(SECRET.encode(), message, hashlib.sha256).hexdigest()
    assert not verify(SECRET, timestamp, signed, "GET", GET_TARGET, b"", NOW)


def test_missing_headers_fail() -> None:
    assert not verify(SECRET, None, GET_SIGNATURE, "GET", GET_TARGET, b"", NOW)
    assert not verify(SECRET, TIMESTAMP, None, "GET", GET_TARGET, b"", NOW)


def test_request_target_keeps_percent_encoding_and_adds_the_query() -> None:
    assert request_target(b"/a%2Fb", b"x=1") == b"/a%2Fb?x=1"
    assert request_target(b"/a", b"") == b"/a"


def test_short_secret_is_refused_without_showing_it() -> None:
    with pytest.raises(ValueError, match="at least 32") as refused:
        check_secret("s3cr3t-too-short")
    assert "s3cr3t" not in str(refused.value)
    check_secret(SECRET)


def test_documents_carry_the_same_worked_example() -> None:
    """docs/cabinet-api.md and the OpenAPI document quote the values this file checks."""
    for name in ("cabinet-api.md", "cabinet-api.yaml"):
        text = (DOCS / name).read_text(encoding="utf-8")
        assert GET_SIGNATURE in text, name
        assert PUT_SIGNATURE in text, name
        assert PUT_BODY.decode() in text, name
    description = yaml.safe_load((DOCS / "cabinet-api.yaml").read_text())["info"]["description"]
    assert re.search(r"timestamp `1767225600`", description)
