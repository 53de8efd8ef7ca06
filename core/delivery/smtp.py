"""E-mail notices (§6.8) through the billing centre's SMTP relay, sent by the outbox dispatcher.

`GATEWAY_SMTP_URL` names the relay:

    smtp://relay.internal:25                     plain SMTP, no TLS (a relay on the same host/LAN)
    smtp+starttls://user:password@relay:587      STARTTLS, required (refused if not offered)
    smtps://user:password@relay:465              TLS from the first byte

User and password (percent-encoded in the URL) log in with AUTH; certificates are checked against
the system's CAs. Without the URL, e-mails stay in the outbox (`eirc-gateway outbox`).

The dispatcher (dispatcher.py) treats a mail like an SMS. The relay's answers are classified
the same way: 5xx is permanent (not retried), 4xx and no connection are transient (retried with
backoff), and a failure during DATA without a reply (the connection dropped or timed out after
the message went out) is ambiguous: the relay may have taken the mail, so it is never sent again.
"""

from __future__ import annotations

import contextlib
import secrets
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from typing import Protocol

import aiosmtplib

from core.delivery.messenger import AmbiguousDeliveryError, DeliveryFailed, TransientDeliveryError
from core.platform.clock import utcnow
from core.platform.settings import Settings, mail_address, parse_smtp_url
from voice_prompts import Catalogue, Language


class Mailer(Protocol):
    """Sends one e-mail and returns its id (the dispatcher's counterpart of Messenger)."""

    async def send_email(self, *, to: str, body: str, purpose: str) -> str:
        """Send one e-mail, or raise a DeliveryFailed saying how it failed."""
        ...


def mask_email(address: str) -> str:
    """Keep the first character and the domain: e***@example.ru."""
    local, at, domain = address.rpartition("@")
    if not at:
        return "***"
    return f"{local[:1]}***@{domain}"


class SmtpMailer:
    """Hands one e-mail at a time to the relay; every failure classified for the dispatcher."""

    def __init__(self, settings: Settings, prompts: Catalogue) -> None:
        assert settings.smtp_url is not None
        self._relay = parse_smtp_url(settings.smtp_url.get_secret_value())
        self._from = settings.mail_from
        self._sender = mail_address(settings.mail_from)
        self._timeout = settings.smtp_timeout_seconds
        self._ca_file = settings.smtp_ca_file
        self._prompts = prompts

    def __repr__(self) -> str:
        return f"SmtpMailer({self._relay.hostname}:{self._relay.port})"

    def compose(self, *, to: str, body: str, purpose: str) -> EmailMessage:
        """The message: plain UTF-8 text, a bilingual subject, a fresh Message-ID."""
        domain = self._sender.rpartition("@")[2]
        message = EmailMessage()
        message["From"] = self._from
        message["To"] = to
        message["Subject"] = " / ".join(
            self._prompts.text(f"email.subject_{purpose}", language)
            for language in (Language.ru, Language.en)
        )
        message["Date"] = format_datetime(utcnow())
        # Short enough to be the row's provider_sid (64 characters) for any sensible domain.
        message["Message-ID"] = f"<{secrets.token_hex(12)}@{domain}>"
        # RFC 3834: no auto-replies ("out of office") to an automatic notice.
        message["Auto-Submitted"] = "auto-generated"
        # base64: no relay needs 8BITMIME for it.
        message.set_content(body, charset="utf-8", cte="base64")
        return message

    async def send_email(self, *, to: str, body: str, purpose: str) -> str:
        """Send one e-mail; returns its Message-ID (recorded as the row's provider id)."""
        if not to.isascii() or not mail_address(to):
            # Not an address we can send to (an internationalised one needs SMTPUTF8): for good.
            raise DeliveryFailed("not a deliverable address", error_code="smtp_address")
        message = self.compose(to=to, body=body, purpose=purpose)
        relay = self._relay
        client = aiosmtplib.SMTP(
            hostname=relay.hostname,
            port=relay.port,
            use_tls=relay.use_tls,
            start_tls=False,  # below, after checking that the relay offers it
            timeout=self._timeout,
            cert_bundle=self._ca_file,
        )
        try:
            try:
                await client.connect()
                await client.ehlo()
                if relay.start_tls:
                    _require(client, "starttls")
                    await client.starttls()
                    await client.ehlo()  # what the relay offers once encrypted (AUTH)
                if relay.username is not None:
                    _require(client, "auth")
                    await client.login(relay.username, relay.password or "")
                await client.mail(self._sender)
                await client.rcpt(to)
            except aiosmtplib.SMTPResponseException as exc:
                raise _answered(exc.code) from None
            except aiosmtplib.SMTPNotSupported:
                # STARTTLS or AUTH that the relay does not offer: the settings must change.
                raise DeliveryFailed(
                    "SMTP relay lacks a feature", error_code="smtp_unsupported"
                ) from None
            except (aiosmtplib.SMTPException, OSError):
                # Nothing was handed over yet: refused, timed out, dropped, TLS failed.
                raise TransientDeliveryError(
                    "SMTP relay unreachable", error_code="smtp_connect"
                ) from None
            try:
                await client.data(message.as_bytes(policy=SMTP))
            except aiosmtplib.SMTPResponseException as exc:
                raise _answered(exc.code) from None
            except (aiosmtplib.SMTPException, OSError):
                # The mail may have gone out and the reply was lost: never sent twice.
                raise AmbiguousDeliveryError("SMTP reply lost", error_code="smtp_data") from None
            with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                await client.quit()  # the relay has the mail; a failed goodbye changes nothing
        finally:
            client.close()
        return str(message["Message-ID"])[:64]


def _require(client: aiosmtplib.SMTP, extension: str) -> None:
    """STARTTLS or AUTH that the URL asks for and the relay does not offer: the settings must
    change, so this is permanent (a plain-text fallback would send the password in the clear)."""
    if not client.supports_extension(extension):
        raise aiosmtplib.SMTPNotSupported(f"{extension} not offered")


def _answered(code: int) -> DeliveryFailed:
    """The relay refused with a reply code: 5xx for good, anything else (4xx) for now."""
    if 500 <= code < 600:
        return DeliveryFailed("SMTP relay refused the message", error_code=f"smtp_{code}")
    return TransientDeliveryError("SMTP relay deferred the message", error_code=f"smtp_{code}")


def build_mailer(settings: Settings, prompts: Catalogue) -> SmtpMailer | None:
    """The relay's mailer, or None: e-mails then stay in the outbox."""
    return SmtpMailer(settings, prompts) if settings.smtp_url is not None else None
