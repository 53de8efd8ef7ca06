"""Loading the demo CSV, and the command line that serves the cabinet on a real port."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from cabinet_reference.importer import import_csv
from cabinet_reference.passwords import Passwords
from cabinet_reference.store import Store
from tests.cabinet_reference.conftest import DEMO_CSV, FAST_HASHER, SECRET, signed_headers

ROOT = Path(__file__).resolve().parents[2]


def test_the_demo_csv_fills_the_store(tmp_path: Path) -> None:
    store = Store(tmp_path / "c.db")
    passwords = Passwords(FAST_HASHER)
    result = import_csv(store, DEMO_CSV, passwords)
    assert (result.created, result.updated) == (6, 0)

    two_phones = store.find_account("1000234528")
    assert two_phones is not None
    assert two_phones.phones == ("+7 912 345-67-89", "+7 922 105-44-19")
    assert two_phones.login == "petrov.as"
    assert two_phones.email is None
    assert two_phones.status == "active"
    assert not two_phones.must_change
    with_email = store.find_account("1000234539")
    assert with_email is not None and with_email.email == "e.smirnova@example.ru"


def test_a_reimport_updates_the_directory_but_keeps_passwords(tmp_path: Path) -> None:
    store = Store(tmp_path / "c.db")
    passwords = Passwords(FAST_HASHER)
    import_csv(store, DEMO_CSV, passwords, initial_password="first-password")
    edited = tmp_path / "edited.csv"
    edited.write_text(
        "account_number,login,full_name,phones,email,status\n"
        "1000234528,petrov.new,Петров А. С.,+7 912 345-67-89,p@example.ru,disabled\n"
        "1000000009,new.one,Новый,,,\n",
        encoding="utf-8",
    )
    result = import_csv(store, edited, passwords, initial_password="second-password")
    assert (result.created, result.updated) == (1, 1)
    account = store.find_account("1000234528")
    assert account is not None
    assert (account.login, account.email, account.status) == (
        "petrov.new",
        "p@example.ru",
        "disabled",
    )
    assert passwords.matches(account.password_hash, "first-password")
    new = store.find_account("1000000009")
    assert new is not None and new.phones == () and new.status == "active"


def test_random_initial_passwords_differ_per_account(tmp_path: Path) -> None:
    store = Store(tmp_path / "c.db")
    import_csv(store, DEMO_CSV, Passwords(FAST_HASHER))
    with store.reading() as connection:
        hashes = [row[0] for row in connection.execute("SELECT password_hash FROM accounts")]
    assert len(set(hashes)) == 6


def test_a_file_without_the_columns_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("account,phone\n1,2\n", encoding="utf-8")
    with pytest.raises(ValueError, match="missing column"):
        import_csv(Store(tmp_path / "c.db"), bad, Passwords(FAST_HASHER))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_serve_imports_the_csv_and_answers_signed_requests(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable, "-m", "cabinet_reference", "serve",
            "--db", str(tmp_path / "c.db"), "--secret-file", str(secret_file),
            "--host", "127.0.0.1", "--port", str(port), "--import-csv", str(DEMO_CSV),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        target = "/recovery/v1/accounts/1000234528"
        deadline = time.monotonic() + 20
        response = None
        while time.monotonic() < deadline:
            try:
                headers = signed_headers("GET", target, timestamp=int(time.time()))
                response = httpx.get(f"http://127.0.0.1:{port}{target}", headers=headers)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        assert response is not None, "the server did not start"
        assert response.status_code == 200
        assert response.json()["login"] == "petrov.as"
        unsigned = httpx.get(f"http://127.0.0.1:{port}{target}")
        assert unsigned.status_code == 401
        page = httpx.get(f"http://127.0.0.1:{port}/login")
        assert '<label for="account_number">' in page.text
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=10)
    assert "imported 6 new" in output
    assert f"http://127.0.0.1:{port}/recovery/v1" in output
    assert SECRET not in output


def test_serve_refuses_a_short_secret(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable, "-m", "cabinet_reference", "serve",
            "--db", str(tmp_path / "c.db"), "--secret-env", "CABINET_TEST_SECRET",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"CABINET_TEST_SECRET": "short-secret-value", "PATH": "/usr/bin:/bin"},
        check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "at least 32" in result.stderr
    assert "short-secret-value" not in result.stderr
