"""§11 operations on the reference cabinet: look-ups, temporary passwords, idempotency keys."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cabinet_reference import create_app
from cabinet_reference.config import CabinetConfig
from cabinet_reference.passwords import PasswordPolicy
from cabinet_reference.signin import Residents, SignInResult, token_hash
from tests.cabinet_reference.conftest import (
    DISABLED,
    FAST_HASHER,
    INITIAL_PASSWORD,
    KNOWN,
    OTHER,
    PREFIX,
    SECRET,
    UNKNOWN,
    Cabinet,
    compact,
    password_body,
)


def residents(cabinet: Cabinet) -> Residents:
    """The cabinet's sign-in service (to see what a resident could do)."""
    resident_service: Residents = cabinet.app.state.residents
    return resident_service


def sessions_of(cabinet: Cabinet, account: str) -> int:
    with cabinet.store.reading() as connection:
        return cabinet.store.count_sessions(connection, account)


# -- GET


async def test_look_up_returns_the_account(cabinet: Cabinet) -> None:
    response = await cabinet.api.get(f"{PREFIX}/accounts/{KNOWN}")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {
        "account_number": KNOWN,
        "login": "petrov.as",
        "phones": ["+7 912 345-67-89", "+7 922 105-44-19"],
        "email": None,
        "status": "active",
    }


async def test_look_up_of_an_unknown_account_is_404(cabinet: Cabinet) -> None:
    response = await cabinet.api.get(f"{PREFIX}/accounts/{UNKNOWN}")
    assert response.status_code == 404
    assert response.json() == {"error": "not_found"}


async def test_look_up_shows_a_disabled_account_with_its_status(cabinet: Cabinet) -> None:
    response = await cabinet.api.get(f"{PREFIX}/accounts/{DISABLED}")
    assert response.status_code == 200
    assert response.json()["status"] == "disabled"


async def test_look_up_changes_nothing(cabinet: Cabinet) -> None:
    residents(cabinet).sign_in(KNOWN, INITIAL_PASSWORD)
    await cabinet.api.get(f"{PREFIX}/accounts/{KNOWN}")
    assert sessions_of(cabinet, KNOWN) == 1
    assert residents(cabinet).sign_in(KNOWN, INITIAL_PASSWORD).result is SignInResult.signed_in


# -- PUT


async def test_put_stores_the_temporary_password_hashed_with_expiry_and_must_change(
    cabinet: Cabinet,
) -> None:
    response = await cabinet.put_password(body=password_body(password="k7mz2p9rbt"))
    assert response.status_code == 204
    assert response.content == b""
    account = cabinet.store.find_account(KNOWN)
    assert account is not None
    assert account.must_change
    assert account.password_expires_at == datetime(2026, 1, 1, 1, 0, tzinfo=UTC)
    assert account.password_hash is not None
    assert account.password_hash.startswith("$argon2id$")
    assert "k7mz2p9rbt" not in account.password_hash
    assert "k7mz2p9rbt" not in repr(account)


async def test_put_revokes_the_previous_password_and_ends_sessions(cabinet: Cabinet) -> None:
    before = residents(cabinet).sign_in(KNOWN, INITIAL_PASSWORD)
    assert before.result is SignInResult.signed_in and before.token is not None
    residents(cabinet).sign_in(KNOWN, INITIAL_PASSWORD)
    assert sessions_of(cabinet, KNOWN) == 2
    residents(cabinet).sign_in(OTHER, INITIAL_PASSWORD)

    assert (await cabinet.put_password()).status_code == 204

    assert sessions_of(cabinet, KNOWN) == 0
    assert residents(cabinet).session(before.token) is None
    assert residents(cabinet).sign_in(KNOWN, INITIAL_PASSWORD).result is SignInResult.refused
    assert residents(cabinet).sign_in(KNOWN, "k7mz2p9rbt").result is SignInResult.must_change
    # Other accounts are untouched.
    assert sessions_of(cabinet, OTHER) == 1


async def test_put_for_an_unknown_account_is_404(cabinet: Cabinet) -> None:
    response = await cabinet.put_password(account=UNKNOWN)
    assert response.status_code == 404
    assert response.json() == {"error": "not_found"}


async def test_put_for_a_disabled_account_is_403_and_changes_nothing(cabinet: Cabinet) -> None:
    response = await cabinet.put_password(account=DISABLED)
    assert response.status_code == 403
    assert response.json() == {"error": "disabled"}
    account = cabinet.store.find_account(DISABLED)
    assert account is not None and not account.must_change


@pytest.mark.parametrize("password", ["k7mz2p9", "", " k7mz2p9rbt", "k7mz2p9r\n", "x" * 129])
async def test_put_of_a_password_the_policy_refuses_is_422(cabinet: Cabinet, password: str) -> None:
    response = await cabinet.put_password(body=password_body(password=password))
    assert response.status_code == 422
    assert response.json() == {"error": "password_policy"}
    account = cabinet.store.find_account(KNOWN)
    assert account is not None and not account.must_change


