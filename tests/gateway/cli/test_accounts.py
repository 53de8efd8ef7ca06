from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
import typer
from sqlalchemy import func, select
from typer.testing import CliRunner, Result

from core.accounts.directory import SqlAccountDirectory
from core.accounts.passwords import use_fast_hashing_for_tests
from core.models import Account
from core.platform.db import create_engine, create_sessionmaker, transaction
from core.platform.settings import Settings
from gateway.cli.accounts import accounts_app
from tests.conftest import set_temporary_password

DEMO_CSV = Path(__file__).resolve().parents[3] / "gateway" / "demo_accounts.csv"
LANDLINE_ONLY = "1000234517"

# Mounted the way gateway/cli/main.py mounts it.
app = typer.Typer()
app.add_typer(accounts_app, name="accounts")


@pytest.fixture(autouse=True)
def fast_hashing() -> None:
    use_fast_hashing_for_tests()


@pytest.fixture
def database_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, new_database: Callable[[], str]
) -> str:
    # No stray .env from the working directory.
    monkeypatch.chdir(tmp_path)
    return new_database()


def run(database_url: str, *args: str, prompt_input: str | None = None) -> Result:
    return CliRunner().invoke(
        app, list(args), env={"GATEWAY_DATABASE_URL": database_url}, input=prompt_input
    )


def settings_for(database_url: str) -> Settings:
    return Settings(_env_file=None, database_url=database_url)


async def _accounts_in(database_url: str) -> int:
    engine = create_engine(database_url)
    try:
        async with create_sessionmaker(engine)() as session:
            return (await session.scalars(select(func.count()).select_from(Account))).one()
    finally:
        await engine.dispose()


async def _issue(database_url: str, account_number: str) -> str:
    settings = settings_for(database_url)
    engine = create_engine(database_url)
    try:
        async with transaction(create_sessionmaker(engine)) as session:
            directory = SqlAccountDirectory(session, settings)
            return await set_temporary_password(directory, settings, account_number)
    finally:
        await engine.dispose()


async def _change(database_url: str, account_number: str, current: str, new: str) -> None:
    settings = settings_for(database_url)
    engine = create_engine(database_url)
    try:
        async with transaction(create_sessionmaker(engine)) as session:
            directory = SqlAccountDirectory(session, settings)
            await directory.change_password(account_number, current, new)
    finally:
        await engine.dispose()


def test_import_prints_the_report_and_is_idempotent(database_url: str) -> None:
    first = run(database_url, "accounts", "import", str(DEMO_CSV))
    assert first.exit_code == 0, first.output
    assert first.stdout.strip() == "Imported 6 accounts: 6 created, 0 updated, 0 unchanged."

    again = run(database_url, "accounts", "import", str(DEMO_CSV))
    assert again.exit_code == 0, again.output
    assert again.stdout.strip() == "Imported 6 accounts: 0 created, 0 updated, 6 unchanged."
    assert asyncio.run(_accounts_in(database_url)) == 6


def test_import_of_a_bad_file_lists_the_lines_exits_1_and_writes_nothing(
    database_url: str, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "account_number,login,full_name,phones,email\n"
        "1000234517,ivanova.mv,Иванова,+74951234567,\n"
        "1000234528,,Петров,+79123456789,\n"
        "1000234539,smirnova.ea,Смирнова,+79037771230,not-an-email\n",
        encoding="utf-8",
    )
    result = run(database_url, "accounts", "import", str(bad))
    assert result.exit_code == 1
    assert "line 3: login is empty" in result.stderr
    assert "line 4: email does not look like an e-mail address" in result.stderr
    assert "line 2" not in result.stderr
    assert "Imported" not in result.stdout
    assert asyncio.run(_accounts_in(database_url)) == 0


def test_import_of_a_missing_file_is_a_usage_error(database_url: str, tmp_path: Path) -> None:
    result = run(database_url, "accounts", "import", str(tmp_path / "nowhere.csv"))
    assert result.exit_code == 2


def test_check_password_refuses_an_unknown_account(database_url: str) -> None:
    run(database_url, "accounts", "import", str(DEMO_CSV))
    result = run(database_url, "accounts", "check-password", "1999999999", "abcdefgh")
    assert result.exit_code == 1
    assert result.stdout.strip() == "refused"


def test_check_password_follows_the_temporary_password_through_its_change(
    database_url: str,
) -> None:
    run(database_url, "accounts", "import", str(DEMO_CSV))
    temporary = asyncio.run(_issue(database_url, LANDLINE_ONLY))

    wrong = run(database_url, "accounts", "check-password", LANDLINE_ONLY, temporary + "x")
    assert (wrong.exit_code, wrong.stdout.strip()) == (1, "refused")

    issued = run(database_url, "accounts", "check-password", LANDLINE_ONLY, temporary)
    assert issued.exit_code == 0, issued.output
    assert issued.stdout.strip() == "accepted; a password change is required at the next login"

    asyncio.run(_change(database_url, LANDLINE_ONLY, temporary, "a long-term password"))
    changed = run(database_url, "accounts", "check-password", LANDLINE_ONLY, "a long-term password")
    assert (changed.exit_code, changed.stdout.strip()) == (0, "accepted")
    used = run(database_url, "accounts", "check-password", LANDLINE_ONLY, temporary)
    assert (used.exit_code, used.stdout.strip()) == (1, "refused")


def test_check_password_asks_without_echo_when_the_password_is_left_out(
    database_url: str,
) -> None:
    run(database_url, "accounts", "import", str(DEMO_CSV))
    temporary = asyncio.run(_issue(database_url, LANDLINE_ONLY))
    result = run(
        database_url, "accounts", "check-password", LANDLINE_ONLY, prompt_input=temporary + "\n"
    )
    assert result.exit_code == 0, result.output
    assert temporary not in result.output
    assert "a password change is required" in result.stdout
