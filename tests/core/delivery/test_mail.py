"""E-mail through a real SMTP server (aiosmtpd): the message, and how the relay's answers settle it.

The dispatcher sends mails from the outbox like SMS: 5xx is permanent, 4xx and no connection are
retried with backoff, a connection lost after DATA is ambiguous and never repeated (§7, §6.8).
"""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import AuthResult
from pydantic import SecretStr
from sqlalchemy import select

from core.delivery.dispatcher import Dispatcher, RetryPolicy
from core.delivery.outbox import Delivery
from core.delivery.smtp import SmtpMailer, mask_email
from core.models import OutboxMessage
from core.platform.db import transaction
from core.platform.settings import Settings, SmtpRelay, UnsafeSettingsError, parse_smtp_url
from tests.core.delivery.test_dispatch import Env, ScriptedMessenger, make_env
from tests.support.servers import free_port
from tests.support.smtp_server import SmtpServer, running_smtp_server
from voice_prompts import load_catalogue

TO = "e.smirnova@example.ru"
FROM = "ЕИРЦ <noreply@eirc.example.ru>"
BODY = "Доступ к вашему личному кабинету восстановлен.\n\nAccess was restored.\n"


def mail_settings(settings: Settings, url: str) -> Settings:
    return settings.model_copy(update={"smtp_url": SecretStr(url), "mail_from": FROM})


@pytest.fixture
async def env(settings: Settings) -> AsyncIterator[Env]:
    environment = await make_env(settings)
    yield environment
    await environment.engine.dispose()


def dispatcher(env: Env, url: str) -> Dispatcher:
    async def on_failure(session: object, row: OutboxMessage) -> None:
        env.failures.append((row.id, row.reason))

    return Dispatcher(
        env.sessionmaker,
        ScriptedMessenger(),
        env.keyring,
        on_failure,
        RetryPolicy(max_attempts=4, base_seconds=2.0, max_seconds=10.0, lease_seconds=60.0),
        clock=env.clock,
        jitter=env.jitter,
        mailer=SmtpMailer(mail_settings(env.settings, url), load_catalogue()),
    )


async def queue_email(env: Env) -> int:
    async with transaction(env.sessionmaker) as session:
        await Delivery(env.settings, session, env.keyring, lambda: None).email(TO, BODY, "notice")
    async with env.sessionmaker() as session:
        row_id = await session.scalar(select(OutboxMessage.id).order_by(OutboxMessage.id.desc()))
    assert row_id is not None
    return row_id


async def test_a_queued_email_arrives_as_a_proper_plain_text_message(
    env: Env, smtp_server: SmtpServer
) -> None:
    row_id = await queue_email(env)
    assert await dispatcher(env, smtp_server.url).drain() == 1
    (mail,) = await smtp_server.wait_for(1)
    assert mail.mail_from == "noreply@eirc.example.ru" and mail.rcpt_tos == [TO]
    message = mail.message
    assert message["To"] == TO
    assert message["From"].addresses[0].display_name == "ЕИРЦ"
    assert message["Subject"] == (
        "ЕИРЦ: доступ к личному кабинету восстановлен"
        " / EIRC: access to your personal account was restored"
    )
    assert parsedate_to_datetime(message["Date"]).tzinfo is not None
    assert message["Message-ID"].startswith("<") and message["Message-ID"].endswith(
        "@eirc.example.ru>"
    )
    assert message.get_content_type() == "text/plain"
    assert message.get_content_charset() == "utf-8"
    assert message["Content-Transfer-Encoding"] == "base64"  # 7-bit clean for any relay
    assert message["Auto-Submitted"] == "auto-generated"
    assert mail.text == BODY
    row = await env.row(row_id)
    assert row.status == "sent" and row.attempts == 1
    assert row.provider_sid == message["Message-ID"]
    assert row.body == ""  # handed over: the relay has the text now


async def test_a_550_is_permanent_and_never_retried(env: Env, smtp_server: SmtpServer) -> None:
    smtp_server.handler.data_replies = ["550 5.7.1 Message rejected"]
    row_id = await queue_email(env)
    sender = dispatcher(env, smtp_server.url)
    assert await sender.drain() == 1
    row = await env.row(row_id)
    assert (row.status, row.reason, row.error_code) == ("failed", "permanent", "smtp_550")
    env.clock.advance(3600)
    assert await sender.drain() == 0
    assert smtp_server.handler.attempts == 1 and smtp_server.handler.received == []


