from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from core.accounts.directory import (
    AccountDirectory,
    AccountRecord,
    ChangeRefusal,
    PasswordChangeRefused,
    PasswordNotSet,
    SqlAccountDirectory,
)
from core.accounts.passwords import use_fast_hashing_for_tests
from core.kit.phones import Phone
from core.models import Account, AccountPhone, Credential, LineType
from core.platform.db import Base, create_engine, create_sessionmaker, transaction
from core.platform.settings import Settings
from tests.conftest import set_temporary_password
from tests.support.hashing import counting_hashes

NUMBER = "1000234528"
MOBILE_1 = "+79123456789"
LANDLINE = "+74951234567"
MOBILE_2 = "+79221054419"
ISSUED_AT = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(autouse=True)
def fast_hashing() -> None:
    use_fast_hashing_for_tests()


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


@pytest.fixture
async def account(sessions: async_sessionmaker[AsyncSession]) -> str:
    """One committed account: mobile, landline, mobile, in that file order."""
    async with transaction(sessions) as session:
        session.add(
            Account(
                account_number=NUMBER,
                login="petrov.as",
                full_name="Петров Алексей Сергеевич",
                email="petrov@example.ru",
                phones=[
                    AccountPhone(e164=MOBILE_1, line_type=LineType.mobile, position=0),
                    AccountPhone(e164=LANDLINE, line_type=LineType.fixed, position=1),
                    AccountPhone(e164=MOBILE_2, line_type=LineType.mobile, position=2),
                ],
            )
        )
    return NUMBER


@pytest.fixture
def clock() -> Clock:
    return Clock(ISSUED_AT)


async def issue(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, clock: Clock
) -> str:
    async with transaction(sessions) as session:
        # Typed as the port, so that mypy checks the SQL directory implements it.
        directory: AccountDirectory = SqlAccountDirectory(session, settings, clock=clock)
        return await set_temporary_password(directory, settings, NUMBER, now=clock())


async def verify(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, clock: Clock, password: str
) -> tuple[bool, bool]:
    async with transaction(sessions) as session:
        check = await SqlAccountDirectory(session, settings, clock=clock).verify_password(
            NUMBER, password
        )
    return check.accepted, check.change_required


async def change(
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
    clock: Clock,
    current: str,
    new: str,
) -> None:
    async with transaction(sessions) as session:
        await SqlAccountDirectory(session, settings, clock=clock).change_password(
            NUMBER, current, new
        )


async def stored_credential(sessions: async_sessionmaker[AsyncSession]) -> Credential:
    async with sessions() as session:
        credential = (await session.scalars(select(Credential))).one_or_none()
    assert credential is not None
    return credential


# lookup


async def test_lookup_returns_the_account_with_phones_in_file_order(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, account: str
) -> None:
    async with sessions() as session:
        record = await SqlAccountDirectory(session, settings).lookup(f"  {account}\n")
    assert record is not None
    assert record.account_number == NUMBER
    assert record.login == "petrov.as"
    assert record.email == "petrov@example.ru"
    assert [phone.e164 for phone in record.phones] == [MOBILE_1, LANDLINE, MOBILE_2]
    assert [phone.e164 for phone in record.mobiles] == [MOBILE_1, MOBILE_2]
    assert record.first_mobile == Phone(MOBILE_1, LineType.mobile)


async def test_lookup_of_an_unknown_account_is_none(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, account: str
) -> None:
    async with sessions() as session:
        assert await SqlAccountDirectory(session, settings).lookup("1000234529") is None


