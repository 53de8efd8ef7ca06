"""`eirc-gateway operators add|list|disable`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner, Result

from core.accounts.passwords import use_fast_hashing_for_tests
from core.models import OperatorRole
from core.operators.repository import OperatorInfo, OperatorRepository
from core.platform.db import create_engine, create_sessionmaker, transaction
from gateway.cli.operators import operators_app

# Mounted the way gateway/cli/main.py mounts it.
app = typer.Typer()
app.add_typer(operators_app, name="operators")
PASSWORD = "a long enough password"


@pytest.fixture(autouse=True)
def fast_hashing() -> None:
    use_fast_hashing_for_tests()


@pytest.fixture
def database_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, new_database: Callable[[], str]
) -> str:
    monkeypatch.chdir(tmp_path)  # no stray .env
    return new_database()


def run(database_url: str, *args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(
        app, ["operators", *args], env={"GATEWAY_DATABASE_URL": database_url}, input=stdin
    )


async def _authenticate(database_url: str, username: str, password: str) -> OperatorInfo | None:
    engine = create_engine(database_url)
    try:
        async with transaction(create_sessionmaker(engine)) as session:
            return await OperatorRepository(session).authenticate(username, password)
    finally:
        await engine.dispose()


def authenticate(database_url: str, username: str, password: str) -> OperatorInfo | None:
    return asyncio.run(_authenticate(database_url, username, password))


def test_add_with_the_password_on_stdin_then_sign_in(database_url: str) -> None:
    result = run(
        database_url,
        *("add", "Sidorova", "--name", "Сидорова Анна", "--role", "supervisor"),
        "--password-stdin",
        stdin=PASSWORD + "\n",
    )
    assert result.exit_code == 0, result.output
    assert "Added supervisor 'sidorova'" in result.output
    operator = authenticate(database_url, "SIDOROVA", PASSWORD)
    assert operator is not None
    assert operator.role is OperatorRole.supervisor and operator.display_name == "Сидорова Анна"
    assert authenticate(database_url, "sidorova", PASSWORD + "x") is None


def test_add_prompts_twice_without_echo(database_url: str) -> None:
    result = run(database_url, "add", "kuznetsov", stdin=f"{PASSWORD}\n{PASSWORD}\n")
    assert result.exit_code == 0, result.output
    assert PASSWORD not in result.output
    assert authenticate(database_url, "kuznetsov", PASSWORD) is not None
    mismatch = run(database_url, "add", "other", stdin=f"{PASSWORD}\nsomething else\n")
    assert mismatch.exit_code != 0
    assert authenticate(database_url, "other", PASSWORD) is None


def test_add_refuses_a_duplicate_a_short_password_and_a_bad_name(database_url: str) -> None:
    assert run(database_url, "add", "ivanova", "--password-stdin", stdin=PASSWORD).exit_code == 0
    duplicate = run(database_url, "add", "IVANOVA", "--password-stdin", stdin=PASSWORD)
    assert duplicate.exit_code == 1 and "already exists" in duplicate.output
    short = run(database_url, "add", "petrov", "--password-stdin", stdin="short")
    assert short.exit_code == 1 and "at least 10" in short.output
    bad = run(database_url, "add", "имя с пробелом", "--password-stdin", stdin=PASSWORD)
    assert bad.exit_code == 1 and "username" in bad.output


def test_list_and_disable(database_url: str) -> None:
    run(database_url, "add", "ivanova", "--name", "Иванова", "--password-stdin", stdin=PASSWORD)
    listed = run(database_url, "list")
    assert listed.exit_code == 0
    assert "ivanova" in listed.output and "operator" in listed.output
    assert "argon2" not in listed.output
    assert run(database_url, "disable", "ivanova").exit_code == 0
    assert authenticate(database_url, "ivanova", PASSWORD) is None
    assert "no" in run(database_url, "list").output
    missing = run(database_url, "disable", "nobody")
    assert missing.exit_code == 1


def test_stored_hash_is_argon2id(database_url: str) -> None:
    run(database_url, "add", "ivanova", "--password-stdin", stdin=PASSWORD)

    async def stored() -> str:
        from sqlalchemy import select

        from core.models import Operator

        engine = create_engine(database_url)
        try:
            async with create_sessionmaker(engine)() as session:
                return (await session.scalars(select(Operator.password_hash))).one()
        finally:
            await engine.dispose()

    assert asyncio.run(stored()).startswith("$argon2id$")


# -- the desk phone's PIN (§6.11) -------------------------------------------------------------

DESK_PIN = "48213579"


async def _desk(database_url: str, number: int, pin: str) -> OperatorInfo | None:
    engine = create_engine(database_url)
    try:
        async with transaction(create_sessionmaker(engine)) as session:
            return await OperatorRepository(session).authenticate_desk(str(number), pin)
    finally:
        await engine.dispose()


def desk_number(database_url: str, username: str) -> int:
    async def find() -> int:
        engine = create_engine(database_url)
        try:
            async with transaction(create_sessionmaker(engine)) as session:
                info = await OperatorRepository(session).get(username)
                assert info is not None
                return info.desk_number
        finally:
            await engine.dispose()

    return asyncio.run(find())


def test_set_pin_prompts_twice_without_echo_and_stores_argon2id(database_url: str) -> None:
    run(database_url, "add", "ivanova", "--password-stdin", stdin=PASSWORD)
    number = desk_number(database_url, "ivanova")
    assert asyncio.run(_desk(database_url, number, DESK_PIN)) is None  # no PIN yet
    result = run(database_url, "set-pin", "ivanova", stdin=f"{DESK_PIN}\n{DESK_PIN}\n")
    assert result.exit_code == 0, result.output
    assert DESK_PIN not in result.output
    assert f"key {number} and #" in result.output
    signed = asyncio.run(_desk(database_url, number, DESK_PIN))
    assert signed is not None and signed.username == "ivanova"
    assert asyncio.run(_desk(database_url, number, "48213578")) is None
    mismatch = run(database_url, "set-pin", "ivanova", stdin=f"{DESK_PIN}\n13572468\n")
    assert mismatch.exit_code != 0
    assert asyncio.run(_desk(database_url, number, DESK_PIN)) is not None
    listed = run(database_url, "list").output
    assert "set" in listed and DESK_PIN not in listed and "argon2" not in listed


@pytest.mark.parametrize("pin", ["12345", "1234567890123", "12ab5678", "00000000", "123456"])
def test_set_pin_refuses_short_long_non_digit_and_trivial_pins(database_url: str, pin: str) -> None:
    run(database_url, "add", "ivanova", "--password-stdin", stdin=PASSWORD)
    refused = run(database_url, "set-pin", "ivanova", "--pin-stdin", stdin=pin + "\n")
    assert refused.exit_code == 1 and "PIN not set" in refused.output
    assert pin not in refused.output.replace("PIN not set", "")


def test_set_pin_for_nobody_fails(database_url: str) -> None:
    missing = run(database_url, "set-pin", "nobody", "--pin-stdin", stdin=DESK_PIN + "\n")
    assert missing.exit_code == 1 and "No operator" in missing.output


def test_add_with_a_pin(database_url: str) -> None:
    result = run(
        database_url,
        *("add", "petrov", "--password-stdin", "--pin"),
        stdin=f"{PASSWORD}\n{DESK_PIN}\n",
    )
    assert result.exit_code == 0, result.output
    number = desk_number(database_url, "petrov")
    assert asyncio.run(_desk(database_url, number, DESK_PIN)) is not None
