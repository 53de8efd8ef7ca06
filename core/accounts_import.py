"""Fill the accounts directory from the billing centre's CSV export: all rows or none."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import lazyload, selectinload

from core.clock import utcnow
from core.config import Settings
from core.models import Account, AccountPhone
from core.phones import InvalidPhoneNumber, Phone, parse_phone

COLUMNS = ("account_number", "login", "full_name", "phones", "email")
PHONE_SEPARATOR = ";"
# Column sizes of core.models.Account.
ACCOUNT_NUMBER_MAX = 32
LOGIN_MAX = 128
FULL_NAME_MAX = 256
EMAIL_MAX = 256
# Deliberately loose: the billing centre's data decide what an address is; this only catches
# a column mix-up or a typo such as a missing "@".
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s.]+")
_BATCH = 500

CsvSource = str | os.PathLike[str] | TextIO


@dataclass(frozen=True, slots=True)
class ImportReport:
    """How many accounts an import created, changed and left as they were."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0

    @property
    def total(self) -> int:
        """Rows imported."""
        return self.created + self.updated + self.unchanged


class ImportFailed(ValueError):
    """The file has bad rows; `errors` lists (line number, reason) and nothing was written."""

    def __init__(self, errors: Sequence[tuple[int, str]]) -> None:
        self.errors = tuple(errors)
        super().__init__(f"{len(self.errors)} problem(s) in the file; nothing was imported")


@dataclass(frozen=True, slots=True)
class _Row:
    line: int
    account_number: str
    login: str
    full_name: str
    email: str | None
    phones: tuple[Phone, ...]


