"""`accounts import` at the scale of a city, against its floor in the same run (issue 14 item 5).

    uv run python -m benchmarks.import_scale [--rows N] [--database sqlite|postgresql] [--json PATH]

Generates N synthetic accounts (Russian names, two phones each in the formats billing exports
use: a mobile and a city landline), then times, in one process:

1. floor: `csv` over the file, phonenumbers parse + line type + E.164 format of every phone, and
   one `executemany` of the results into a fresh SQLite table (the stdlib driver, one transaction);
2. fresh: `core.accounts.importer.import_accounts_csv` into an empty migrated database, commit
   included (the CLI's row count for its bar and the migration are not timed);
3. no-op: the same file again: nothing changes;
4. changed: a copy of the file with 1 % of the rows changed (new login, every other one a new
   mobile too).

Reports rows/s, the ratio to the floor (wall time, and this process's CPU time, which a busy
machine distorts less; a PostgreSQL server's CPU is not in it) and the peak RSS of each phase
(VmHWM, reset between phases through /proc/self/clear_refs; without it, the process's peak so
far). PostgreSQL runs on a throw-away cluster with production durability (started as
the simulator's servers do); its own memory is not counted. Exits non-zero only when something
breaks (an import fails or reports other counts than the file implies); the figures themselves
are reported, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import resource
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import phonenumbers

from core.accounts.importer import ImportFailed, ImportReport, import_accounts_csv
from core.platform.db import create_engine, create_sessionmaker, transaction
from core.platform.migrate import upgrade_database
from core.platform.settings import Settings

HEADER = ("account_number", "login", "full_name", "phones", "email")
FIRST_ACCOUNT = 1_000_000_000
# Every hundredth row changes in the "changed" file.
CHANGED_EVERY = 100
MOBILE_CODES = (
    "900", "901", "902", "903", "904", "908", "912", "915", "916", "919", "922", "925",
    "926", "950", "953", "963", "977", "982", "985", "992", "995", "999",
)  # fmt: skip
# A city's landlines: Yekaterinburg, Moscow (two codes), Saint Petersburg, Novosibirsk.
CITY_CODES = ("343", "495", "499", "812", "383")
SURNAMES = (
    ("Иванов", "Иванова"), ("Петров", "Петрова"), ("Смирнов", "Смирнова"),
    ("Кузнецов", "Кузнецова"), ("Соколов", "Соколова"), ("Попов", "Попова"),
    ("Лебедев", "Лебедева"), ("Козлов", "Козлова"), ("Новиков", "Новикова"),
    ("Морозов", "Морозова"), ("Волков", "Волкова"), ("Фёдоров", "Фёдорова"),
)  # fmt: skip
MALE_NAMES = ("Алексей", "Дмитрий", "Сергей", "Андрей", "Михаил", "Николай", "Владимир")
FEMALE_NAMES = ("Мария", "Елена", "Ольга", "Татьяна", "Наталья", "Анна", "Галина")
PATRONYMS = (
    ("Викторович", "Викторовна"), ("Сергеевич", "Сергеевна"), ("Николаевич", "Николаевна"),
    ("Петрович", "Петровна"), ("Иванович", "Ивановна"), ("Андреевич", "Андреевна"),
)  # fmt: skip
LATIN = str.maketrans(
    "абвгдеёжзийклмнопрстуфхцчшщъыьэюя",
    "abvgdeejzijklmnoprstufhcchs'y'eua",
)


def _mobile(index: int, changed: bool) -> str:
    code = MOBILE_CODES[index % len(MOBILE_CODES)]
    # A bijection on 0..10**7-1 (the multiplier is prime to 10): distinct mobiles per code.
    subscriber = (index * 7_654_321 + (4_999_999 if changed else 1_234_567)) % 10_000_000
    digits = f"{subscriber:07d}"
    shape = index % 4
    if shape == 0:
        return f"+7 {code} {digits[:3]}-{digits[3:5]}-{digits[5:]}"
    if shape == 1:
        return f"8 ({code}) {digits[:3]}-{digits[3:5]}-{digits[5:]}"
    if shape == 2:
        return f"8{code}{digits}"
    return f"+7{code}{digits}"


def _landline(index: int) -> str:
    # One account in ten shares its landline with the one before (a family with two accounts).
    household = index - 1 if index % 10 == 1 else index
    code = CITY_CODES[household % len(CITY_CODES)]
    subscriber = 2_000_000 + (household * 48_271) % 7_000_000
    digits = f"{subscriber:07d}"
    if index % 2:
        return f"8 ({code}) {digits[:3]}-{digits[3:5]}-{digits[5:]}"
    return f"+7 {code} {digits[:3]} {digits[3:5]} {digits[5:]}"


def account_row(index: int, *, changed: bool = False) -> tuple[str, str, str, str, str]:
    """Row `index` of the synthetic file; `changed` gives its changed version."""
    male = index % 2 == 0
    surname = SURNAMES[index % len(SURNAMES)][0 if male else 1]
    name = (MALE_NAMES if male else FEMALE_NAMES)[(index // 2) % 7]
    patronym = PATRONYMS[(index // 3) % len(PATRONYMS)][0 if male else 1]
    login = f"{surname.lower().translate(LATIN).replace(chr(39), '')}.{index}"
    if changed:
        login += ".new"
    email = f"{login}@mail.example.ru" if index % 3 == 0 else ""
    new_mobile = changed and index % (2 * CHANGED_EVERY) == 0
    phones = f"{_mobile(index, new_mobile)}; {_landline(index)}"
    return (str(FIRST_ACCOUNT + index), login, f"{surname} {name} {patronym}", phones, email)


def write_file(path: Path, rows: int, *, changed: bool = False) -> None:
    """The synthetic CSV, written as it is generated."""
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(HEADER)
        for index in range(rows):
            writer.writerow(account_row(index, changed=changed and index % CHANGED_EVERY == 0))


# --- memory ---------------------------------------------------------------------------------


def _reset_peak() -> bool:
    """Reset this process's peak RSS (Linux 4.0+); False when it cannot be."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _peak_rss_mib() -> float:
    """Peak resident memory since the last reset (or since start), MiB."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- the floor ------------------------------------------------------------------------------


def _floor_rows(path: Path, region: str) -> Iterator[tuple[str, str, str, str, str]]:
    e164 = phonenumbers.PhoneNumberFormat.E164
    with path.open(encoding="utf-8", newline="") as stream:
        reader = csv.reader(stream)
        next(reader)
        for number, login, full_name, phones, email in reader:
            parsed = []
            for raw in phones.split(";"):
                phone = phonenumbers.parse(raw, region)
                kind = phonenumbers.number_type(phone)
                parsed.append(f"{phonenumbers.format_number(phone, e164)}:{kind}")
            yield number, login, full_name, ";".join(parsed), email


def floor(path: Path, workdir: Path, region: str = "RU") -> float:
    """Seconds for csv + phonenumbers + one executemany into a fresh SQLite table."""
    database = workdir / "floor.db"
    database.unlink(missing_ok=True)
    started = time.perf_counter()
    connection = sqlite3.connect(database)
    try:
        connection.execute(
            "CREATE TABLE accounts (account_number TEXT PRIMARY KEY, login TEXT, "
            "full_name TEXT, phones TEXT, email TEXT)"
        )
        with connection:
            connection.executemany(
                "INSERT INTO accounts VALUES (?, ?, ?, ?, ?)", _floor_rows(path, region)
            )
    finally:
        connection.close()
    return time.perf_counter() - started


# --- the import -----------------------------------------------------------------------------


async def _timed_import(settings: Settings, path: Path) -> tuple[float, ImportReport]:
    engine = create_engine(settings.database_url)
    try:
        started = time.perf_counter()
        async with transaction(create_sessionmaker(engine)) as session:
            report = await import_accounts_csv(session, path, settings, progress=lambda _: None)
        return time.perf_counter() - started, report
    finally:
        await engine.dispose()


class Broken(Exception):
    """The import failed or counted other rows than the file holds."""


def _cpu_seconds() -> float:
    """CPU this process has used (user + system); a database server's own is not counted."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _phase(
    name: str, settings: Settings, path: Path, rows: int, expected: ImportReport
) -> dict[str, Any]:
    _reset_peak()
    cpu = _cpu_seconds()
    try:
        seconds, report = asyncio.run(_timed_import(settings, path))
    except ImportFailed as failed:
        raise Broken(f"{name}: {failed}: {list(failed.errors[:5])}") from None
    cpu = _cpu_seconds() - cpu
    peak = _peak_rss_mib()
    if report != expected:
        raise Broken(f"{name}: the import reported {report}, expected {expected}")
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "rows_per_second": rows / seconds,
        "peak_rss_mib": peak,
    }


