"""Fill the store from the gateway's demo CSV format: account_number,login,full_name,phones,email.

Phones are `;`-separated and kept as written (the gateway parses them). An optional `status`
column is read when present; otherwise accounts are `active`. New accounts get the given
initial password, or each a random one that nobody knows (residents then recover access).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from cabinet_reference.passwords import Passwords, generate_password
from cabinet_reference.store import Store

REQUIRED_COLUMNS = ("account_number", "login", "full_name", "phones", "email")


@dataclass(frozen=True, slots=True)
class ImportResult:
    """How many accounts an import created and updated."""

    created: int
    updated: int


def import_csv(
    store: Store, path: str | Path, passwords: Passwords, initial_password: str | None = None
) -> ImportResult:
    """Upsert every row by account number in one transaction; raises ValueError on a bad file."""
    with Path(path).open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [name for name in REQUIRED_COLUMNS if name not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
        rows = list(reader)
    for line, row in enumerate(rows, start=2):
        if not (row.get("account_number") or "").strip():
            raise ValueError(f"{path}:{line}: empty account_number")
    created = updated = 0
    with store.transaction() as connection:
        for row in rows:
            password = initial_password or generate_password()
            phones = [phone.strip() for phone in (row["phones"] or "").split(";") if phone.strip()]
            was_created = store.upsert_account(
                connection,
                account_number=row["account_number"].strip(),
                login=(row["login"] or "").strip() or None,
                full_name=(row["full_name"] or "").strip(),
                phones=phones,
                email=(row["email"] or "").strip() or None,
                status=(row.get("status") or "").strip() or "active",
                initial_password_hash=passwords.hash(password),
            )
            if was_created:
                created += 1
            else:
                updated += 1
    return ImportResult(created=created, updated=updated)