async def import_accounts_csv(
    session: AsyncSession,
    source: CsvSource,
    settings: Settings,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Upsert every account of a CSV file by account number; raises ImportFailed, writing nothing.

    `source` is a path or an open text stream. `progress` is called with the number of rows
    just written. The caller owns the transaction.
    """
    text = await _read_text(source)
    rows = _parse_csv(text, settings)
    return await _upsert(session, rows, progress)


async def _read_text(source: CsvSource) -> str:
    if isinstance(source, str | os.PathLike):
        data = await asyncio.to_thread(Path(source).read_bytes)
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            raise ImportFailed([(line, "the file is not UTF-8 text")]) from None
    try:
        text = await asyncio.to_thread(source.read)
    except UnicodeDecodeError:
        raise ImportFailed([(1, "the file is not UTF-8 text")]) from None
    return text.removeprefix("\ufeff")


def _parse_csv(text: str, settings: Settings) -> list[_Row]:
    """Validate every row of the CSV text; raises ImportFailed listing every bad row."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise ImportFailed([(reader.line_num or 1, f"malformed CSV: {exc}")]) from None
    if header is None:
        raise ImportFailed([(1, "the file is empty; the first line must be " + ",".join(COLUMNS))])
    columns = [name.strip().lower() for name in header]
    header_problem = _header_problem(columns)
    if header_problem:
        raise ImportFailed([(1, header_problem)])
    position = {name: columns.index(name) for name in COLUMNS}

    errors: list[tuple[int, str]] = []
    rows: list[_Row] = []
    first_seen: dict[str, int] = {}
    last_line = reader.line_num
    while True:
        line = last_line + 1
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            # The reader cannot be trusted past a broken quote; report and stop here.
            errors.append((line, f"malformed CSV: {exc}"))
            break
        last_line = reader.line_num
        if not any(field.strip() for field in fields):
            continue
        if len(fields) != len(columns):
            errors.append((line, f"expected {len(columns)} fields, found {len(fields)}"))
            continue
        values = {name: fields[index].strip() for name, index in position.items()}
        row, problems = _parse_row(line, values, settings)
        number = values["account_number"]
        if number in first_seen:
            problems.append(f"account number repeats line {first_seen[number]}")
        elif number:
            first_seen[number] = line
        errors.extend((line, problem) for problem in problems)
        if row is not None and not problems:
            rows.append(row)
    if errors:
        raise ImportFailed(errors)
    return rows


def _header_problem(columns: list[str]) -> str | None:
    missing = [name for name in COLUMNS if name not in columns]
    unknown = [name for name in columns if name not in COLUMNS]
    repeated = sorted({name for name in columns if columns.count(name) > 1})
    problems: list[str] = []
    if missing:
        problems.append("missing column(s) " + ", ".join(missing))
    if unknown:
        problems.append("unknown column(s) " + ", ".join(repr(name) for name in unknown))
    if repeated:
        problems.append("repeated column(s) " + ", ".join(repeated))
    if not problems:
        return None
    return "bad header: " + "; ".join(problems) + "; expected " + ",".join(COLUMNS)


def _parse_row(
    line: int, values: dict[str, str], settings: Settings
) -> tuple[_Row | None, list[str]]:
    problems: list[str] = []
    number = values["account_number"]
    if not number:
        problems.append("account number is empty")
    elif len(number) > ACCOUNT_NUMBER_MAX or not settings.account_number_regex.fullmatch(number):
        problems.append(
            f"account number does not match the configured format {settings.account_number_pattern}"
        )
    login = values["login"]
    if not login:
        problems.append("login is empty")
    elif len(login) > LOGIN_MAX:
        problems.append(f"login is longer than {LOGIN_MAX} characters")
    full_name = values["full_name"]
    if len(full_name) > FULL_NAME_MAX:
        problems.append(f"full name is longer than {FULL_NAME_MAX} characters")
    email = values["email"] or None
    if email is not None and (len(email) > EMAIL_MAX or not _EMAIL.fullmatch(email)):
        problems.append("email does not look like an e-mail address")
    phones, phone_problems = _parse_phones(values["phones"], settings.default_region)
    problems.extend(phone_problems)
    if problems:
        return None, problems
    row = _Row(
        line=line,
        account_number=number,
        login=login,
        full_name=full_name,
        email=email,
        phones=phones,
    )
    return row, problems


def _parse_phones(text: str, region: str) -> tuple[tuple[Phone, ...], list[str]]:
    raws = [raw.strip() for raw in text.split(PHONE_SEPARATOR)]
    raws = [raw for raw in raws if raw]
    phones: dict[str, Phone] = {}
    problems: list[str] = []
    for index, raw in enumerate(raws, start=1):
        try:
            phone = parse_phone(raw, region)
        except InvalidPhoneNumber:
            # The reason may reach a terminal or a log: name the phone, never print it.
            problems.append(f"phone {index} of {len(raws)}{_ending(raw)} is not a valid number")
            continue
        phones.setdefault(phone.e164, phone)
    return tuple(phones.values()), problems


def _ending(raw: str) -> str:
    digits = "".join(ch for ch in raw if ch.isdigit())
    return f" (ending in {digits[-2:]})" if len(digits) >= 5 else ""


async def _upsert(
    session: AsyncSession, rows: list[_Row], progress: Callable[[int], None] | None
) -> ImportReport:
    created = updated = unchanged = 0
    for start in range(0, len(rows), _BATCH):
        batch = rows[start : start + _BATCH]
        existing = {
            account.account_number: account
            for account in await session.scalars(
                select(Account)
                .where(Account.account_number.in_([row.account_number for row in batch]))
                .options(selectinload(Account.phones), lazyload(Account.credential))
            )
        }
        for row in batch:
            account = existing.get(row.account_number)
            if account is None:
                session.add(_new_account(row))
                created += 1
            elif _update(account, row):
                updated += 1
            else:
                unchanged += 1
        await session.flush()
        if progress is not None:
            progress(len(batch))
    return ImportReport(created=created, updated=updated, unchanged=unchanged)


def _new_account(row: _Row) -> Account:
    return Account(
        account_number=row.account_number,
        login=row.login,
        full_name=row.full_name,
        email=row.email,
        phones=[
            AccountPhone(e164=phone.e164, line_type=phone.line_type, position=position)
            for position, phone in enumerate(row.phones)
        ],
    )


def _update(account: Account, row: _Row) -> bool:
    changed = False
    if (account.login, account.full_name, account.email) != (row.login, row.full_name, row.email):
        account.login = row.login
        account.full_name = row.full_name
        account.email = row.email
        changed = True
    on_file = [(phone.e164, phone.line_type, phone.position) for phone in account.phones]
    wanted = [(phone.e164, phone.line_type, index) for index, phone in enumerate(row.phones)]
    if on_file != wanted:
        # Keep the rows of numbers that stay: deleting and re-inserting the same number would
        # trip the (account_id, e164) unique constraint, as the flush inserts before it deletes.
        kept = {phone.e164: phone for phone in account.phones}
        phones: list[AccountPhone] = []
        for position, phone in enumerate(row.phones):
            record = kept.get(phone.e164)
            if record is None:
                record = AccountPhone(e164=phone.e164, line_type=phone.line_type)
            record.line_type = phone.line_type
            record.position = position
            phones.append(record)
        account.phones = phones
        changed = True
    if changed:
        account.updated_at = utcnow()
    return changed
