"""Fill the accounts directory from the billing centre's CSV export: all rows or none.

The file is streamed: rows are checked and written, a batch at a time, to staging tables that
are temporary and private to the caller's connection; the accounts and phones themselves change
only after the last line has passed, in a few set-based statements. So memory stays bounded
however large the file, and a bad line anywhere leaves the directory as it was.

Each account keeps a digest of the row it came from (its fields as the file has them, the phone
region and the phonenumbers version): a row whose digest is unchanged costs one read, and its
phones are not parsed again. A number is parsed once however many rows carry it.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TextIO

import phonenumbers
from sqlalchemy import (
    Column,
    ColumnElement,
    Integer,
    MetaData,
    String,
    Table,
    any_,
    bindparam,
    delete,
    func,
    insert,
    literal,
    literal_column,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import InstrumentedAttribute
from sqlalchemy.schema import CreateTable

from core.kit.phones import InvalidPhoneNumber, Phone, parse_phone
from core.models import Account, AccountPhone
from core.platform.clock import utcnow
from core.platform.db import UtcDateTime
from core.platform.settings import Settings

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
# Rows held in memory at a time: read, checked and staged together.
BATCH_ROWS = 1_000
# A file this wrong is the wrong file: reading on would only print more of the same.
MAX_ERRORS = 1_000
# Distinct numbers remembered: a household's landline repeats over a file, most mobiles do not.
PHONE_CACHE_SIZE = 50_000
# Bump when what a row imports to changes for the same text (a new rule, a new column).
_DIGEST_VERSION = "1"
_NOT_UTF8 = re.compile("[\udc80-\udcff]")
# A number written with digits and the usual punctuation only: its digits (and a leading +)
# are all phonenumbers reads of it, so "8 (912) 345-67-89" and "89123456789" are one number.
_PLAIN_NUMBER = re.compile(r"\+?[0-9 ()\-.]+")
_PUNCTUATION = str.maketrans("", "", " ()-.")

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


# --- staging tables -------------------------------------------------------------------------
# Temporary: private to the connection, gone with it (PostgreSQL: at commit), never in the
# models' metadata.

_staging = MetaData()
_LINES = Table(
    # Every row with an account number, valid or not: repeats are found here.
    "import_lines",
    _staging,
    Column("line", Integer, nullable=False),
    Column("account_number", String, nullable=False),
    prefixes=["TEMPORARY"],
    postgresql_on_commit="DROP",
)
_NEW = Table(
    "import_new",
    _staging,
    Column("account_number", String, nullable=False),
    Column("login", String, nullable=False),
    Column("full_name", String, nullable=False),
    Column("email", String),
    Column("digest", String, nullable=False),
    prefixes=["TEMPORARY"],
    postgresql_on_commit="DROP",
)
_CHANGED = Table(
    # Existing accounts whose row changed; `same` = 1 when only its text did (another way of
    # writing the same phones): then only the digest is written.
    "import_changed",
    _staging,
    Column("account_id", Integer, primary_key=True, autoincrement=False),
    Column("login", String, nullable=False),
    Column("full_name", String, nullable=False),
    Column("email", String),
    Column("digest", String, nullable=False),
    Column("same", Integer, nullable=False),
    prefixes=["TEMPORARY"],
    postgresql_on_commit="DROP",
)
_PHONES = Table(
    # The phones of new and changed accounts, in file order.
    "import_phones",
    _staging,
    Column("account_number", String, nullable=False),
    Column("e164", String, nullable=False),
    Column("line_type", String, nullable=False),
    Column("position", Integer, nullable=False),
    prefixes=["TEMPORARY"],
    postgresql_on_commit="DROP",
)
_STAGING_TABLES = (_LINES, _NEW, _CHANGED, _PHONES)


async def _create_staging(connection: AsyncConnection) -> None:
    # An earlier import on this pooled connection may have left them (SQLite keeps a
    # temporary table that was created outside a transaction).
    await _drop_staging(connection)
    for table in _STAGING_TABLES:
        await connection.execute(CreateTable(table))


async def _drop_staging(connection: AsyncConnection) -> None:
    # Named in the temporary schema, so that no table of the same name elsewhere is touched.
    schema = "pg_temp" if connection.dialect.name == "postgresql" else "temp"
    for table in _STAGING_TABLES:
        await connection.exec_driver_sql(f"DROP TABLE IF EXISTS {schema}.{table.name}")


async def _copy(connection: AsyncConnection, table: Table, rows: list[tuple[Any, ...]]) -> None:
    """Append rows to a staging table: COPY on asyncpg, one executemany elsewhere."""
    if not rows:
        return
    names = [column.name for column in table.columns]
    if connection.dialect.driver == "asyncpg":
        driver = (await connection.get_raw_connection()).driver_connection
        assert driver is not None
        await driver.copy_records_to_table(table.name, records=rows, columns=names)
    elif connection.dialect.paramstyle == "qmark":
        # The driver's own executemany: SQLAlchemy's per-row parameter handling is most of the
        # cost of a large batch otherwise.
        statement = str(insert(table).compile(dialect=connection.dialect))
        await connection.exec_driver_sql(statement, rows)
    else:
        await connection.execute(
            insert(table), [dict(zip(names, row, strict=True)) for row in rows]
        )


# --- reading ----------------------------------------------------------------------------------


class _NotUtf8(Exception):
    def __init__(self, line: int) -> None:
        self.line = line


@contextlib.contextmanager
def _lines(source: CsvSource) -> Iterator[Iterator[str]]:
    """The source's lines, decoded, one at a time; a line that is not UTF-8 raises _NotUtf8."""
    if isinstance(source, str | os.PathLike):
        # surrogateescape keeps a bad byte as a marker, so that its line can be named.
        with open(  # noqa: PTH123 - a path or a str, read as a stream
            source, encoding="utf-8-sig", errors="surrogateescape", newline=""
        ) as stream:
            yield _checked(stream)
    else:
        yield _checked(_without_bom(source))


