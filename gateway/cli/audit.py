"""`eirc-gateway audit …`: check the audit hash chain, show one account's case history."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from core.audit.log import ChainReport, case_history, verify_chain
from core.kit.phones import mask_account
from core.models import AuditEvent
from core.platform.crypto import Keyring
from core.platform.settings import Settings
from gateway.cli.session import cli_session

audit_app = typer.Typer(
    help="The audit trail: check that nobody edited it, show one account's recovery history.",
    no_args_is_help=True,
)

console = Console(highlight=False)

# Details must not hold full numbers; should one slip in anyway, the table still masks it.
LONG_NUMBER = re.compile(r"\+?\d{6,}")


@audit_app.command("verify")
def verify_command() -> None:
    """Exit 0 when the hash chain holds, 1 naming the first row where it does not."""
    report = asyncio.run(_verify(Settings()))
    if report.broken is not None:
        typer.echo(
            f"audit chain broken at event id {report.broken.event_id}: {report.broken.problem}; "
            f"{report.events} event{'' if report.events == 1 else 's'} before it check out"
        )
        raise typer.Exit(1)
    typer.echo(f"audit chain intact: {report.events} events")
    if report.head:
        typer.echo(f"head: {report.head}")
    if report.unsealed:
        typer.echo(f"{report.unsealed} older events from before the chain are not sealed")


async def _verify(settings: Settings) -> ChainReport:
    async with cli_session(settings) as session:
        return await verify_chain(session, Keyring(settings))


@audit_app.command("show")
def show_command(
    account: Annotated[str, typer.Option("--account", help="The personal account number.")],
) -> None:
    """The account's audit events, oldest first, with masked values only."""
    account = account.strip()
    events = asyncio.run(_history(Settings(), account))
    masked = mask_account(account)
    if not events:
        typer.echo(f"no audit events for account {masked}")
        return
    table = Table(title=f"Audit trail of account {masked}")
    for name in ("time (UTC)", "event", "channel", "account"):
        table.add_column(name, no_wrap=True)
    # Folded, never cut with an ellipsis: an operator must see all of it.
    table.add_column("detail", overflow="fold")
    for event in events:
        table.add_row(
            event.created_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
            escape(event.event),
            escape(event.channel),
            escape(event.account_masked or "-"),
            escape(_detail_text(event.detail)),
        )
    console.print(table)


async def _history(settings: Settings, account: str) -> list[AuditEvent]:
    async with cli_session(settings) as session:
        return await case_history(session, Keyring(settings), account)


def _detail_text(detail: str) -> str:
    """`key=value, …` from the stored JSON, with any long digit run masked."""
    try:
        parsed: object = json.loads(detail)
    except ValueError:
        parsed = detail
    if isinstance(parsed, dict):
        text = ", ".join(f"{key}={_value_text(value)}" for key, value in sorted(parsed.items()))
    else:
        text = str(parsed)
    return LONG_NUMBER.sub(lambda match: mask_account(match.group()), text)


def _value_text(value: object) -> str:
    return "-" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
