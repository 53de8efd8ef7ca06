from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest
from argon2 import Type, extract_parameters
from pydantic import ValidationError

from core.accounts import passwords
from core.accounts.directory import SqlAccountDirectory
from core.accounts.passwords import (
    generate_temporary_password,
    hash_password,
    use_fast_hashing_for_tests,
    use_standard_hashing,
    verify_hash,
    verify_nothing,
)
from core.operators.repository import OperatorRepository
from core.platform.db import Base, create_engine, create_sessionmaker, transaction
from core.platform.settings import Settings
from tests.support.hashing import counting_hashes


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


# §5: OWASP's minimum by default, configurable upwards only; a bounded pool off the event loop


def test_default_parameters_are_owasps_minimum() -> None:
    params = passwords.parameters_from(settings())
    assert (params.type, params.memory_cost, params.time_cost, params.parallelism) == (
        Type.ID,
        19 * 1024,
        2,
        1,
    )
    assert params == passwords.STANDARD_PARAMETERS


@pytest.mark.parametrize(
    "weaker",
    [{"argon2_memory_kib": 16 * 1024}, {"argon2_time_cost": 1}, {"argon2_parallelism": 0}],
)
def test_settings_refuse_parameters_below_the_minimum(weaker: dict[str, int]) -> None:
    with pytest.raises(ValidationError):
        settings(**weaker)


def test_configured_parameters_are_used_outside_tests() -> None:
    passwords.configure_hashing(settings(argon2_memory_kib=32 * 1024, argon2_time_cost=3))
    try:
        use_standard_hashing()
        params = extract_parameters(hash_password("rjmqz7k2xa"))
        assert (params.memory_cost, params.time_cost, params.parallelism) == (32 * 1024, 3, 1)
    finally:
        passwords.configure_hashing(settings())
        use_fast_hashing_for_tests()
    # The test switch holds whatever the app configures at start-up.
    passwords.configure_hashing(settings(argon2_memory_kib=32 * 1024))
    try:
        assert extract_parameters(hash_password("x")).memory_cost < 19 * 1024
    finally:
        passwords.configure_hashing(settings())


async def test_a_burst_of_sign_ins_hashes_at_most_pool_size_at_once(
    monkeypatch: pytest.MonkeyPatch, new_database: Callable[[], str]
) -> None:
    """Twelve concurrent sign-ins and password checks: no more Argon2 runs at once than the
    pool allows (each holds its memory cost), and the event loop keeps turning meanwhile."""
    config = settings(argon2_pool_size=2)
    passwords.configure_hashing(config)
    engine = create_engine(new_database())
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)
    sessions = create_sessionmaker(engine)
    async with transaction(sessions) as session:
        await OperatorRepository(session).add("ivanova", "a long enough password")
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.005)

    async def sign_in(index: int) -> None:
        async with sessions() as session:
            if index % 2:
                await OperatorRepository(session).authenticate("ivanova", f"guess {index}")
            else:
                await SqlAccountDirectory(session, config).verify_password("1000000001", "x")

    try:
        with counting_hashes(monkeypatch, delay=0.05) as spy:
            running = asyncio.create_task(ticker())
            await asyncio.gather(*(sign_in(index) for index in range(12)))
            running.cancel()
        assert spy.verified == 12
        assert spy.most_at_once <= 2, spy.most_at_once
        assert ticks >= 10  # 12 checks of 50 ms, two at a time: the loop was never held
    finally:
        await engine.dispose()