def _expected_changes(rows: int) -> int:
    return len(range(0, rows, CHANGED_EVERY))


def _measure(rows: int, database_url: str, workdir: Path) -> dict[str, Any]:
    original, changed = workdir / "accounts.csv", workdir / "accounts-changed.csv"
    write_file(original, rows)
    write_file(changed, rows, changed=True)
    settings = Settings(_env_file=None, database_url=database_url)
    asyncio.run(upgrade_database(database_url))

    _reset_peak()
    cpu = _cpu_seconds()
    floor_seconds = floor(original, workdir, settings.default_region)
    result: dict[str, Any] = {
        "floor": {
            "seconds": floor_seconds,
            "cpu_seconds": _cpu_seconds() - cpu,
            "rows_per_second": rows / floor_seconds,
            "peak_rss_mib": _peak_rss_mib(),
        }
    }
    updated = _expected_changes(rows)
    phases = (
        ("fresh", original, ImportReport(created=rows)),
        ("noop", original, ImportReport(unchanged=rows)),
        ("changed", changed, ImportReport(updated=updated, unchanged=rows - updated)),
    )
    for name, path, expected in phases:
        result[name] = _phase(name, settings, path, rows, expected)
        result[name]["x_floor"] = result[name]["seconds"] / floor_seconds
        result[name]["cpu_x_floor"] = result[name]["cpu_seconds"] / result["floor"]["cpu_seconds"]
    return result