async def test_the_password_policy_is_configurable(tmp_path: Path) -> None:
    import httpx

    from tests.cabinet_reference.conftest import BASE_URL, Clock, SignedAuth

    clock = Clock()
    app = create_app(tmp_path / "c.db", SECRET, password_min_length=12, clock=clock)
    store = app.state.store
    with store.transaction() as connection:
        store.upsert_account(connection, KNOWN, "x", "X", [], None, "active", "-")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url=BASE_URL, auth=SignedAuth(clock)
    ) as client:
        target = f"{PREFIX}/accounts/{KNOWN}/temporary-password"
        for reference, password, status in (("a", "k7mz2p9rbt", 422), ("b", "k7mz2p9rbt23", 204)):
            body = compact(password_body(reference=reference, password=password))
            response = await client.put(
                target, content=body, headers={"Idempotency-Key": reference}
            )
            assert response.status_code == status


@pytest.mark.parametrize(
    ("change", "header"),
    [
        ({}, "another-key"),
        ({}, None),
        ({"must_change": False}, "r-5f1c2a9e"),
        ({"channel": "email"}, "r-5f1c2a9e"),
        ({"expires_at": "2026-01-01T01:00:00+00:00"}, "r-5f1c2a9e"),
        ({"expires_at": "2026-01-01T01:00:00.5Z"}, "r-5f1c2a9e"),
        ({"expires_at": "2026-02-30T01:00:00Z"}, "r-5f1c2a9e"),
        ({"password": 12345678}, "r-5f1c2a9e"),
        ({"reference": "r" * 65}, "r" * 65),
        ({"reference": ""}, ""),
    ],
)
async def test_put_that_does_not_follow_the_contract_is_400(
    cabinet: Cabinet, change: dict[str, object], header: str | None
) -> None:
    body = password_body() | change
    headers = {"Content-Type": "application/json"}
    if header is not None:
        headers["Idempotency-Key"] = header
    response = await cabinet.api.put(
        f"{PREFIX}/accounts/{KNOWN}/temporary-password", content=compact(body), headers=headers
    )
    assert response.status_code == 400
    assert response.json() == {"error": "bad_request"}
    account = cabinet.store.find_account(KNOWN)
    assert account is not None and not account.must_change


@pytest.mark.parametrize("expires_at", ["0701-08-04T03:31:26Z", "9999-12-31T23:59:59Z"])
async def test_any_rfc3339_year_is_stored(cabinet: Cabinet, expires_at: str) -> None:
    """Found by the contract test: a year before 1000 once made a 500."""
    response = await cabinet.put_password(body=password_body(expires_at=expires_at))
    assert response.status_code == 204
    account = cabinet.store.find_account(KNOWN)
    assert account is not None and account.password_expires_at is not None
    assert account.password_expires_at.strftime("%m-%dT%H:%M:%S") == expires_at[5:-1]
    assert account.password_expires_at.year == int(expires_at[:4])


@pytest.mark.parametrize("content", [b"", b"not json", b"[]", b'{"password": "k7mz2p9rbt"}'])
async def test_put_with_a_malformed_body_is_400(cabinet: Cabinet, content: bytes) -> None:
    response = await cabinet.api.put(
        f"{PREFIX}/accounts/{KNOWN}/temporary-password",
        content=content,
        headers={"Idempotency-Key": "r-5f1c2a9e"},
    )
    assert response.status_code == 400


async def test_put_with_a_missing_field_is_400(cabinet: Cabinet) -> None:
    body = password_body()
    del body["channel"]
    assert (await cabinet.put_password(body=body)).status_code == 400


async def test_put_ignores_unknown_fields_and_reads_escaped_non_ascii(cabinet: Cabinet) -> None:
    body = password_body(password="пароль-длинный") | {"future_field": {"x": 1}}
    assert b"\\u043f" in compact(body)
    assert (await cabinet.put_password(body=body)).status_code == 204
    assert residents(cabinet).sign_in(KNOWN, "пароль-длинный").result is SignInResult.must_change


async def test_a_body_over_the_limit_is_413(cabinet: Cabinet) -> None:
    body = password_body() | {"padding": "x" * 20000}
    response = await cabinet.put_password(body=body)
    assert response.status_code == 413


# -- idempotency


async def test_a_repeated_put_gets_the_same_status_and_changes_nothing_more(
    cabinet: Cabinet,
) -> None:
    assert (await cabinet.put_password()).status_code == 204
    # The resident signs in with the temporary password and sets their own.
    signed_in = residents(cabinet).sign_in(KNOWN, "k7mz2p9rbt")
    assert signed_in.token is not None
    residents(cabinet).change_password(signed_in.token, "own-password-1", "own-password-1")
    assert sessions_of(cabinet, KNOWN) == 1

    cabinet.clock.advance(timedelta(minutes=5))
    repeated = await cabinet.put_password()

    assert repeated.status_code == 204
    assert sessions_of(cabinet, KNOWN) == 1
    assert residents(cabinet).sign_in(KNOWN, "own-password-1").result is SignInResult.signed_in
    assert residents(cabinet).sign_in(KNOWN, "k7mz2p9rbt").result is SignInResult.refused


