from __future__ import annotations

import io
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from core.accounts import AccountRecord, SqlAccountDirectory
from core.accounts_import import ImportFailed, ImportReport, import_accounts_csv
from core.config import Settings
from core.db import Base, create_engine, create_sessionmaker, transaction
from core.models import Account, AccountPhone, LineType

HEADER = "account_number,login,full_name,phones,email\n"
GOOD = (
    HEADER
    + "1000234517,ivanova.mv,Иванова Мария Викторовна,+7 495 123-45-67,\n"
    + "1000234528,petrov.as,Петров Алексей Сергеевич,+7 912 345-67-89; 8 922 105-44-19,\n"
    + "1000234539,smirnova.ea,Смирнова Елена Андреевна,+79037771230,e.smirnova@example.ru\n"
)
DEMO_CSV = Path(__file__).resolve().parents[2] / "gateway" / "demo_accounts.csv"


@pytest.fixture
def settings() -> Settings:
    return Settings(_env_file=None)


@pytest.fixture
async def engine(new_database: Callable[[], str]) -> AsyncIterator[AsyncEngine]:
    """An empty database of the suite's kind with the models' tables."""
    engine = create_engine(new_database())
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)
    yield engine
    await engine.dispose()


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return create_sessionmaker(engine)


async def run_import(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, text: str
) -> ImportReport:
    async with transaction(sessions) as session:
        return await import_accounts_csv(session, io.StringIO(text), settings)


async def failures(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, text: str
) -> list[tuple[int, str]]:
    with pytest.raises(ImportFailed) as raised:
        await run_import(sessions, settings, text)
    return list(raised.value.errors)


async def lookup(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, number: str
) -> AccountRecord:
    async with sessions() as session:
        record = await SqlAccountDirectory(session, settings).lookup(number)
    assert record is not None
    return record


async def count(sessions: async_sessionmaker[AsyncSession], table: type[Base]) -> int:
    async with sessions() as session:
        return (await session.scalars(select(func.count()).select_from(table))).one()


