"""§11 signatures through the reference cabinet's HTTP API: what it accepts and refuses with 401."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from cabinet_reference import create_app
from tests.cabinet_reference.conftest import (
    EXAMPLE_TIMESTAMP,
    KNOWN,
    OTHER,
    PREFIX,
    SECRET,
    Cabinet,
    compact,
    password_body,
    signed_headers,
)

GET_TARGET = f"{PREFIX}/accounts/{KNOWN}"
PUT_TARGET = f"{GET_TARGET}/temporary-password"
EXAMPLE_BODY = (
    b'{"password":"k7mz2p9rbt","expires_at":"2026-01-01T01:00:00Z","must_change":true,'
    b'"channel":"voice","reference":"r-5f1c2a9e"}'
)
UNAUTHORIZED = {"error": "unauthorized"}


async def test_worked_example_get_is_accepted_as_documented(cabinet: Cabinet) -> None:
    headers = {
        "X-EIRC-Timestamp": "1767225600",
        "X-EIRC-Signature": "v1=04ba4d2a07cc2fe7397979a8ef3a3320c8eb575155b4ebc42e6a78b46e6e4508",
    }
    response = await cabinet.raw.get(GET_TARGET, headers=headers)
    assert response.status_code == 200
    assert response.json()["account_number"] == KNOWN


async def test_worked_example_put_is_accepted_as_documented(cabinet: Cabinet) -> None:
    headers = {
        "X-EIRC-Timestamp": "1767225600",
        "X-EIRC-Signature": "v1=57cf08d4f6d218740b2ccb93bdd06bc33ef667209d8d561b4a51c4f786794abb",
        "Idempotency-Key": "r-5f1c2a9e",
        "Content-Type": "application/json",
    }
    response = await cabinet.raw.put(PUT_TARGET, content=EXAMPLE_BODY, headers=headers)
    assert response.status_code == 204


async def test_uppercase_hex_is_accepted(cabinet: Cabinet) -> None:
    headers = signed_headers("GET", GET_TARGET, timestamp=EXAMPLE_TIMESTAMP)
    headers["X-EIRC-Signature"] = "v1=" + headers["X-EIRC-Signature"][3:].upper()
    response = await cabinet.raw.get(GET_TARGET, headers=headers)
    assert response.status_code == 200


@pytest.mark.parametrize("skew", [-300, 300])
async def test_clock_skew_up_to_300_seconds_is_accepted(cabinet: Cabinet, skew: int) -> None:
    headers = signed_headers("GET", GET_TARGET, timestamp=EXAMPLE_TIMESTAMP + skew)
    assert (await cabinet.raw.get(GET_TARGET, headers=headers)).status_code == 200


@pytest.mark.parametrize("skew", [-301, 301, -86400])
async def test_stale_or_future_timestamp_is_refused(cabinet: Cabinet, skew: int) -> None:
    headers = signed_headers("GET", GET_TARGET, timestamp=EXAMPLE_TIMESTAMP + skew)
    response = await cabinet.raw.get(GET_TARGET, headers=headers)
    assert response.status_code == 401
    assert response.json() == UNAUTHORIZED


async def test_the_cabinets_clock_decides_freshness(cabinet: Cabinet) -> None:
    headers = signed_headers("GET", GET_TARGET, timestamp=EXAMPLE_TIMESTAMP)
    cabinet.clock.advance(timedelta(seconds=301))
    assert (await cabinet.raw.get(GET_TARGET, headers=headers)).status_code == 401


async def test_wrong_secret_is_refused(cabinet: Cabinet) -> None:
    headers = signed_headers("GET", GET_TARGET, timestamp=EXAMPLE_TIMESTAMP, secret="x" * 32)
    assert (await cabinet.raw.get(GET_TARGET, headers=headers)).status_code == 401


async def test_altered_body_is_refused_and_nothing_changes(cabinet: Cabinet) -> None:
    signed = compact(password_body(password="k7mz2p9rbt"))
    altered = compact(password_body(password="attacker-pw"))
    headers = signed_headers("PUT", PUT_TARGET, signed, timestamp=EXAMPLE_TIMESTAMP)
    headers["Idempotency-Key"] = "r-5f1c2a9e"
    response = await cabinet.raw.put(PUT_TARGET, content=altered, headers=headers)
    assert response.status_code == 401
    account = cabinet.store.find_account(KNOWN)
    assert account is not None and not account.must_change


async def test_reformatted_body_is_refused(cabinet: Cabinet) -> None:
    """The signature covers the bytes as sent; the same JSON spaced differently is another body."""
    headers = signed_headers("PUT", PUT_TARGET, EXAMPLE_BODY, timestamp=EXAMPLE_TIMESTAMP)
    headers["Idempotency-Key"] = "r-5f1c2a9e"
    spaced = EXAMPLE_BODY.replace(b",", b", ")
    assert (await cabinet.raw.put(PUT_TARGET, content=spaced, headers=headers)).status_code == 401


async def test_altered_path_is_refused(cabinet: Cabinet) -> None:
    headers = signed_headers("GET", GET_TARGET, timestamp=EXAMPLE_TIMESTAMP)
    response = await cabinet.raw.get(f"{PREFIX}/accounts/{OTHER}", headers=headers)
    assert response.status_code == 401


async def test_path_is_checked_as_sent_on_the_wire_not_decoded(cabinet: Cabinet) -> None:
    """`%31` decodes to `1`: the same account, but not the bytes that were signed."""
    encoded = GET_TARGET[:-1] + "%3" + GET_TARGET[-1]
    headers = signed_headers("GET", GET_TARGET, timestamp=EXAMPLE_TIMESTAMP)
    assert (await cabinet.raw.get(encoded, headers=headers)).status_code == 401
    headers = signed_headers("GET", encoded, timestamp=EXAMPLE_TIMESTAMP)
    response = await cabinet.raw.get(encoded, headers=headers)
    assert response.status_code == 200
    assert response.json()["account_number"] == KNOWN


async def test_altered_query_is_refused(cabinet: Cabinet) -> None:
    headers = signed_headers("GET", GET_TARGET + "?view=a", timestamp=EXAMPLE_TIMESTAMP)
    assert (await cabinet.raw.get(GET_TARGET + "?view=b", headers=headers)).status_code == 401
    assert (await cabinet.raw.get(GET_TARGET + "?view=a", headers=headers)).status_code == 200


async def test_added_or_dropped_query_is_refused(cabinet: Cabinet) -> None:
    plain = signed_headers("GET", GET_TARGET, timestamp=EXAMPLE_TIMESTAMP)
    assert (await cabinet.raw.get(GET_TARGET + "?x=1", headers=plain)).status_code == 401
    with_query = signed_headers("GET", GET_TARGET + "?x=1", timestamp=EXAMPLE_TIMESTAMP)
    assert (await cabinet.raw.get(GET_TARGET, headers=with_query)).status_code == 401


async def test_altered_method_is_refused(cabinet: Cabinet) -> None:
    body = compact(password_body())
    headers = signed_headers("POST", PUT_TARGET, body, timestamp=EXAMPLE_TIMESTAMP)
    headers["Idempotency-Key"] = "r-5f1c2a9e"
    assert (await cabinet.raw.put(PUT_TARGET, content=body, headers=headers)).status_code == 401


async def test_altered_timestamp_is_refused(cabinet: Cabinet) -> None:
    headers = signed_headers("GET", GET_TARGET, timestamp=EXAMPLE_TIMESTAMP)
    headers["X-EIRC-Timestamp"] = str(EXAMPLE_TIMESTAMP + 1)
    assert (await cabinet.raw.get(GET_TARGET, headers=headers)).status_code == 401


@pytest.mark.parametrize("missing", ["X-EIRC-Timestamp", "X-EIRC-Signature"])
async def test_missing_header_is_refused(cabinet: Cabinet, missing: str) -> None:
    headers = signed_headers("GET", GET_TARGET, timestamp=EXAMPLE_TIMESTAMP)
    del headers[missing]
    response = await cabinet.raw.get(GET_TARGET, headers=headers)
    assert response.status_code == 401
    assert response.json() == UNAUTHORIZED


async def test_unsigned_put_is_refused_before_anything_else(cabinet: Cabinet) -> None:
    response = await cabinet.raw.put(PUT_TARGET, content=b"not json")
    assert response.status_code == 401


async def test_unsigned_look_up_of_unknown_account_is_401_not_404(cabinet: Cabinet) -> None:
    response = await cabinet.raw.get(f"{PREFIX}/accounts/1999999999")
    assert response.status_code == 401


async def test_duplicate_signature_headers_are_refused(cabinet: Cabinet) -> None:
    good = signed_headers("GET", GET_TARGET, timestamp=EXAMPLE_TIMESTAMP)
    headers = httpx.Headers([*good.items(), ("X-EIRC-Signature", "v1=" + "0" * 64)])
    assert (await cabinet.raw.get(GET_TARGET, headers=headers)).status_code == 401


@pytest.mark.parametrize("prefix", ["v1=", "v2=", "sha256="])
async def test_signature_needs_the_v1_prefix(cabinet: Cabinet, prefix: str) -> None:
    headers = signed_headers("GET", GET_TARGET, timestamp=EXAMPLE_TIMESTAMP)
    digest = headers["X-EIRC-Signature"][3:]
    headers["X-EIRC-Signature"] = prefix + digest
    expected = 200 if prefix == "v1=" else 401
    assert (await cabinet.raw.get(GET_TARGET, headers=headers)).status_code == expected


async def test_the_base_urls_path_is_configurable_and_signed(tmp_path: Path) -> None:
    app = create_app(tmp_path / "c.db", SECRET, prefix="/billing/cabinet/api/")
    store = app.state.store
    with store.transaction() as connection:
        store.upsert_account(connection, KNOWN, "x", "X", [], None, "active", "-")
    target = f"/billing/cabinet/api/accounts/{KNOWN}"
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://c.test"
    ) as client:
        now = int(time.time())
        ok = await client.get(target, headers=signed_headers("GET", target, timestamp=now))
        assert ok.status_code == 200
        short = f"/accounts/{KNOWN}"
        refused = await client.get(target, headers=signed_headers("GET", short, timestamp=now))
        assert refused.status_code == 401


def test_a_secret_shorter_than_32_characters_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 32"):
        create_app(tmp_path / "c.db", "x" * 31)
