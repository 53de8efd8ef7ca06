"""`eirc-gateway operators …`: the people who sign in to the operator console."""

from __future__ import annotations

import asyncio
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from core.accounts.passwords import configure_hashing
from core.models import OperatorRole
from core.operators.repository import (
    MAX_DESK_PIN,
    MIN_DESK_PIN,
    OperatorError,
    OperatorInfo,
    OperatorRepository,
)
from core.platform.settings import Settings
from gateway.cli.session import cli_session

operators_app = typer.Typer(
    help="Operator accounts (console and desk phone): add, set-pin, list, disable.",
    no_args_is_help=True,
)


async def _add(
    settings: Settings,
    username: str,
    password: str,
    name: str,
    role: OperatorRole,
    pin: str | None = None,
) -> OperatorInfo:
    configure_hashing(settings)
    async with cli_session(settings) as session:
        operators = OperatorRepository(session)
        added = await operators.add(username, password, display_name=name, role=role)
        if pin is not None:
            return await operators.set_desk_pin(added.username, pin) or added
        return added


async def _set_pin(settings: Settings, username: str, pin: str) -> OperatorInfo | None:
    configure_hashing(settings)
    async with cli_session(settings) as session:
        return await OperatorRepository(session).set_desk_pin(username, pin)


def _read_pin(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().strip()
    return str(
        typer.prompt(
            f"Desk PIN ({MIN_DESK_PIN}-{MAX_DESK_PIN} digits)",
            hide_input=True,
            confirmation_prompt=True,
        )
    ).strip()


def _desk_hint(operator: OperatorInfo) -> str:
    return f"At the desk phone: key {operator.desk_number} and #, then the PIN and #."


async def _list(settings: Settings) -> list[OperatorInfo]:
    async with cli_session(settings) as session:
        return await OperatorRepository(session).list()


async def _disable(settings: Settings, username: str) -> bool:
    async with cli_session(settings) as session:
        return await OperatorRepository(session).disable(username)


@operators_app.command("add")
def add_command(
    username: Annotated[str, typer.Argument(help="Sign-in name: latin letters, digits, . _ -")],
    name: Annotated[str, typer.Option("--name", help="Full name shown in the console.")] = "",
    role: Annotated[
        OperatorRole, typer.Option("--role", help="operator, or supervisor (also sees counts).")
    ] = OperatorRole.operator,
    password_stdin: Annotated[
        bool,
        typer.Option("--password-stdin", help="Read the password from standard input (scripts)."),
    ] = False,
    pin: Annotated[
        bool,
        typer.Option(
            "--pin",
            help="Also set the desk phone PIN (asked for twice, or the next line on stdin).",
        ),
    ] = False,
) -> None:
    """Create an operator; the password is asked for twice without echo (stored as Argon2id)."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    desk_pin = _read_pin(password_stdin) if pin else None
    try:
        operator = asyncio.run(_add(Settings(), username, password, name, role, desk_pin))
    except OperatorError as refused:
        typer.echo(f"Not added: {refused}.", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"Added {operator.role} {operator.username!r}.")
    if operator.has_desk_pin:
        typer.echo(_desk_hint(operator))


@operators_app.command("set-pin")
def set_pin_command(
    username: Annotated[str, typer.Argument(help="The operator whose desk PIN to set.")],
    pin_stdin: Annotated[
        bool, typer.Option("--pin-stdin", help="Read the PIN from standard input (scripts).")
    ] = False,
) -> None:
    """Set the PIN an operator keys at the desk phone (asked twice without echo; Argon2id)."""
    pin = _read_pin(pin_stdin)
    try:
        operator = asyncio.run(_set_pin(Settings(), username, pin))
    except OperatorError as refused:
        typer.echo(f"PIN not set: {refused}.", err=True)
        raise typer.Exit(1) from None
    if operator is None:
        typer.echo(f"No operator named {username!r}.", err=True)
        raise typer.Exit(1)
    typer.echo(f"Desk PIN set for {operator.username!r}. {_desk_hint(operator)}")


@operators_app.command("list")
def list_command() -> None:
    """Every operator with role and state."""
    operators = asyncio.run(_list(Settings()))
    table = Table("username", "name", "role", "active", "desk number", "desk PIN")
    for operator in operators:
        table.add_row(
            operator.username,
            operator.display_name,
            operator.role,
            "yes" if operator.active else "no",
            str(operator.desk_number),
            "set" if operator.has_desk_pin else "—",
        )
    Console(highlight=False).print(table)


@operators_app.command("disable")
def disable_command(
    username: Annotated[str, typer.Argument(help="The operator to stop.")],
) -> None:
    """Stop an operator from signing in; an open console session ends at its next request."""
    if not asyncio.run(_disable(Settings(), username)):
        typer.echo(f"No operator named {username!r}.", err=True)
        raise typer.Exit(1)
    typer.echo(f"Disabled {username!r}.")