async def test_a_550_recipient_refusal_is_permanent(env: Env, smtp_server: SmtpServer) -> None:
    smtp_server.handler.rcpt_replies = ["550 5.1.1 No such user"]
    row_id = await queue_email(env)
    assert await dispatcher(env, smtp_server.url).drain() == 1
    row = await env.row(row_id)
    assert (row.status, row.error_code) == ("failed", "smtp_550")


async def test_a_451_is_retried_with_backoff_then_sent(env: Env, smtp_server: SmtpServer) -> None:
    smtp_server.handler.data_replies = ["451 4.3.0 Try again later"]
    row_id = await queue_email(env)
    sender = dispatcher(env, smtp_server.url)
    assert await sender.drain() == 1
    row = await env.row(row_id)
    assert (row.status, row.reason, row.error_code) == ("queued", "retrying", "smtp_451")
    assert row.next_attempt_at is not None and row.next_attempt_at > env.clock.now
    assert await sender.drain() == 0  # not due yet
    env.clock.advance(60)
    assert await sender.drain() == 1
    row = await env.row(row_id)
    assert row.status == "sent" and row.attempts == 2
    assert len(await smtp_server.wait_for(1)) == 1 and smtp_server.handler.attempts == 2


async def test_an_address_that_smtp_cannot_take_fails_at_once(
    env: Env, smtp_server: SmtpServer
) -> None:
    async with transaction(env.sessionmaker) as session:
        delivery = Delivery(env.settings, session, env.keyring, lambda: None)
        await delivery.email("жители@почта.рф", BODY, "notice")
    async with env.sessionmaker() as session:
        row_id = await session.scalar(select(OutboxMessage.id))
    assert row_id is not None
    assert await dispatcher(env, smtp_server.url).drain() == 1
    row = await env.row(row_id)
    assert (row.status, row.reason, row.error_code) == ("failed", "permanent", "smtp_address")


async def test_no_connection_is_retried(env: Env) -> None:
    row_id = await queue_email(env)
    assert await dispatcher(env, f"smtp://127.0.0.1:{free_port()}").drain() == 1
    row = await env.row(row_id)
    assert (row.status, row.reason, row.error_code) == ("queued", "retrying", "smtp_connect")


async def test_a_connection_lost_after_data_is_ambiguous_and_not_repeated(
    env: Env, smtp_server: SmtpServer
) -> None:
    smtp_server.handler.drop_after_data = True
    row_id = await queue_email(env)
    sender = dispatcher(env, smtp_server.url)
    assert await sender.drain() == 1
    row = await env.row(row_id)
    assert (row.status, row.reason, row.error_code) == ("unknown", "ambiguous", "smtp_data")
    env.clock.advance(3600)
    assert await sender.drain() == 0
    assert smtp_server.handler.attempts == 1


async def test_without_a_relay_emails_stay_in_the_outbox(env: Env) -> None:
    row_id = await queue_email(env)
    sender = env.dispatcher(ScriptedMessenger())
    assert await sender.drain() == 0
    row = await env.row(row_id)
    assert row.status == "queued" and row.body != ""
    assert await sender.seconds_until_due() is None  # the sweeper does not wait for it


# -- settings ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "relay"),
    [
        ("smtp://relay.internal", SmtpRelay("relay.internal", 25, False, False)),
        ("smtp://relay.internal:2525", SmtpRelay("relay.internal", 2525, False, False)),
        (
            "smtp+starttls://eirc%40relay:p%3Ass@relay.internal",
            SmtpRelay("relay.internal", 587, False, True, "eirc@relay", "p:ss"),
        ),
        ("smtps://u:pw@relay.internal", SmtpRelay("relay.internal", 465, True, False, "u", "pw")),
    ],
)
def test_smtp_url_forms(url: str, relay: SmtpRelay) -> None:
    assert parse_smtp_url(url) == relay
    assert "pw" not in repr(relay) and "p:ss" not in repr(relay)


@pytest.mark.parametrize(
    "url", ["smtpx://u:hunter2@relay", "relay.internal:25", "smtp://u:hunter2@", "http://relay"]
)
def test_unusable_smtp_urls_are_refused_without_quoting_them(url: str) -> None:
    with pytest.raises(UnsafeSettingsError) as refused:
        Settings(_env_file=None, smtp_url=url, mail_from=FROM)
    assert "GATEWAY_SMTP_URL" in str(refused.value) and "smtp+starttls://" in str(refused.value)
    assert "hunter2" not in str(refused.value)