async def test_import_creates_accounts_with_normalised_phones_in_file_order(
    sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    report = await run_import(sessions, settings, GOOD)
    assert report == ImportReport(created=3, updated=0, unchanged=0)

    landline_only = await lookup(sessions, settings, "1000234517")
    assert [(p.e164, p.line_type) for p in landline_only.phones] == [
        ("+74951234567", LineType.fixed)
    ]
    assert landline_only.first_mobile is None
    assert landline_only.email is None
    two_mobiles = await lookup(sessions, settings, "1000234528")
    assert two_mobiles.full_name == "Петров Алексей Сергеевич"
    assert [p.e164 for p in two_mobiles.mobiles] == ["+79123456789", "+79221054419"]
    with_email = await lookup(sessions, settings, "1000234539")
    assert with_email.email == "e.smirnova@example.ru"


async def test_reimport_is_idempotent(
    sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    await run_import(sessions, settings, GOOD)
    again = await run_import(sessions, settings, GOOD)
    assert again == ImportReport(created=0, updated=0, unchanged=3)
    assert await count(sessions, Account) == 3
    assert await count(sessions, AccountPhone) == 4


async def test_reimport_updates_changed_accounts_and_reorders_phones(
    sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    await run_import(sessions, settings, GOOD)
    changed = (
        HEADER
        + "1000234517,ivanova.mv,Иванова Мария Викторовна,+7 495 123-45-67,\n"
        # Same two mobiles, swapped, plus a landline; new login.
        + "1000234528,petrov.alexey,Петров Алексей Сергеевич,"
        + "+79221054419;+79123456789;+74959876543,\n"
        # Phone replaced, e-mail removed.
        + "1000234539,smirnova.ea,Смирнова Елена Андреевна,+79254103381,\n"
        + "1000234540,kuznetsov.dn,Кузнецов Дмитрий Николаевич,+79161234567,\n"
    )
    report = await run_import(sessions, settings, changed)
    assert report == ImportReport(created=1, updated=2, unchanged=1)

    petrov = await lookup(sessions, settings, "1000234528")
    assert petrov.login == "petrov.alexey"
    assert [p.e164 for p in petrov.phones] == ["+79221054419", "+79123456789", "+74959876543"]
    smirnova = await lookup(sessions, settings, "1000234539")
    assert [p.e164 for p in smirnova.phones] == ["+79254103381"]
    assert smirnova.email is None
    assert await count(sessions, AccountPhone) == 6
    assert await run_import(sessions, settings, changed) == ImportReport(unchanged=4)


async def test_duplicate_phones_in_a_row_are_kept_once(
    sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    text = HEADER + "1000234528,petrov.as,,+79123456789;8 912 345 67 89;+79221054419,\n"
    await run_import(sessions, settings, text)
    record = await lookup(sessions, settings, "1000234528")
    assert [p.e164 for p in record.phones] == ["+79123456789", "+79221054419"]


async def test_a_bad_row_reports_its_line_and_nothing_is_written(
    sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    text = (
        HEADER
        + "1000234517,ivanova.mv,Иванова,+74951234567,\n"
        + "\n"  # a blank line still counts in an editor
        + "12AB,petrov.as,Петров,+79123456789,\n"
        + "1000234539,smirnova.ea,Смирнова,+79037771230,\n"
    )
    errors = await failures(sessions, settings, text)
    assert [line for line, _ in errors] == [4]
    assert "account number" in errors[0][1]
    assert await count(sessions, Account) == 0
    assert await count(sessions, AccountPhone) == 0


async def test_a_failed_import_leaves_nothing_pending_in_the_callers_session(
    sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    text = GOOD + "1000234540,,Кузнецов,+79161234567,\n"
    async with sessions() as session:
        with pytest.raises(ImportFailed):
            await import_accounts_csv(session, io.StringIO(text), settings)
        # The count autoflushes: anything the import added would show up here.
        assert (await session.scalars(select(func.count()).select_from(Account))).one() == 0


async def test_every_bad_row_is_reported_in_plain_english(
    sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    text = (
        HEADER
        + "1000234517,,Иванова,+74951234567,\n"
        + "1000234528,petrov.as,Петров,+7 912 345-67-8;+79221054419,\n"
        + "1000234539,smirnova.ea,Смирнова,+79037771230,not-an-email\n"
        + "1000234517,ivanova2,Иванова,+74951234567,\n"
        + "1000234540,kuznetsov.dn,Кузнецов,+79161234567\n"
        + '"1000234551","sokolova","Соколова\nОльга",+79161234568,\n'
        + "123,volkov.ip,Волков,+74992501122,\n"
    )
    errors = await failures(sessions, settings, text)
    assert errors == [
        (2, "login is empty"),
        (3, "phone 1 of 2 (ending in 78) is not a valid number"),
        (4, "email does not look like an e-mail address"),
        (5, "account number repeats line 2"),
        (6, "expected 5 fields, found 4"),
        # Line 7 holds a valid row whose quoted name runs over two lines.
        (9, r"account number does not match the configured format ^\d{6,12}$"),
    ]
    assert await count(sessions, Account) == 0


async def test_reasons_never_echo_a_full_phone_number(
    sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    text = HEADER + "1000234528,petrov.as,Петров,+7 912 345-67-8;+7 (000) 123-45-67,\n"
    errors = await failures(sessions, settings, text)
    assert len(errors) == 2
    for _, reason in errors:
        digits = "".join(ch for ch in reason if ch.isdigit())
        assert "912345678" not in digits
        assert "0001234567" not in digits


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "the file is empty"),
        ("account_number,login,phones,email\n", "missing column(s) full_name"),
        (HEADER.strip() + ",notes\n", "unknown column(s) 'notes'"),
    ],
)
async def test_a_bad_header_is_reported_on_line_1(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, text: str, reason: str
) -> None:
    errors = await failures(sessions, settings, text)
    assert len(errors) == 1
    assert errors[0][0] == 1
    assert reason in errors[0][1]


async def test_columns_may_come_in_any_order(
    sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    text = (
        "Login,Email,Phones,Full_Name,Account_Number\npetrov.as,,+79123456789,Петров,1000234528\n"
    )
    assert await run_import(sessions, settings, text) == ImportReport(created=1)
    assert (await lookup(sessions, settings, "1000234528")).login == "petrov.as"


async def test_import_reads_a_utf8_file_with_a_bom(
    tmp_path: Path, sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    path = tmp_path / "accounts.csv"
    path.write_bytes(GOOD.replace("\n", "\r\n").encode("utf-8-sig"))
    async with transaction(sessions) as session:
        report = await import_accounts_csv(session, path, settings)
    assert report == ImportReport(created=3)
    assert (await lookup(sessions, settings, "1000234517")).full_name == "Иванова Мария Викторовна"


async def test_a_text_stream_with_a_bom_is_read_too(
    sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    assert await run_import(sessions, settings, "\ufeff" + GOOD) == ImportReport(created=3)


async def test_a_non_utf8_file_is_refused_with_the_line(
    tmp_path: Path, sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    path = tmp_path / "accounts.csv"
    path.write_bytes(GOOD.encode("cp1251"))
    with pytest.raises(ImportFailed) as raised:
        async with transaction(sessions) as session:
            await import_accounts_csv(session, str(path), settings)
    assert raised.value.errors == ((2, "the file is not UTF-8 text"),)


async def test_the_account_number_pattern_comes_from_the_settings(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    letters = Settings(_env_file=None, account_number_pattern=r"^[A-Z]{2}\d{6}$")
    text = HEADER + "AB123456,petrov.as,,+79123456789,\n" + "1000234528,ivanova,,+79123456780,\n"
    errors = await failures(sessions, letters, text)
    assert [line for line, _ in errors] == [3]


async def test_progress_is_told_every_row(
    sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    steps: list[int] = []
    rows = "".join(f"{1000000000 + i},login{i},,+79123456789,\n" for i in range(1203))
    async with transaction(sessions) as session:
        report = await import_accounts_csv(
            session, io.StringIO(HEADER + rows), settings, progress=steps.append
        )
    assert report.created == 1203
    assert sum(steps) == 1203
    assert len(steps) > 1


async def test_the_demo_file_imports(
    sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    async with transaction(sessions) as session:
        report = await import_accounts_csv(session, DEMO_CSV, settings)
    assert report.created >= 6
    records = [
        await lookup(sessions, settings, number)
        for number in ("1000234517", "1000234528", "1000234539")
    ]
    landline_only, two_mobiles, mobile_and_email = records
    assert landline_only.phones and landline_only.first_mobile is None
    assert len(two_mobiles.mobiles) == 2
    assert mobile_and_email.first_mobile is not None and mobile_and_email.email
