"""`eirc-gateway operators …`: the people who sign in to the operator console."""

from __future__ import annotations

import asyncio
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from core.config import Settings
from core.db import create_engine, create_sessionmaker, transaction
from core.models import OperatorRole
from core.operators import OperatorError, OperatorInfo, OperatorRepository
from gateway.cli_accounts import upgrade_schema

operators_app = typer.Typer(
    help="Operator console accounts: add, list, disable.",
    no_args_is_help=True,
)


async def _add(
    settings: Settings, username: str, password: str, name: str, role: OperatorRole
) -> OperatorInfo:
    await upgrade_schema(settings.database_url)
    engine = create_engine(settings.database_url)
    try:
        async with transaction(create_sessionmaker(engine)) as session:
            return await OperatorRepository(session).add(
                username, password, display_name=name, role=role
            )
    finally:
        await engine.dispose()


async def _list(settings: Settings) -> list[OperatorInfo]:
    await upgrade_schema(settings.database_url)
    engine = create_engine(settings.database_url)
    try:
        async with transaction(create_sessionmaker(engine)) as session:
            return await OperatorRepository(session).list()
    finally:
        await engine.dispose()


async def _disable(settings: Settings, username: str) -> bool:
    await upgrade_schema(settings.database_url)
    engine = create_engine(settings.database_url)
    try:
        async with transaction(create_sessionmaker(engine)) as session:
            return await OperatorRepository(session).disable(username)
    finally:
        await engine.dispose()


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
) -> None:
    """Create an operator; the password is asked for twice without echo (stored as Argon2id)."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        operator = asyncio.run(_add(Settings(), username, password, name, role))
    except OperatorError as refused:
        typer.echo(f"Not added: {refused}.", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"Added {operator.role} {operator.username!r}.")


@operators_app.command("list")
def list_command() -> None:
    """Every operator with role and state."""
    operators = asyncio.run(_list(Settings()))
    table = Table("username", "name", "role", "active")
    for operator in operators:
        table.add_row(
            operator.username,
            operator.display_name,
            operator.role,
            "yes" if operator.active else "no",
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
