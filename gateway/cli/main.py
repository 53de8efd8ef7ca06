"""The `eirc-gateway` command line: serve, migrate, import, outbox, phone simulator, demo."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import threading
from pathlib import Path
from typing import Annotated

import typer
import uvicorn
from rich.console import Console
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from twilio.twiml.messaging_response import MessagingResponse

from core.delivery.outbox import list_outbox, purge_expired_secrets, readable_body
from core.platform.crypto import Keyring
from core.platform.db import create_engine, create_sessionmaker
from core.platform.migrate import upgrade_database
from core.platform.settings import Settings
from gateway.cli.accounts import accounts_app
from gateway.cli.audit import audit_app
from gateway.cli.operators import operators_app
from gateway.cli.prompts import prompts_app
from gateway.cli.session import cli_session
from gateway.simulator import OutboxItem, PhoneSimulator, RichConsoleIO
from ivr.screens import Screens
from ivr.twiml import Renderer
from voice_prompts import Language, load_catalogue

# No locals in tracebacks: a crash must never print a password given on the command line.
app = typer.Typer(
    help="EIRC Recovery Gateway: account recovery by phone call and SMS.",
    pretty_exceptions_show_locals=False,
)
db_app = typer.Typer(help="Database schema.")
phone_app = typer.Typer(help="The phone simulator: call or text a running gateway like Twilio.")
app.add_typer(db_app, name="db")
app.add_typer(accounts_app, name="accounts")
app.add_typer(audit_app, name="audit")
app.add_typer(operators_app, name="operators")  # the operator console's accounts
app.add_typer(phone_app, name="phone")
app.add_typer(prompts_app, name="prompts")

console = Console(highlight=False)

DEMO_ACCOUNTS = Path(__file__).parents[1] / "demo_accounts.csv"
DEMO_CABINET_DB = Path("eirc-demo-cabinet.db")
DEMO_CABINET_PREFIX = "/recovery/v1"
DEMO_PHONE = "+79123456789"


class SqlOutboxReader:
    """Reads the outbox table for the phone simulator."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], keyring: Keyring) -> None:
        self._sessionmaker = sessionmaker
        self._keyring = keyring

    async def messages_for(self, phone_number: str, after_id: int) -> list[OutboxItem]:
        """Outbox rows to one phone, oldest first."""
        async with self._sessionmaker() as session:
            rows = await list_outbox(session, to_number=phone_number, after_id=after_id)
        return [
            OutboxItem(
                id=row.id,
                channel="call" if row.channel == "call" else "sms",
                to_number=row.to_number,
                from_number=row.from_number,
                body=readable_body(row, self._keyring),
                url=row.url,
                sid=row.provider_sid,
            )
            for row in rows
            if row.channel in ("sms", "call")
        ]


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
) -> None:
    """Run the gateway with uvicorn (GATEWAY_WORKERS processes)."""
    settings = Settings()
    uvicorn.run(
        "gateway.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=settings.workers,
        # uvicorn's own proxy handling would believe X-Forwarded-For from any loopback peer:
        # the app reads it itself, only from GATEWAY_TRUSTED_PROXIES (core/web/proxies.py).
        proxy_headers=False,
        log_level=settings.log_level.lower(),
    )


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply the database migrations (creates the schema on a new database)."""
    asyncio.run(upgrade_database(Settings().database_url))
    console.print("database is up to date")


@app.command("fallback-twiml")
def fallback_twiml(
    sms: Annotated[bool, typer.Option("--sms", help="The short number's TwiML instead.")] = False,
) -> None:
    """Print the TwiML for Twilio's "primary handler fails" setting (a TwiML Bin).

    Voice: an apology and a transfer to GATEWAY_OPERATOR_NUMBER. SMS: an apology with the
    hotline number. Neither needs the gateway, so they work while it is down.
    """
    settings = Settings()
    prompts = load_catalogue()
    if sms:
        reply = MessagingResponse()
        reply.message(prompts.text("sms.reply_error", Language.ru, hotline=settings.hotline_number))
        typer.echo(str(reply))
        return
    screens = Screens(settings=settings, keyring=Keyring(settings), prompts=prompts)
    typer.echo(Renderer(settings).render(screens.fallback()))


@app.command()
def outbox(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """List what the gateway sent (or would have sent), newest last."""

    async def rows() -> list[dict[str, str | int | None]]:
        settings = Settings()
        keyring = Keyring(settings)
        async with cli_session(settings) as session:
            await purge_expired_secrets(session, settings)
            found = await list_outbox(session)
        return [
            {
                "id": row.id,
                "created_at": row.created_at.isoformat(timespec="seconds"),
                "channel": str(row.channel),
                "to": row.to_number,
                "purpose": row.purpose,
                "status": row.status,
                "text": readable_body(row, keyring) or row.url,
            }
            for row in found
        ]

    found = asyncio.run(rows())
    if as_json:
        for row in found:
            typer.echo(json.dumps(row, ensure_ascii=False))
        return
    table = Table("id", "time", "channel", "to", "purpose", "text")
    for row in found:
        table.add_row(
            str(row["id"]),
            str(row["created_at"]),
            str(row["channel"]),
            str(row["to"]),
            str(row["purpose"]),
            str(row["text"]),
        )
    console.print(table)


def _simulator(settings: Settings, gateway: str, phone: str, speak: bool) -> PhoneSimulator:
    sessionmaker = create_sessionmaker(create_engine(settings.database_url))
    return PhoneSimulator(
        gateway_url=gateway,
        public_base_url=settings.public_base_url,
        account_sid=settings.twilio_account_sid,
        auth_token=settings.twilio_auth_token.get_secret_value(),
        phone_number=phone,
        service_number=settings.hotline_number,
        sms_number=settings.sms_number,
        io=RichConsoleIO(console, speak=speak),
        outbox=SqlOutboxReader(sessionmaker, Keyring(settings)),
    )


FromOption = Annotated[str, typer.Option("--from", help="The simulated phone, E.164.")]
GatewayOption = Annotated[str, typer.Option(help="Where the gateway listens.")]
SpeakOption = Annotated[bool, typer.Option(help="Also speak prompts with espeak-ng.")]


@phone_app.command("call")
def phone_call(
    phone: FromOption = DEMO_PHONE,
    gateway: GatewayOption = "http://127.0.0.1:8000",
    speak: SpeakOption = False,
) -> None:
    """Call the hotline: hear the prompts, type keys (or `s:` and words to speak)."""

    async def run() -> None:
        async with _simulator(Settings(), gateway, phone, speak) as simulator:
            await simulator.call()

    asyncio.run(run())


@phone_app.command("sms")
def phone_sms(
    text: Annotated[str, typer.Argument(help="The message to send.")],
    phone: FromOption = DEMO_PHONE,
    gateway: GatewayOption = "http://127.0.0.1:8000",
) -> None:
    """Text the short number and show the replies."""

    async def run() -> None:
        async with _simulator(Settings(), gateway, phone, False) as simulator:
            await simulator.sms(text)

    asyncio.run(run())


@app.command()
def demo(
    phone: FromOption = DEMO_PHONE,
    port: Annotated[int, typer.Option(help="Port for the demo gateway.")] = 8000,
    speak: SpeakOption = False,
) -> None:
    """Import demo accounts, start the reference cabinet and the gateway, and call it from the
    phone simulator."""
    cabinet_port = port + 100
    os.environ.setdefault("GATEWAY_DATABASE_URL", "sqlite+aiosqlite:///./eirc-demo.db")
    # The accounts and their passwords live in the reference cabinet (§11), as in production.
    os.environ["GATEWAY_DIRECTORY"] = "http"
    os.environ["GATEWAY_DIRECTORY_URL"] = f"http://127.0.0.1:{cabinet_port}{DEMO_CABINET_PREFIX}"
    os.environ["GATEWAY_DIRECTORY_SECRET"] = secrets.token_hex(24)
    os.environ["GATEWAY_PUBLIC_BASE_URL"] = f"http://127.0.0.1:{port}"
    os.environ["GATEWAY_MESSENGER"] = "outbox"
    os.environ["GATEWAY_REDIS_URL"] = "memory://"
    os.environ["GATEWAY_CODE_RESEND_COOLDOWN_SECONDS"] = "10"
    os.environ.setdefault("GATEWAY_LOG_LEVEL", "WARNING")
    settings = Settings()
    asyncio.run(_demo(settings, phone, port, cabinet_port, speak))


async def _demo(settings: Settings, phone: str, port: int, cabinet_port: int, speak: bool) -> None:
    from cabinet_reference.app import create_app as create_cabinet
    from cabinet_reference.importer import import_csv
    from cabinet_reference.passwords import Passwords
    from cabinet_reference.store import Store
    from core.accounts.importer import import_accounts_csv
    from gateway.app import create_app

    async with cli_session(settings) as session:
        await import_accounts_csv(session, DEMO_ACCOUNTS, settings)
    # The reference cabinet holds the same demo accounts, each with a password nobody knows:
    # a recovery is the way in.
    store = Store(DEMO_CABINET_DB)
    await asyncio.to_thread(import_csv, store, DEMO_ACCOUNTS, Passwords())
    secret = settings.directory_secret.get_secret_value()
    # In a thread of its own: the browser can sign in while the simulated phone waits for a key.
    cabinet = uvicorn.Server(
        uvicorn.Config(
            create_cabinet(DEMO_CABINET_DB, secret, prefix=DEMO_CABINET_PREFIX),
            host="127.0.0.1",
            port=cabinet_port,
            log_level="warning",
        )
    )
    cabinet_thread = threading.Thread(target=cabinet.run, daemon=True)
    cabinet_thread.start()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    serving = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn exposes only a flag
        await asyncio.sleep(0.05)
    console.print(
        "[bold]EIRC Recovery Gateway demo[/bold] — the gateway runs on "
        f"http://127.0.0.1:{port}; the reference cabinet on "
        f"[bold]http://127.0.0.1:{cabinet_port}/login[/bold] (sign in there with the temporary "
        "password you hear).\nDemo accounts: "
        + ", ".join(line.split(",")[0] for line in DEMO_ACCOUNTS.read_text().splitlines()[1:])
        + f".\nYour phone is {phone} (on file for account 1000234528).\n"
        "Type keys and press Enter (e.g. `1`, `1000234528#`); `s:` and words to speak "
        "(`s:один два три`); an empty line is silence. "
        "SMS and calls from the gateway arrive on this phone as they would.\n"
        "Or text the short number: `s ВОССТАНОВИТЬ 1000234528`, then `s` and the code.\n"
    )
    try:
        async with _simulator(settings, f"http://127.0.0.1:{port}", phone, speak) as simulator:
            while True:
                choice = await asyncio.to_thread(
                    console.input,
                    "[bold]c[/bold] call the hotline, [bold]s[/bold] TEXT to text the short "
                    "number, [bold]q[/bold] quit: ",
                )
                command, _, text = choice.strip().partition(" ")
                if command.lower() in {"q", "quit", "exit"}:
                    break
                if command.lower() == "s" and text:
                    await simulator.sms(text)
                elif command.lower() == "c":
                    await simulator.call()
    except (EOFError, KeyboardInterrupt):
        pass
    finally:
        server.should_exit = True
        await serving
        cabinet.should_exit = True
        await asyncio.to_thread(cabinet_thread.join, 10)