async def test_lookup_of_an_account_without_phones_has_no_mobile(
    sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    async with transaction(sessions) as session:
        session.add(Account(account_number="200300400", login="x", full_name="", email=None))
    async with sessions() as session:
        record = await SqlAccountDirectory(session, settings).lookup("200300400")
    assert record is not None
    assert record.phones == ()
    assert record.first_mobile is None


async def test_lookup_costs_one_query_whether_or_not_the_account_exists(
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
    account: str,
) -> None:
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", count)
    try:
        counts = []
        for number in (NUMBER, "1000234529"):
            statements.clear()
            async with sessions() as session:
                await SqlAccountDirectory(session, settings).lookup(number)
            counts.append(len(statements))
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", count)
    assert counts == [1, 1]


def test_record_repr_masks_the_account_number_and_phones() -> None:
    record = AccountRecord(
        account_number=NUMBER,
        login="petrov.as",
        full_name="Петров Алексей Сергеевич",
        email="petrov@example.ru",
        phones=(Phone(MOBILE_1, LineType.mobile),),
    )
    text = repr(record)
    assert NUMBER not in text
    assert MOBILE_1 not in text
    assert MOBILE_1[1:] not in text
    assert "petrov" not in text
    assert "528" in text  # the masked number keeps its tail, so operators can tell accounts apart


# issuing a temporary password


async def test_issued_password_is_stored_only_as_an_argon2id_hash_with_an_expiry(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, clock: Clock, account: str
) -> None:
    password = await issue(sessions, settings, clock)
    assert len(password) == settings.temp_password_length
    assert set(password) <= set(settings.temp_password_alphabet)
    credential = await stored_credential(sessions)
    assert credential.password_hash.startswith("$argon2id$")
    assert password not in credential.password_hash
    assert credential.is_temporary is True
    assert credential.used_at is None
    assert credential.expires_at == ISSUED_AT + timedelta(hours=settings.temp_password_ttl_hours)


async def test_issuing_for_an_unknown_account_raises_without_the_number(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, account: str
) -> None:
    async with sessions() as session:
        with pytest.raises(PasswordNotSet) as raised:
            await set_temporary_password(
                SqlAccountDirectory(session, settings), settings, " 9876543210 "
            )
    assert raised.value.reason == "not_found"
    assert "9876543210" not in str(raised.value)


async def test_the_directory_never_commits_for_the_caller(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, account: str
) -> None:
    async with sessions() as session:
        directory = SqlAccountDirectory(session, settings)
        password = await set_temporary_password(directory, settings, NUMBER)
        await session.rollback()
    async with sessions() as session:
        check = await SqlAccountDirectory(session, settings).verify_password(NUMBER, password)
        assert (await session.scalars(select(Credential))).one_or_none() is None
    assert check.accepted is False


async def test_issuing_revokes_the_previous_temporary_password(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, clock: Clock, account: str
) -> None:
    first = await issue(sessions, settings, clock)
    second = await issue(sessions, settings, clock)
    assert await verify(sessions, settings, clock, first) == (False, False)
    assert await verify(sessions, settings, clock, second) == (True, True)


async def test_issuing_revokes_the_long_term_password(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, clock: Clock, account: str
) -> None:
    temporary = await issue(sessions, settings, clock)
    await change(sessions, settings, clock, temporary, "long-term-secret")
    assert await verify(sessions, settings, clock, "long-term-secret") == (True, False)
    await issue(sessions, settings, clock)
    assert await verify(sessions, settings, clock, "long-term-secret") == (False, False)


# verifying


async def test_temporary_password_is_accepted_with_a_change_required(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, clock: Clock, account: str
) -> None:
    password = await issue(sessions, settings, clock)
    assert await verify(sessions, settings, clock, password) == (True, True)
    assert await verify(sessions, settings, clock, f"  {password}") == (False, False)
    assert await verify(sessions, settings, clock, password.upper()) == (False, False)


async def test_temporary_password_expires_after_the_configured_hours(
    sessions: async_sessionmaker[AsyncSession], clock: Clock, account: str
) -> None:
    settings = Settings(_env_file=None, temp_password_ttl_hours=2)
    password = await issue(sessions, settings, clock)
    clock.now = ISSUED_AT + timedelta(hours=2) - timedelta(seconds=1)
    assert await verify(sessions, settings, clock, password) == (True, True)
    clock.now = ISSUED_AT + timedelta(hours=2)
    assert await verify(sessions, settings, clock, password) == (False, False)


async def test_an_account_without_a_password_refuses_everything(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, clock: Clock, account: str
) -> None:
    assert await verify(sessions, settings, clock, "") == (False, False)
    assert await verify(sessions, settings, clock, "whatever1") == (False, False)


async def test_an_unknown_account_refuses_a_password_of_another_account(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, clock: Clock, account: str
) -> None:
    password = await issue(sessions, settings, clock)
    async with sessions() as session:
        check = await SqlAccountDirectory(session, settings).verify_password("1000234529", password)
    assert check.accepted is False


def test_a_temporary_password_lives_an_hour_by_default_and_a_day_at_most() -> None:
    """§5: default 1 h, at most 24 h; a longer lifetime is refused at start-up."""
    assert Settings(_env_file=None).temp_password_ttl_hours == 1
    assert Settings(_env_file=None, temp_password_ttl_hours=24).temp_password_ttl_hours == 24
    for hours in (25, 168, 0):
        with pytest.raises(ValidationError):
            Settings(_env_file=None, temp_password_ttl_hours=hours)


# changing


async def test_change_with_the_temporary_password_sets_a_long_term_one(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, clock: Clock, account: str
) -> None:
    temporary = await issue(sessions, settings, clock)
    # Within the temporary password's lifetime (1 h by default, §5).
    clock.now = ISSUED_AT + timedelta(minutes=30)
    await change(sessions, settings, clock, temporary, "my new password")

    assert await verify(sessions, settings, clock, "my new password") == (True, False)
    assert await verify(sessions, settings, clock, temporary) == (False, False)
    credential = await stored_credential(sessions)
    assert credential.is_temporary is False
    assert credential.expires_at is None
    assert credential.used_at == ISSUED_AT + timedelta(minutes=30)
    # Long after the temporary password would have expired, the new one still works.
    clock.now = ISSUED_AT + timedelta(days=400)
    assert await verify(sessions, settings, clock, "my new password") == (True, False)


async def test_the_temporary_password_works_for_one_change_only(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, clock: Clock, account: str
) -> None:
    temporary = await issue(sessions, settings, clock)
    await change(sessions, settings, clock, temporary, "first new password")
    with pytest.raises(PasswordChangeRefused) as raised:
        await change(sessions, settings, clock, temporary, "second new password")
    assert raised.value.reason is ChangeRefusal.current_not_accepted
    assert await verify(sessions, settings, clock, "second new password") == (False, False)
    assert await verify(sessions, settings, clock, "first new password") == (True, False)


async def test_a_concurrent_second_change_with_the_same_temporary_password_is_refused(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, clock: Clock, account: str
) -> None:
    temporary = await issue(sessions, settings, clock)
    async with sessions() as slow:
        # The slow request has read the credential (held in its identity map, as it would be
        # mid-request) before the fast one changes it.
        slow_view = (await slow.scalars(select(Credential))).one()
        assert slow_view.is_temporary
        slow_directory = SqlAccountDirectory(slow, settings, clock=clock)
        await change(sessions, settings, clock, temporary, "fast new password")
        assert (await slow_directory.verify_password(NUMBER, temporary)).accepted  # stale view
        with pytest.raises(PasswordChangeRefused):
            await slow_directory.change_password(NUMBER, temporary, "slow new password")
        await slow.commit()
    assert await verify(sessions, settings, clock, "fast new password") == (True, False)
    assert await verify(sessions, settings, clock, "slow new password") == (False, False)


async def test_the_temporary_password_cannot_become_the_long_term_one(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, clock: Clock, account: str
) -> None:
    temporary = await issue(sessions, settings, clock)
    with pytest.raises(PasswordChangeRefused) as raised:
        await change(sessions, settings, clock, temporary, temporary)
    assert raised.value.reason is ChangeRefusal.same_as_current
    assert temporary not in str(raised.value)
    # A refused change does not use the temporary password up.
    assert await verify(sessions, settings, clock, temporary) == (True, True)


@pytest.mark.parametrize(
    ("new", "reason"),
    [("short12", ChangeRefusal.too_short), ("x" * 129, ChangeRefusal.too_long)],
)
async def test_change_refuses_a_new_password_of_the_wrong_length(
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
    clock: Clock,
    account: str,
    new: str,
    reason: ChangeRefusal,
) -> None:
    temporary = await issue(sessions, settings, clock)
    with pytest.raises(PasswordChangeRefused) as raised:
        await change(sessions, settings, clock, temporary, new)
    assert raised.value.reason is reason
    assert await verify(sessions, settings, clock, temporary) == (True, True)


async def test_eight_characters_are_enough(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, clock: Clock, account: str
) -> None:
    temporary = await issue(sessions, settings, clock)
    await change(sessions, settings, clock, temporary, "eight888")
    assert await verify(sessions, settings, clock, "eight888") == (True, False)


async def test_change_refuses_a_wrong_current_password(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, clock: Clock, account: str
) -> None:
    temporary = await issue(sessions, settings, clock)
    with pytest.raises(PasswordChangeRefused) as raised:
        await change(sessions, settings, clock, temporary + "x", "a fine new password")
    assert raised.value.reason is ChangeRefusal.current_not_accepted
    assert await verify(sessions, settings, clock, temporary) == (True, True)


async def test_change_refuses_an_expired_temporary_password(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, clock: Clock, account: str
) -> None:
    temporary = await issue(sessions, settings, clock)
    clock.now = ISSUED_AT + timedelta(hours=settings.temp_password_ttl_hours, minutes=1)
    with pytest.raises(PasswordChangeRefused) as raised:
        await change(sessions, settings, clock, temporary, "a fine new password")
    assert raised.value.reason is ChangeRefusal.current_not_accepted
    assert await verify(sessions, settings, clock, "a fine new password") == (False, False)


async def test_change_on_an_unknown_account_reads_like_a_wrong_password(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, account: str
) -> None:
    async with sessions() as session:
        with pytest.raises(PasswordChangeRefused) as raised:
            await SqlAccountDirectory(session, settings).change_password(
                "1000234529", "whatever1", "a fine new password"
            )
    assert raised.value.reason is ChangeRefusal.current_not_accepted
    assert "1000234529" not in str(raised.value)


async def test_a_long_term_password_can_be_changed_again(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, clock: Clock, account: str
) -> None:
    temporary = await issue(sessions, settings, clock)
    await change(sessions, settings, clock, temporary, "first new password")
    await change(sessions, settings, clock, "first new password", "second new password")
    assert await verify(sessions, settings, clock, "second new password") == (True, False)
    assert await verify(sessions, settings, clock, "first new password") == (False, False)


# §6.2: an unknown account, a wrong password and the right one cost one Argon2id check each


async def test_verify_costs_one_argon2_check_for_unknown_wrong_and_right(
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
    clock: Clock,
    account: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    password = await issue(sessions, settings, clock)
    costs = {}
    with counting_hashes(monkeypatch) as spy:
        for name, number, candidate in [
            ("unknown", "1000234529", password),
            ("wrong", NUMBER, "wrong password"),
            ("right", NUMBER, password),
        ]:
            spy.reset()
            async with sessions() as session:
                directory = SqlAccountDirectory(session, settings, clock=clock)
                await directory.verify_password(number, candidate)
            costs[name] = (spy.verified, spy.hashed)
    assert costs == {"unknown": (1, 0), "wrong": (1, 0), "right": (1, 0)}


async def test_change_costs_one_argon2_check_for_unknown_wrong_and_right(
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
    clock: Clock,
    account: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    password = await issue(sessions, settings, clock)
    checks = {}
    with counting_hashes(monkeypatch) as spy:
        for name, number, current in [
            ("unknown", "1000234529", password),
            ("wrong", NUMBER, "wrong password"),
            ("right", NUMBER, password),
        ]:
            spy.reset()
            async with transaction(sessions) as session:
                directory = SqlAccountDirectory(session, settings, clock=clock)
                with contextlib.suppress(PasswordChangeRefused):
                    await directory.change_password(number, current, "a fine new password")
            checks[name] = spy.verified
    # The right one also hashes the new password: after the check, which the answer reveals.
    assert checks == {"unknown": 1, "wrong": 1, "right": 1}