def _without_bom(stream: TextIO) -> Iterator[str]:
    first = True
    for line in stream:
        yield line.removeprefix("\ufeff") if first else line
        first = False


def _checked(lines: Iterator[str] | TextIO) -> Iterator[str]:
    number = 0
    try:
        for number, line in enumerate(lines, start=1):
            if _NOT_UTF8.search(line):
                raise _NotUtf8(number)
            yield line
    except UnicodeDecodeError:
        raise _NotUtf8(number + 1) from None


# --- checking ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _Row:
    line: int
    account_number: str
    login: str
    full_name: str
    email: str | None
    phones_text: str
    digest: str
    problems: list[str]
    phones: tuple[Phone, ...] = ()


@dataclass(slots=True)
class _Stored:
    account_id: int
    digest: str | None
    login: str
    full_name: str
    email: str | None


@dataclass(slots=True)
class _Counts:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)
    # The line after which reading stopped, having found too many problems.
    stopped_at: int | None = None


class _PhoneParser:
    """parse_phone with a bounded memory of the numbers it has seen."""

    def __init__(self, region: str) -> None:
        self.region = region
        self.known: dict[str, Phone | None] = {}

    def parse(self, raw: str) -> Phone | None:
        """The phone, or None when it is not a valid number."""
        key = raw
        if len(raw) <= 32 and _PLAIN_NUMBER.fullmatch(raw):
            key = raw.translate(_PUNCTUATION)
        try:
            return self.known[key]
        except KeyError:
            pass
        try:
            phone: Phone | None = parse_phone(key, self.region)
        except InvalidPhoneNumber:
            phone = None
        if len(self.known) >= PHONE_CACHE_SIZE:
            self.known.clear()
        self.known[key] = phone
        return phone

    def parse_all(self, text: str) -> tuple[tuple[Phone, ...], list[str]]:
        """A row's phones in file order without repeats, and the problems of the bad ones."""
        raws = [raw.strip() for raw in text.split(PHONE_SEPARATOR)]
        raws = [raw for raw in raws if raw]
        phones: dict[str, Phone] = {}
        problems: list[str] = []
        for index, raw in enumerate(raws, start=1):
            phone = self.parse(raw)
            if phone is None:
                # The reason may reach a terminal or a log: name the phone, never print it.
                problems.append(f"phone {index} of {len(raws)}{_ending(raw)} is not a valid number")
                continue
            phones.setdefault(phone.e164, phone)
        return tuple(phones.values()), problems


