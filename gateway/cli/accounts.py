"""`eirc-gateway accounts …`: fill the accounts directory and check passwords against it."""

from __future__ import annotations

import asyncio
import csv
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from core.accounts.directory import PasswordCheck, SqlAccountDirectory
from core.accounts.importer import ImportFailed, ImportReport, import_accounts_csv
from core.accounts.passwords import configure_hashing
from core.platform.settings import Settings
from gateway.cli.session import cli_session

accounts_app = typer.Typer(
    help="The accounts directory: import the billing centre's CSV, check a password.",
    no_args_is_help=True,
)


@accounts_app.command("import")
def import_command(
    file: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            readable=True,
            help="CSV with columns account_number,login,full_name,phones,email (UTF-8).",
        ),
    ],
) -> None:
    """Create or update accounts from a CSV file; a file with any bad row changes nothing."""
    try:
        report = asyncio.run(_import(file, Settings()))
    except ImportFailed as failed:
        for line, reason in failed.errors:
            typer.echo(f"line {line}: {reason}", err=True)
        typer.echo(f"{failed} ({file.name})", err=True)
        raise typer.Exit(1) from None
    typer.echo(
        f"Imported {report.total} accounts: {report.created} created, "
        f"{report.updated} updated, {report.unchanged} unchanged."
    )


async def _import(file: Path, settings: Settings) -> ImportReport:
    # The bar goes to stderr so that stdout carries only the report.
    with Progress(
        TextColumn("Importing"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task("import", total=await asyncio.to_thread(_count_rows, file))
        async with cli_session(settings) as session:
            return await import_accounts_csv(
                session, file, settings, progress=lambda rows: bar.advance(task, rows)
            )


def _count_rows(file: Path) -> int | None:
    """Data rows in the file, for the bar's total; None when it cannot be told."""
    try:
        with file.open(encoding="utf-8-sig", errors="replace", newline="") as stream:
            rows = sum(1 for fields in csv.reader(stream) if any(f.strip() for f in fields))
    except (OSError, csv.Error):
        return None
    return max(rows - 1, 0)


@accounts_app.command("check-password")
def check_password_command(
    account: Annotated[str, typer.Argument(help="The personal account number.")],
    password: Annotated[
        str | None,
        typer.Argument(help="The password; asked for without echo when left out."),
    ] = None,
) -> None:
    """Exit 0 when the directory accepts the password, 1 when it refuses it."""
    if password is None:
        password = typer.prompt("Password", hide_input=True)
    check = asyncio.run(_check(account, password, Settings()))
    if not check.accepted:
        typer.echo("refused")
        raise typer.Exit(1)
    if check.change_required:
        typer.echo("accepted; a password change is required at the next login")
    else:
        typer.echo("accepted")


async def _check(account: str, password: str, settings: Settings) -> PasswordCheck:
    configure_hashing(settings)
    async with cli_session(settings) as session:
        return await SqlAccountDirectory(session, settings).verify_password(account, password)