def test_a_relay_needs_a_sender_and_an_empty_url_means_none() -> None:
    with pytest.raises(UnsafeSettingsError, match="GATEWAY_MAIL_FROM"):
        Settings(_env_file=None, smtp_url="smtp://relay.internal")
    assert Settings(_env_file=None, smtp_url="").smtp_url is None
    settings = Settings(_env_file=None, smtp_url="smtps://u:hunter2@relay", mail_from=FROM)
    assert "hunter2" not in repr(settings)


def test_addresses_are_masked_in_logs() -> None:
    assert mask_email(TO) == "e***@example.ru"


def test_the_lease_outlasts_an_smtp_conversation(settings: Settings) -> None:
    slow = mail_settings(settings, "smtp://relay.internal").model_copy(
        update={"smtp_timeout_seconds": 30.0}
    )
    assert RetryPolicy.from_settings(slow).lease_seconds == 6 * 30.0


# -- TLS and login -------------------------------------------------------------------------


@dataclass
class Logins:
    """aiosmtpd's authenticator: accepts one user and password, records every try."""

    user: str
    password: str
    tries: list[tuple[str, str]] = field(default_factory=list)

    def __call__(
        self, server: object, session: object, envelope: object, mechanism: str, data: Any
    ) -> AuthResult:
        login, password = data.login.decode(), data.password.decode()
        self.tries.append((login, password))
        accepted = (login, password) == (self.user, self.password)
        return AuthResult(success=accepted, handled=False)  # handled=False: aiosmtpd answers 535


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made by openssl; (certificate, key)."""
    folder = tmp_path_factory.mktemp("smtp-tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def server_tls(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*map(str, certificate))
    return context


async def test_starttls_with_login_over_a_checked_certificate(
    env: Env, certificate: tuple[Path, Path]
) -> None:
    logins = Logins("eirc@relay", "p:ss w0rd")
    with running_smtp_server(
        tls_context=server_tls(certificate),
        require_starttls=True,
        authenticator=logins,
        auth_require_tls=True,
    ) as server:
        env.settings = env.settings.model_copy(update={"smtp_ca_file": str(certificate[0])})
        row_id = await queue_email(env)
        url = f"smtp+starttls://eirc%40relay:p%3Ass%20w0rd@127.0.0.1:{server.port}"
        assert await dispatcher(env, url).drain() == 1
        assert (await env.row(row_id)).status == "sent"
        assert len(await server.wait_for(1)) == 1
    assert logins.tries == [("eirc@relay", "p:ss w0rd")]


async def test_a_wrong_password_is_permanent(env: Env, certificate: tuple[Path, Path]) -> None:
    with running_smtp_server(
        tls_context=server_tls(certificate),
        require_starttls=True,
        authenticator=Logins("eirc", "right"),
    ) as server:
        env.settings = env.settings.model_copy(update={"smtp_ca_file": str(certificate[0])})
        row_id = await queue_email(env)
        url = f"smtp+starttls://eirc:wrong@127.0.0.1:{server.port}"
        assert await dispatcher(env, url).drain() == 1
    row = await env.row(row_id)
    assert (row.status, row.reason, row.error_code) == ("failed", "permanent", "smtp_535")


async def test_smtps_from_the_first_byte(env: Env, certificate: tuple[Path, Path]) -> None:
    with running_smtp_server(ssl_context=server_tls(certificate)) as server:
        env.settings = env.settings.model_copy(update={"smtp_ca_file": str(certificate[0])})
        row_id = await queue_email(env)
        assert await dispatcher(env, f"smtps://127.0.0.1:{server.port}").drain() == 1
        assert (await env.row(row_id)).status == "sent"
        assert len(await server.wait_for(1)) == 1


async def test_an_untrusted_certificate_is_not_accepted(
    env: Env, certificate: tuple[Path, Path]
) -> None:
    with running_smtp_server(ssl_context=server_tls(certificate)) as server:
        row_id = await queue_email(env)  # no smtp_ca_file: the system's CAs do not know it
        assert await dispatcher(env, f"smtps://127.0.0.1:{server.port}").drain() == 1
        assert server.handler.received == []
    row = await env.row(row_id)
    assert (row.status, row.error_code) == ("queued", "smtp_connect")


async def test_starttls_required_but_not_offered_is_permanent(
    env: Env, smtp_server: SmtpServer
) -> None:
    row_id = await queue_email(env)
    url = f"smtp+starttls://127.0.0.1:{smtp_server.port}"
    assert await dispatcher(env, url).drain() == 1
    row = await env.row(row_id)
    assert (row.status, row.error_code) == ("failed", "smtp_unsupported")
    assert smtp_server.handler.received == []