def run(rows: int, database: str) -> dict[str, Any]:
    """Generate `rows` accounts, time the floor and the three imports; figures as a dict."""
    if database not in ("sqlite", "postgresql"):
        raise ValueError(f"unknown database {database!r}")
    with tempfile.TemporaryDirectory(prefix="eirc-import-scale-") as tmp:
        workdir = Path(tmp)
        if database == "sqlite":
            figures = _measure(rows, f"sqlite+aiosqlite:///{workdir / 'gateway.db'}", workdir)
        else:
            from gateway.simulator.servers import postgres_server

            with postgres_server(durable=True) as url:
                figures = _measure(rows, url, workdir)
    return {"rows": rows, "database": database, "peak_reset": _reset_peak(), **figures}


def _print(figures: dict[str, Any]) -> None:
    print(f"accounts import, {figures['rows']:,} rows (two phones each), {figures['database']}")
    print(
        f"{'phase':<8} {'seconds':>8} {'rows/s':>9} {'x floor':>8} "
        f"{'CPU s':>8} {'CPU x floor':>12} {'peak RSS':>10}"
    )
    for phase in ("floor", "fresh", "noop", "changed"):
        data = figures[phase]
        print(
            f"{phase:<8} {data['seconds']:>8.2f} {data['rows_per_second']:>9.0f} "
            f"{data.get('x_floor', 1.0):>8.2f} {data['cpu_seconds']:>8.2f} "
            f"{data.get('cpu_x_floor', 1.0):>12.2f} {data['peak_rss_mib']:>7.0f} MiB"
        )
    if not figures["peak_reset"]:
        print("(peak RSS could not be reset between phases: each is the process's peak so far)")
    pairs = {
        "rows": figures["rows"],
        "database": figures["database"],
        **{
            f"{phase}_{key}": round(value, 3)
            for phase in ("floor", "fresh", "noop", "changed")
            for key, value in figures[phase].items()
        },
    }
    print(" ".join(f"{key}={value}" for key, value in pairs.items()))


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    options = parser.parse_args(argv)
    try:
        figures = run(options.rows, options.database)
    except Broken as exc:
        print(f"import_scale: {exc}", file=sys.stderr)
        return 1
    _print(figures)
    if options.json:
        options.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