def _ending(raw: str) -> str:
    digits = "".join(ch for ch in raw if ch.isdigit())
    return f" (ending in {digits[-2:]})" if len(digits) >= 5 else ""


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


class _RowChecker:
    """Checks a row's fields (its phones apart) and fingerprints its text."""

    def __init__(self, settings: Settings) -> None:
        self.pattern = settings.account_number_regex
        self.pattern_text = settings.account_number_pattern
        # The digest covers what decides how a row's text imports, besides the text itself.
        self.salt = "\x1f".join(
            (_DIGEST_VERSION, settings.default_region, phonenumbers.__version__)
        )

    def check(self, line: int, values: list[str]) -> _Row:
        """The row with its field problems (its phones are checked later, when needed)."""
        number, login, full_name, phones_text, email_text = values
        problems: list[str] = []
        if not number:
            problems.append("account number is empty")
        elif len(number) > ACCOUNT_NUMBER_MAX or not self.pattern.fullmatch(number):
            problems.append(
                f"account number does not match the configured format {self.pattern_text}"
            )
        if not login:
            problems.append("login is empty")
        elif len(login) > LOGIN_MAX:
            problems.append(f"login is longer than {LOGIN_MAX} characters")
        if len(full_name) > FULL_NAME_MAX:
            problems.append(f"full name is longer than {FULL_NAME_MAX} characters")
        email = email_text or None
        if email is not None and (len(email) > EMAIL_MAX or not _EMAIL.fullmatch(email)):
            problems.append("email does not look like an e-mail address")
        text = "\x1f".join((self.salt, number, login, full_name, phones_text, email_text))
        digest = hashlib.blake2b(text.encode(), digest_size=16)
        return _Row(
            line=line,
            account_number=number,
            login=login,
            full_name=full_name,
            email=email,
            phones_text=phones_text,
            digest=digest.hexdigest(),
            problems=problems,
        )


# --- the import -------------------------------------------------------------------------------


