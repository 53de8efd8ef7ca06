from __future__ import annotations

import io
import itertools
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from core.accounts import importer as accounts_import
from core.accounts.directory import AccountRecord, SqlAccountDirectory
from core.accounts.importer import ImportFailed, ImportReport, import_accounts_csv
from core.kit.phones import InvalidPhoneNumber, Phone, parse_phone
from core.models import Account, AccountPhone, LineType
from core.platform.db import Base, create_engine, create_sessionmaker, transaction
from core.platform.settings import Settings

HEADER = "account_number,login,full_name,phones,email\n"
GOOD = (
    HEADER
    + "1000234517,ivanova.mv,Иванова Мария Викторовна,+7 495 123-45-67,\n"
    + "1000234528,petrov.as,Петров Алексей Сергеевич,+7 912 345-67-89; 8 922 105-44-19,\n"
    + "1000234539,smirnova.ea,Смирнова Елена Андреевна,+79037771230,e.smirnova@example.ru\n"
)
DEMO_CSV = Path(__file__).resolve().parents[3] / "gateway" / "demo_accounts.csv"


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


# --- at the scale of a city: streaming, digests, one parse per number --------------------------


def rows_csv(count: int, start: int = 0) -> str:
    """`count` valid rows, two phones each (a mobile of its own, a shared landline)."""
    return "".join(
        f"{1_000_000_000 + i},login{i},Тестов Тест,+7912{i:07d};8 (343) 200-00-00,\n"
        for i in range(start, start + count)
    )


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every number the import hands to phonenumbers, as it hands it."""
    seen: list[str] = []

    def counting(raw: str, region: str = "RU") -> Phone:
        seen.append(raw)
        return parse_phone(raw, region)

    monkeypatch.setattr(accounts_import, "parse_phone", counting)
    return seen


async def test_a_reimport_of_an_unchanged_file_parses_no_phone(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, parses: list[str]
) -> None:
    await run_import(sessions, settings, GOOD)
    assert parses
    parses.clear()
    assert await run_import(sessions, settings, GOOD) == ImportReport(unchanged=3)
    assert parses == []


async def test_each_distinct_number_is_parsed_once(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, parses: list[str]
) -> None:
    text = (
        HEADER
        + "1000234517,ivanova.mv,,+7 495 123-45-67;8 912 345 67 89,\n"
        + "1000234528,petrov.as,,+7 (495) 123-45-67,\n"
        + "1000234539,smirnova.ea,,+74951234567;8(912)345-67-89,\n"
    )
    assert await run_import(sessions, settings, text) == ImportReport(created=3)
    # One landline and one mobile, each punctuated two or three ways.
    assert len(parses) == 2
    assert [p.e164 for p in (await lookup(sessions, settings, "1000234539")).phones] == [
        "+74951234567",
        "+79123456789",
    ]


async def test_a_new_spelling_of_the_same_phones_is_unchanged_and_remembered(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, parses: list[str]
) -> None:
    await run_import(sessions, settings, GOOD)
    async with sessions() as session:
        stamps = dict((await session.execute(select(Account.login, Account.updated_at))).all())
    respelled = GOOD.replace("+7 495 123-45-67", "8 (495) 1234567")
    assert await run_import(sessions, settings, respelled) == ImportReport(unchanged=3)
    async with sessions() as session:
        assert dict((await session.execute(select(Account.login, Account.updated_at))).all()) == (
            stamps
        )
    # The new spelling's digest was stored: a third run parses nothing.
    parses.clear()
    assert await run_import(sessions, settings, respelled) == ImportReport(unchanged=3)
    assert parses == []


async def test_accounts_imported_before_digests_are_compared_once_then_skipped(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, parses: list[str]
) -> None:
    await run_import(sessions, settings, GOOD)
    async with transaction(sessions) as session:
        await session.execute(update(Account).values(import_digest=None))
    assert await run_import(sessions, settings, GOOD) == ImportReport(unchanged=3)
    parses.clear()
    assert await run_import(sessions, settings, GOOD) == ImportReport(unchanged=3)
    assert parses == []


async def test_an_unchanged_row_is_still_checked_against_the_settings(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, parses: list[str]
) -> None:
    await run_import(sessions, settings, GOOD)
    # A stricter account number format refuses rows the digest knows.
    stricter = Settings(_env_file=None, account_number_pattern=r"^\d{6,8}$")
    errors = await failures(sessions, stricter, GOOD)
    assert [line for line, _ in errors] == [2, 3, 4]
    # Another phone region reads the numbers again.
    parses.clear()
    kazakh = Settings(_env_file=None, default_region="KZ")
    assert (await run_import(sessions, kazakh, GOOD)).total == 3
    assert parses


async def test_bad_lines_in_several_batches_are_all_reported_and_nothing_is_written(
    sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    batch = accounts_import.BATCH_ROWS
    rows = rows_csv(3 * batch).splitlines(keepends=True)
    rows[10] = "1000000010,,Тестов,+79120000010,\n"  # line 12: no login
    rows[batch + 5] = rows[3].replace("login3", "other")  # a repeat of line 5
    rows[-1] = "1000009999,last,Тестов,+7 912 345-67-8,\n"  # the last line: a bad phone
    errors = await failures(sessions, settings, HEADER + "".join(rows))
    assert errors == [
        (12, "login is empty"),
        (batch + 7, "account number repeats line 5"),
        (3 * batch + 1, "phone 1 of 1 (ending in 78) is not a valid number"),
    ]
    assert await count(sessions, Account) == 0
    assert await count(sessions, AccountPhone) == 0


async def test_a_failed_import_leaves_the_transaction_fit_for_another(
    sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    async with transaction(sessions) as session:
        with pytest.raises(ImportFailed):
            await import_accounts_csv(
                session, io.StringIO(GOOD + "12AB,x,,+79161234567,\n"), settings
            )
        report = await import_accounts_csv(session, io.StringIO(GOOD), settings)
    assert report == ImportReport(created=3)
    assert await count(sessions, Account) == 3


async def test_too_many_problems_stop_the_reading(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(accounts_import, "MAX_ERRORS", 3)
    text = HEADER + "".join(f"{1_000_000_000 + i},,,+79120000000,\n" for i in range(10))
    errors = await failures(sessions, settings, text)
    assert errors == [
        (2, "login is empty"),
        (3, "login is empty"),
        (4, "login is empty"),
        (4, "more than 3 problems: the rest of the file was not read"),
    ]


async def test_a_large_file_is_read_and_staged_a_batch_at_a_time(
    sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    batch = accounts_import.BATCH_ROWS
    text = HEADER + rows_csv(5 * batch)
    stream = io.StringIO(text)
    # Where line n ends in the text, n = 1 being the header.
    line_ends = list(itertools.accumulate(len(line) for line in text.splitlines(keepends=True)))
    # (rows reported so far, characters read from the stream by then) at each progress call.
    seen: list[tuple[int, int]] = []
    done = 0

    def progress(rows: int) -> None:
        nonlocal done
        done += rows
        seen.append((done, stream.tell()))

    async with transaction(sessions) as session:
        report = await import_accounts_csv(session, stream, settings, progress=progress)
    assert report == ImportReport(created=5 * batch)
    assert [rows for rows, _ in seen] == [batch, 2 * batch, 3 * batch, 4 * batch, 5 * batch]
    # Never more read than the header and the rows staged so far: one batch in memory at most.
    assert all(read <= line_ends[rows] for rows, read in seen)
    assert await count(sessions, AccountPhone) == 2 * 5 * batch


@given(
    digits=st.sampled_from(["79123456789", "89123456789", "84951234567", "74991234567"]),
    cuts=st.lists(st.tuples(st.integers(0, 11), st.sampled_from([" ", "-", "(", ")", "."]))),
    plus=st.booleans(),
)
def test_a_number_reads_the_same_however_it_is_punctuated(
    digits: str, cuts: list[tuple[int, str]], plus: bool
) -> None:
    # The import parses each distinct number once, keyed by its digits: the key must not
    # change what phonenumbers makes of the text.
    raw = digits
    for position, mark in sorted(cuts, reverse=True):
        raw = raw[:position] + mark + raw[position:]
    raw = ("+" if plus else "") + raw
    try:
        expected: Phone | None = parse_phone(raw)
    except InvalidPhoneNumber:
        expected = None
    assert accounts_import._PhoneParser("RU").parse(raw) == expected
