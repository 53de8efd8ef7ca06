"""The keyring: sealed secrets and purpose-bound keyed hashes from the one server key."""

from __future__ import annotations

import re

import pytest

from core.platform.crypto import Keyring
from core.platform.settings import Settings

SECRET_KEY = "crypto-test-secret-key-4f0c9b2e7a1d"


def keyring(secret_key: str = SECRET_KEY) -> Keyring:
    return Keyring(Settings(_env_file=None, secret_key=secret_key))


@pytest.mark.parametrize("secret", ["ab3kd7mz9p", "407215", "ivanova.mv", "пароль-ё", ""])
def test_seal_round_trip(secret: str) -> None:
    ring = keyring()
    token = ring.seal(secret)
    assert ring.unseal(token) == secret
    if secret:
        assert secret not in token


def test_sealing_twice_gives_different_tokens() -> None:
    ring = keyring()
    first, second = ring.seal("407215"), ring.seal("407215")
    assert first != second
    assert ring.unseal(first) == ring.unseal(second) == "407215"


def test_tampered_token_is_refused() -> None:
    ring = keyring()
    token = ring.seal("ab3kd7mz9p")
    flipped = [
        token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1 :]
        for i in (10, len(token) // 2, len(token) - 5)  # timestamp, ciphertext, HMAC
    ]
    for bad in (*flipped, token[:-4], "", "garbage", "пароль", token[::-1]):
        assert ring.unseal(bad) is None, bad


def test_token_from_another_key_is_refused() -> None:
    token = keyring("another-secret-key-0123456789abcdef").seal("ab3kd7mz9p")
    assert keyring().unseal(token) is None


def test_repr_has_no_secret() -> None:
    ring = keyring()
    for text in (repr(ring), str(ring), f"{ring!r}"):
        assert SECRET_KEY not in text
        assert SECRET_KEY[:8] not in text


def test_keyed_hash_differs_per_purpose() -> None:
    ring = keyring()
    code = ring.keyed_hash("code", "attempt:407215")
    reference = ring.keyed_hash("reference", "attempt:407215")
    assert code != reference
    assert re.fullmatch(r"[0-9a-f]{64}", code)
    assert ring.keyed_hash("code", "attempt:407215") == code  # deterministic
    assert ring.keyed_hash("code", "attempt:407216") != code


def test_keyed_hash_depends_on_the_server_key() -> None:
    value = "attempt:407215"
    assert keyring().keyed_hash("code", value) != keyring("other-key-" + "z" * 24).keyed_hash(
        "code", value
    )
    assert keyring().keyed_hash("code", value) == keyring().keyed_hash("code", value)


def test_reference_is_a_short_stable_pseudonym() -> None:
    ring = keyring()
    reference = ring.reference("1000000001")
    assert re.fullmatch(r"[0-9a-f]{16}", reference)
    assert reference == ring.reference("1000000001")
    assert reference != ring.reference("1000000002")
    assert "1000000001" not in reference