async def import_accounts_csv(
    session: AsyncSession,
    source: CsvSource,
    settings: Settings,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Upsert every account of a CSV file by account number; raises ImportFailed, writing nothing.

    `source` is a path or an open text stream, read as a stream. `progress` is called with the
    number of rows just checked and staged, a batch at a time. The caller owns the transaction.
    """
    connection = await session.connection()
    await _create_staging(connection)
    try:
        counts = await _stage(connection, source, settings, progress)
        errors = counts.errors + await _repeats(connection)
        if errors:
            errors.sort(key=lambda error: error[0])
            if counts.stopped_at is not None:
                errors = errors[:MAX_ERRORS]
                errors.append(
                    (
                        counts.stopped_at,
                        f"more than {MAX_ERRORS} problems: the rest of the file was not read",
                    )
                )
            raise ImportFailed(errors)
        await _merge(connection, utcnow())
    except ImportFailed:
        await _drop_staging(connection)
        raise
    await _drop_staging(connection)
    # The statements above went around the ORM: what the session holds may be stale.
    session.expire_all()
    return ImportReport(created=counts.created, updated=counts.updated, unchanged=counts.unchanged)


async def _stage(
    connection: AsyncConnection,
    source: CsvSource,
    settings: Settings,
    progress: Callable[[int], None] | None,
) -> _Counts:
    """Read and check every row, staging what the merge will write; the counts and errors."""
    counts = _Counts()
    errors = counts.errors
    checker = _RowChecker(settings)
    phones = _PhoneParser(settings.default_region)
    with _lines(source) as lines:
        reader = csv.reader(lines)
        try:
            header = next(reader, None)
        except csv.Error as exc:
            raise ImportFailed([(reader.line_num or 1, f"malformed CSV: {exc}")]) from None
        except _NotUtf8 as bad:
            raise ImportFailed([(bad.line, "the file is not UTF-8 text")]) from None
        if header is None:
            raise ImportFailed(
                [(1, "the file is empty; the first line must be " + ",".join(COLUMNS))]
            )
        columns = [name.strip().lower() for name in header]
        header_problem = _header_problem(columns)
        if header_problem:
            raise ImportFailed([(1, header_problem)])
        positions = [columns.index(name) for name in COLUMNS]
        width = len(columns)

        batch: list[_Row] = []
        pending = 0  # field problems in the batch, before its phones are checked
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
            except _NotUtf8 as bad:
                errors.append((bad.line, "the file is not UTF-8 text"))
                break
            last_line = reader.line_num
            if not any(field.strip() for field in fields):
                continue
            if len(fields) != width:
                errors.append((line, f"expected {width} fields, found {len(fields)}"))
                continue
            row = checker.check(line, [fields[index].strip() for index in positions])
            batch.append(row)
            pending += len(row.problems)
            if len(batch) >= BATCH_ROWS or len(errors) + pending >= MAX_ERRORS:
                await _stage_batch(connection, batch, phones, counts, progress)
                batch, pending = [], 0
            if len(errors) >= MAX_ERRORS:
                counts.stopped_at = line
                break
        await _stage_batch(connection, batch, phones, counts, progress)
    return counts


async def _stage_batch(
    connection: AsyncConnection,
    batch: list[_Row],
    phones: _PhoneParser,
    counts: _Counts,
    progress: Callable[[int], None] | None,
) -> None:
    if not batch:
        return
    await _copy(
        connection, _LINES, [(row.line, row.account_number) for row in batch if row.account_number]
    )
    # Once the file has failed, only what finds further problems is still worth doing.
    stored = {} if counts.errors else await _stored(connection, batch)
    fresh: list[_Row] = []
    for row in batch:
        known = stored.get(row.account_number)
        if not row.problems and known is not None and known.digest == row.digest:
            counts.unchanged += 1
            continue
        row.phones, problems = phones.parse_all(row.phones_text)
        row.problems.extend(problems)
        if row.problems:
            counts.errors.extend((row.line, problem) for problem in row.problems)
        elif not counts.errors:
            fresh.append(row)
    if not counts.errors:
        await _stage_changes(connection, fresh, stored, counts)
    if progress is not None:
        progress(len(batch))


def _one_of(
    connection: AsyncConnection, column: InstrumentedAttribute[Any], values: list[Any]
) -> ColumnElement[bool]:
    """`column IN values` with the values as one parameter: binding a thousand parameters one by
    one costs more than the look-up itself."""
    if connection.dialect.name == "postgresql":
        return column == any_(bindparam(None, values, type_=ARRAY(column.type)))
    if connection.dialect.name == "sqlite":
        listed = func.json_each(bindparam(None, json.dumps(values), type_=String))
        return column.in_(select(literal_column("value")).select_from(listed))
    return column.in_(values)


async def _stored(connection: AsyncConnection, batch: list[_Row]) -> dict[str, _Stored]:
    numbers = [row.account_number for row in batch if not row.problems]
    if not numbers:
        return {}
    result = await connection.execute(
        select(
            Account.account_number,
            Account.id,
            Account.import_digest,
            Account.login,
            Account.full_name,
            Account.email,
        ).where(_one_of(connection, Account.account_number, numbers))
    )
    return {
        number: _Stored(account_id, digest, login, full_name, email)
        for number, account_id, digest, login, full_name, email in result
    }


async def _stage_changes(
    connection: AsyncConnection, rows: list[_Row], stored: dict[str, _Stored], counts: _Counts
) -> None:
    """Stage new accounts, changed ones and new digests, telling changes from new spellings."""
    existing = [
        stored[row.account_number].account_id for row in rows if row.account_number in stored
    ]
    on_file: dict[int, list[tuple[str, str, int]]] = {account_id: [] for account_id in existing}
    if existing:
        result = await connection.execute(
            select(
                AccountPhone.account_id,
                AccountPhone.e164,
                AccountPhone.line_type,
                AccountPhone.position,
            )
            .where(_one_of(connection, AccountPhone.account_id, existing))
            .order_by(AccountPhone.account_id, AccountPhone.position, AccountPhone.id)
        )
        for account_id, e164, line_type, position in result:
            on_file[account_id].append((e164, str(line_type), position))

    new: list[tuple[Any, ...]] = []
    changed: list[tuple[Any, ...]] = []
    staged_phones: list[tuple[Any, ...]] = []
    for row in rows:
        wanted = [(phone.e164, str(phone.line_type), i) for i, phone in enumerate(row.phones)]
        known = stored.get(row.account_number)
        if known is None:
            counts.created += 1
            new.append((row.account_number, row.login, row.full_name, row.email, row.digest))
        else:
            same = (known.login, known.full_name, known.email) == (
                row.login,
                row.full_name,
                row.email,
            ) and on_file[known.account_id] == wanted
            if same:
                counts.unchanged += 1
            else:
                counts.updated += 1
            changed.append(
                (known.account_id, row.login, row.full_name, row.email, row.digest, int(same))
            )
            if same:
                continue
        staged_phones.extend((row.account_number, *phone) for phone in wanted)
    await _copy(connection, _NEW, new)
    await _copy(connection, _CHANGED, changed)
    await _copy(connection, _PHONES, staged_phones)


async def _repeats(connection: AsyncConnection) -> list[tuple[int, str]]:
    """The lines whose account number an earlier line already has."""
    first = (
        select(_LINES.c.account_number, func.min(_LINES.c.line).label("first"))
        .group_by(_LINES.c.account_number)
        .having(func.count() > 1)
        .subquery()
    )
    result = await connection.execute(
        select(_LINES.c.line, first.c.first)
        .join(first, first.c.account_number == _LINES.c.account_number)
        .where(_LINES.c.line > first.c.first)
        .order_by(_LINES.c.line)
        .limit(MAX_ERRORS)
    )
    return [(line, f"account number repeats line {earlier}") for line, earlier in result]


async def _merge(connection: AsyncConnection, now: datetime) -> None:
    """Write what was staged: changed accounts, their phones, new accounts and theirs."""
    if connection.dialect.name == "postgresql":
        # Freshly filled temporary tables have no statistics; the joins below need some.
        for table in _STAGING_TABLES:
            await connection.exec_driver_sql(f"ANALYZE {table.name}")
    changed = _CHANGED.c
    await connection.execute(
        update(Account)
        .where(Account.id == changed.account_id, changed.same == 0)
        .values(
            login=changed.login,
            full_name=changed.full_name,
            email=changed.email,
            import_digest=changed.digest,
            updated_at=literal(now, UtcDateTime()),
        )
    )
    await connection.execute(
        update(Account)
        .where(Account.id == changed.account_id, changed.same == 1)
        # Only the digest is new: the account itself did not change, nor does updated_at.
        .values(import_digest=changed.digest, updated_at=Account.updated_at)
    )
    await connection.execute(
        delete(AccountPhone).where(
            AccountPhone.account_id.in_(select(changed.account_id).where(changed.same == 0))
        )
    )
    stamp = literal(now, UtcDateTime())
    await connection.execute(
        insert(Account).from_select(
            [
                *("account_number", "login", "full_name", "email"),
                *("import_digest", "created_at", "updated_at"),
            ],
            select(
                _NEW.c.account_number,
                _NEW.c.login,
                _NEW.c.full_name,
                _NEW.c.email,
                _NEW.c.digest,
                stamp,
                stamp,
            ),
        )
    )
    await connection.execute(
        insert(AccountPhone).from_select(
            ["account_id", "e164", "line_type", "position"],
            select(Account.id, _PHONES.c.e164, _PHONES.c.line_type, _PHONES.c.position).join(
                Account, Account.account_number == _PHONES.c.account_number
            ),
        )
    )
