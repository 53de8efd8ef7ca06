from __future__ import annotations

from collections.abc import Iterator

import pytest
from argon2 import Type, extract_parameters

from core import passwords
from core.config import Settings
from core.passwords import (
    generate_temporary_password,
    hash_password,
    use_fast_hashing_for_tests,
    use_standard_hashing,
    verify_hash,
    verify_nothing,
)


@pytest.fixture(autouse=True)
def fast_hashing() -> Iterator[None]:
    use_fast_hashing_for_tests()
    yield
    # The whole suite hashes cheaply (tests/conftest.py); leave it that way.
    use_fast_hashing_for_tests()


def settings(**overrides: object) -> Settings:
    return Settings(_env_file=None, **overrides)  # type: ignore[arg-type]


def test_temporary_password_has_the_configured_length_and_alphabet() -> None:
    config = settings(temp_password_length=17, temp_password_alphabet="ABCDEFGHJKLMNPQR2345")
    for _ in range(200):
        password = generate_temporary_password(config)
        assert len(password) == 17
        assert set(password) <= set("ABCDEFGHJKLMNPQR2345")


def test_default_temporary_password_avoids_look_alikes() -> None:
    seen = set("".join(generate_temporary_password(settings()) for _ in range(300)))
    assert not seen & set("ilo01IO")
    assert len(generate_temporary_password(settings())) == 10


def test_temporary_password_always_has_a_letter_and_a_digit() -> None:
    # One digit among 26 letters: without the guarantee most 8-character passwords lack a digit.
    config = settings(temp_password_length=8, temp_password_alphabet="abcdefghijklmnopqrstuvwxyz7")
    for _ in range(300):
        password = generate_temporary_password(config)
        assert "7" in password
        assert any(ch.isalpha() for ch in password)


def test_letters_only_alphabet_does_not_demand_a_digit() -> None:
    config = settings(temp_password_length=8, temp_password_alphabet="abcdefghijklmnopqrstuvwxyz")
    password = generate_temporary_password(config)
    assert password.isalpha()


def test_temporary_passwords_do_not_repeat() -> None:
    config = settings()
    assert len({generate_temporary_password(config) for _ in range(2000)}) == 2000


def test_hash_is_salted_argon2id_without_the_password() -> None:
    first, second = hash_password("rjmqz7k2xa"), hash_password("rjmqz7k2xa")
    assert first.startswith("$argon2id$")
    assert "rjmqz7k2xa" not in first
    assert first != second


def test_verify_hash_accepts_the_password_and_refuses_others() -> None:
    stored = hash_password("rjmqz7k2xa")
    assert verify_hash(stored, "rjmqz7k2xa") is True
    assert verify_hash(stored, "rjmqz7k2xb") is False
    assert verify_hash(stored, "") is False


@pytest.mark.parametrize("stored", ["", "plaintext", "$argon2id$v=19$m=8,t=1,p=1$zz", "$2b$12$x"])
def test_verify_hash_returns_false_for_unusable_hashes(stored: str) -> None:
    assert verify_hash(stored, "plaintext") is False


def test_verify_nothing_is_always_false() -> None:
    assert verify_nothing("anything") is False
    assert verify_nothing("") is False


def test_standard_profile_is_argon2id_with_real_costs() -> None:
    use_standard_hashing()
    params = extract_parameters(hash_password("rjmqz7k2xa"))
    assert params.type is Type.ID
    # OWASP's floor for Argon2id is 19 MiB with t=2.
    assert params.memory_cost >= 19 * 1024
    assert params.time_cost >= 2


def test_fast_profile_is_still_argon2id_and_verifies_under_the_standard_one() -> None:
    stored = hash_password("rjmqz7k2xa")
    assert extract_parameters(stored).memory_cost < passwords.STANDARD_PARAMETERS.memory_cost
    assert extract_parameters(stored).type is Type.ID
    use_standard_hashing()
    assert verify_hash(stored, "rjmqz7k2xa") is True