@pytest.mark.parametrize(
    ("account", "status", "error"),
    [(UNKNOWN, 404, "not_found"), (DISABLED, 403, "disabled")],
)
async def test_a_repeated_refusal_gets_the_same_answer(
    cabinet: Cabinet, account: str, status: int, error: str
) -> None:
    first = await cabinet.put_password(account=account)
    again = await cabinet.put_password(account=account)
    assert (first.status_code, first.json()) == (status, {"error": error})
    assert (again.status_code, again.json()) == (status, {"error": error})


async def test_the_same_key_with_another_body_is_422_idempotency_mismatch(
    cabinet: Cabinet,
) -> None:
    assert (await cabinet.put_password()).status_code == 204
    other = password_body(password="zz9yy8xx7w")
    response = await cabinet.put_password(body=other)
    assert response.status_code == 422
    assert response.json() == {"error": "idempotency_mismatch"}
    assert residents(cabinet).sign_in(KNOWN, "zz9yy8xx7w").result is SignInResult.refused


async def test_the_same_key_for_another_account_is_422_idempotency_mismatch(
    cabinet: Cabinet,
) -> None:
    assert (await cabinet.put_password(account=KNOWN)).status_code == 204
    response = await cabinet.put_password(account=OTHER)
    assert response.status_code == 422
    assert response.json() == {"error": "idempotency_mismatch"}


async def test_the_same_key_in_progress_is_409(cabinet: Cabinet) -> None:
    body = password_body()
    fingerprint = cabinet.app.state.directory.fingerprint(KNOWN, body)
    with cabinet.store.transaction() as connection:
        cabinet.store.claim_key(connection, "r-5f1c2a9e", fingerprint, cabinet.clock())
    response = await cabinet.put_password(body=body)
    assert response.status_code == 409
    account = cabinet.store.find_account(KNOWN)
    assert account is not None and not account.must_change


async def test_a_claim_that_never_completed_is_taken_over_by_a_retry(cabinet: Cabinet) -> None:
    body = password_body()
    fingerprint = cabinet.app.state.directory.fingerprint(KNOWN, body)
    with cabinet.store.transaction() as connection:
        cabinet.store.claim_key(connection, "r-5f1c2a9e", fingerprint, cabinet.clock())
    cabinet.clock.advance(timedelta(seconds=61))
    assert (await cabinet.put_password(body=body)).status_code == 204


async def test_a_failed_request_releases_its_key(
    cabinet: Cabinet, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = cabinet.store

    def locked(*_: object, **__: object) -> None:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(store, "set_temporary_password", locked)
    failed = await cabinet.put_password()
    assert failed.status_code == 503
    assert failed.json() == {"error": "unavailable"}
    monkeypatch.undo()
    assert (await cabinet.put_password()).status_code == 204


async def test_keys_are_kept_at_least_24_hours(cabinet: Cabinet) -> None:
    assert (await cabinet.put_password()).status_code == 204
    signed_in = residents(cabinet).sign_in(KNOWN, "k7mz2p9rbt")
    assert signed_in.token is not None
    residents(cabinet).change_password(signed_in.token, "own-password-1", "own-password-1")

    cabinet.clock.advance(timedelta(hours=24))
    assert (await cabinet.put_password()).status_code == 204
    assert residents(cabinet).sign_in(KNOWN, "own-password-1").result is SignInResult.signed_in


async def test_keys_older_than_the_retention_are_forgotten(cabinet: Cabinet) -> None:
    assert (await cabinet.put_password()).status_code == 204
    cabinet.clock.advance(timedelta(hours=48, seconds=1))
    await cabinet.put_password(body=password_body(reference="r-other"))
    with cabinet.store.reading() as connection:
        assert cabinet.store.get_key(connection, "r-5f1c2a9e") is None
        assert cabinet.store.get_key(connection, "r-other") is not None


def test_a_retention_under_24_hours_is_refused() -> None:
    with pytest.raises(ValueError, match="24 hours"):
        CabinetConfig(secret=SECRET, key_retention=timedelta(hours=23))


async def test_keys_hold_no_password_in_clear(cabinet: Cabinet) -> None:
    assert (await cabinet.put_password()).status_code == 204
    with cabinet.store.reading() as connection:
        rows = connection.execute("SELECT * FROM idempotency_keys").fetchall()
    dumped = json.dumps([dict(row) for row in rows])
    assert "k7mz2p9rbt" not in dumped


async def test_session_tokens_are_stored_hashed(cabinet: Cabinet) -> None:
    signed_in = residents(cabinet).sign_in(KNOWN, INITIAL_PASSWORD)
    assert signed_in.token is not None
    with cabinet.store.reading() as connection:
        stored = [row[0] for row in connection.execute("SELECT token_hash FROM sessions")]
    assert stored == [token_hash(signed_in.token)]
    assert signed_in.token not in stored


def test_policy_defaults() -> None:
    policy = PasswordPolicy()
    assert policy.allows("k7mz2p9r")
    assert not policy.allows("k7mz2p9")
    _ = FAST_HASHER
